"""launch/segment.launch.py. The full test needs `launch` and `launch_ros` (a ROS 2 install; they
are not on PyPI) and llmseg_ros installed with colcon; elsewhere only the syntax check runs."""

from __future__ import annotations

import importlib.util
import py_compile
import signal
import subprocess
import sys

import pytest

from ros_helpers import REPO, RosClient, requires_interfaces, ros_env  # noqa: F401

LAUNCH_FILE = REPO / "launch" / "segment.launch.py"


def launch_ros_available() -> bool:
    return importlib.util.find_spec("launch") is not None and importlib.util.find_spec("launch_ros") is not None


def package_installed() -> bool:
    try:
        from ament_index_python.packages import get_package_prefix

        get_package_prefix("llmseg_ros")
    except Exception:
        return False
    return True


requires_launch = pytest.mark.skipif(
    not launch_ros_available(), reason="launch / launch_ros do not import here (not on PyPI; needs a ROS 2 install)"
)


def test_launch_file_compiles():
    py_compile.compile(str(LAUNCH_FILE), doraise=True)


@requires_launch
def test_launch_description_declares_the_arguments():
    spec = importlib.util.spec_from_file_location("segment_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from launch.actions import DeclareLaunchArgument

    description = module.generate_launch_description()
    names = {a.name for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert {"params_file", "namespace", "image", "preset", "autostart", "log_level"} <= names
    assert module.default_params_file().endswith("llmseg_node.yaml")


@requires_launch
@requires_interfaces
@pytest.mark.skipif(not package_installed(), reason="llmseg_ros is not installed in the ament index (colcon build)")
@pytest.mark.timeout(300)
def test_launch_starts_the_node_with_namespace_and_remap(ros_env, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "config" / "llmseg_node.yaml").read_text().replace(
        "lazy_model_load: false", "lazy_model_load: true"))
    script = (
        "import sys\n"
        "from launch import LaunchDescription, LaunchService\n"
        "from launch.actions import IncludeLaunchDescription\n"
        "from launch.launch_description_sources import PythonLaunchDescriptionSource\n"
        "service = LaunchService()\n"
        f"arguments = {{'namespace': 'launch_test', 'image': '/launch_test_camera/image_raw', 'params_file': {str(params)!r}}}\n"
        f"service.include_launch_description(IncludeLaunchDescription(PythonLaunchDescriptionSource({str(LAUNCH_FILE)!r}), launch_arguments=arguments.items()))\n"
        "sys.exit(service.run())\n"
    )
    log = open(tmp_path / "launch.log", "w")
    process = subprocess.Popen([sys.executable, "-c", script], env=ros_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with RosClient(namespace="/launch_test") as client:
            client.wait_for_state("active", timeout=120)
            client.wait_for(
                lambda: client.node.count_subscribers("/launch_test_camera/image_raw") > 0, 30, "the remapped image topic"
            )
            client.wait_connected(images=False)  # the node listens on the remapped topic, not launch_test/image
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
