#!/usr/bin/env bash
# Build llmseg_interfaces (msg/srv) with rosidl from the ROS 2 PyPI wheels and install it into the
# Python environment, so `import llmseg_interfaces.msg` works and rclpy finds its typesupport.
#
# Used by `make setup` after `pip install`. Idempotent: re-running only rebuilds what changed.
# Under a real ROS 2 install use colcon instead (docs/ros.md); this script is not needed there.
#
#   scripts/build_interfaces.sh     # python: $PYTHON, else $VENV/bin/python, else $VIRTUAL_ENV, else .venv, else python3
#   PYTHON=/path/to/python scripts/build_interfaces.sh
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$repo/llmseg_interfaces"
build="$repo/build/llmseg_interfaces"

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -n "${VENV:-}" && -x "$VENV/bin/python" ]]; then
    PYTHON="$(cd "$VENV" && pwd)/bin/python"
  elif [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
    PYTHON="$VIRTUAL_ENV/bin/python"
  elif [[ -x "$repo/.venv/bin/python" ]]; then
    PYTHON="$repo/.venv/bin/python"
  else
    PYTHON="$(command -v python3)"
  fi
fi
# The ROS wheels lay their files out like a ROS install under sys.prefix (share/, lib/, include/);
# the interfaces are installed there too, so the wheels' LD_LIBRARY_PATH bootstrap finds them.
prefix="$("$PYTHON" -c 'import sys; print(sys.prefix)')"
if [[ ! -f "$prefix/share/ament_cmake/cmake/ament_cmakeConfig.cmake" ]]; then
  echo "build_interfaces: $prefix/share/ament_cmake not found; pip install -r requirements-ros.txt first" >&2
  exit 1
fi

if ! command -v cmake >/dev/null || ! command -v cc >/dev/null; then
  if command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
    echo "build_interfaces: installing cmake and a C/C++ compiler with apt-get" >&2
    apt-get update -qq && apt-get install -y -qq cmake build-essential >/dev/null
  else
    echo "build_interfaces: needs cmake (>= 3.20) and a C/C++ compiler (apt-get install cmake build-essential)" >&2
    exit 1
  fi
fi

export AMENT_PREFIX_PATH="$prefix${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$prefix${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
# The wheels' libraries live in $prefix/lib; the rosidl generators load some of them while building.
export LD_LIBRARY_PATH="$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$(dirname "$PYTHON"):$PATH"

mkdir -p "$build"
cmake -S "$src" -B "$build" -Wno-dev \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$prefix" \
  -DPython3_EXECUTABLE="$PYTHON" \
  -DBUILD_TESTING=OFF \
  -DCMAKE_PROJECT_INCLUDE="$src/cmake/pip_wheels_fixup.cmake" >"$build/configure.log" \
  || { cat "$build/configure.log" >&2; echo "build_interfaces: cmake configure failed" >&2; exit 1; }
jobs="$(nproc 2>/dev/null || echo 2)"
cmake --build "$build" -j "$jobs" >"$build/build.log" 2>&1 \
  || { tail -50 "$build/build.log" >&2; echo "build_interfaces: build failed (full log: $build/build.log)" >&2; exit 1; }
cmake --install "$build" >"$build/install.log" \
  || { cat "$build/install.log" >&2; exit 1; }

# Check in a fresh process, the way the node will use them: import, and create a publisher (which
# loads the C typesupport through the rmw).
(cd / && "$PYTHON" - <<'PY'
import rclpy
from rclpy.context import Context
from llmseg_interfaces.msg import Instruction, SegmentationResult
from llmseg_interfaces.srv import Segment

context = Context()
rclpy.init(context=context, args=[])
node = rclpy.create_node("llmseg_interfaces_check", context=context)
node.create_publisher(SegmentationResult, "llmseg_interfaces_check/result", 1)
node.create_subscription(Instruction, "llmseg_interfaces_check/instruction", lambda msg: None, 1)
node.create_service(Segment, "llmseg_interfaces_check/segment", lambda req, res: res)
node.destroy_node()
rclpy.shutdown(context=context)
PY
) || { echo "build_interfaces: llmseg_interfaces was installed under $prefix but does not load" >&2; exit 1; }
echo "build_interfaces: llmseg_interfaces installed under $prefix"
