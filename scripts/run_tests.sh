#!/usr/bin/env bash
# The test suite, with the environment the ROS tests need (Fast DDS shared memory with segments
# large enough for camera images, and a private ROS domain so parallel runs do not cross-talk).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export FASTDDS_BUILTIN_TRANSPORTS=${FASTDDS_BUILTIN_TRANSPORTS:-'SHM?max_msg_size=4MB&sockets_size=16MB'}
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 100 ))}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# One thread per process: the node and the test run side by side on 2 cores, and OpenMP threads
# fighting for a busy core make small models 20x slower (measured: tiny DINOv2 18 ms vs 390 ms).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "$VENV/bin/python" -m pytest -q "$@"
