"""launch/segment.launch.py. The launch tests need `launch` and `launch_ros` (a ROS 2 install; they
are not on PyPI); the end-to-end one also needs llmseg_ros installed with colcon, and launches the
installed package (its share directory's launch file, its lib/ executable), so install-rule
mistakes show. Elsewhere only the syntax check runs. Nothing here writes bytecode into the tree.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ros_helpers import REPO, RosClient, requires_interfaces, session_namespace

LAUNCH_FILE = REPO / "launch" / "segment.launch.py"


def launch_ros_available() -> bool:
    return importlib.util.find_spec("launch") is not None and importlib.util.find_spec("launch_ros") is not None


def installed_share() -> Path | None:
    """share/llmseg_ros of a colcon install in the ament index, if any."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("llmseg_ros"))
    except Exception:
        return None


requires_launch = pytest.mark.skipif(
    not launch_ros_available(), reason="launch / launch_ros do not import here (not on PyPI; needs a ROS 2 install)"
)


def test_launch_file_compiles():
    compile(LAUNCH_FILE.read_text(), str(LAUNCH_FILE), "exec")  # in memory: no __pycache__ in the tree


@requires_launch
def test_launch_description_declares_the_arguments():
    from launch.actions import DeclareLaunchArgument

    module = runpy.run_path(str(LAUNCH_FILE))
    description = module["generate_launch_description"]()
    arguments = {a.name: a for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert {"params_file", "namespace", "image", "preset", "autostart", "log_level", "dds_transports"} <= set(arguments)
    assert module["default_params_file"]().endswith("llmseg_node.yaml")
    assert not (REPO / "launch" / "__pycache__").exists()


@requires_launch
@requires_interfaces
@pytest.mark.skipif(installed_share() is None, reason="llmseg_ros is not installed in the ament index (colcon build)")
@pytest.mark.timeout(300)
def test_installed_launch_file_starts_the_installed_node(ros_env, tmp_path):
    share = installed_share()
    launch_file = share / "launch" / "segment.launch.py"
    assert launch_file.exists(), f"the launch file is not installed in {share}"
    params = tmp_path / "params.yaml"
    params.write_text((share / "config" / "llmseg_node.yaml").read_text().replace(
        "lazy_model_load: false", "lazy_model_load: true"))
    namespace = session_namespace("launch_test").lstrip("/")
    camera = f"/{namespace}_camera/image_raw"
    script = (
        "import sys\n"
        "from launch import LaunchService\n"
        "from launch.actions import IncludeLaunchDescription\n"
        "from launch.launch_description_sources import PythonLaunchDescriptionSource\n"
        "service = LaunchService()\n"
        f"arguments = {{'namespace': {namespace!r}, 'image': {camera!r}, 'params_file': {str(params)!r}}}\n"
        f"service.include_launch_description(IncludeLaunchDescription(PythonLaunchDescriptionSource({str(launch_file)!r}), launch_arguments=arguments.items()))\n"
        "sys.exit(service.run())\n"
    )
    env = dict(ros_env)  # the installed package, not this tree: take the checkout off PYTHONPATH
    env["PYTHONPATH"] = os.pathsep.join(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO))
    log_path = tmp_path / "launch.log"
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        with RosClient(namespace="launch_test") as client:
            client.wait_for_state("active", timeout=120)
            client.wait_for(lambda: client.node.count_subscribers(camera) > 0, 30, "the remapped image topic")
            client.wait_connected(images=False)  # the node listens on the remapped topic
            client.instruct("via-launch", "the red ball")
            result = client.wait_result("via-launch")
            assert result.status == result.NO_IMAGE, result.error
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
