"""Start the llmseg lifecycle node.

    ros2 launch llmseg_ros segment.launch.py image:=/camera/color/image_raw
    ros2 launch llmseg_ros segment.launch.py namespace:=robot1 preset:=paper params_file:=/path/my_params.yaml

Launch arguments:
    params_file  node parameters (default: the package's config/llmseg_node.yaml)
    namespace    namespace of the node and its topics (default: none)
    image        image topic to subscribe to, remapped onto the node's `image` (default: image)
    preset       tiny | paper; overrides the params file's preset (default: "" = keep it)
    autostart    configure and activate at start (default: true); false leaves it to a lifecycle manager
    log_level    ROS log level (default: info)
    dds_transports  FASTDDS_BUILTIN_TRANSPORTS for the node (default: the environment's, else
                 DEFAULT?sockets_size=16MB: Fast DDS's transports, so peers left at their defaults
                 still discover the node, with socket buffers large enough for camera-sized
                 messages); "" leaves Fast DDS's default. Give the camera driver the same value:
                 best-effort frames are lost on the publishing side.

The node is a managed (lifecycle) node; with autostart it drives itself to active, otherwise use
`ros2 lifecycle set /llmseg configure` and `... activate`.
"""

from __future__ import annotations

import os
from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

# Interoperable with participants at Fast DDS's defaults (SHM-only transports are not: they never
# discover them). Measured here, 640x480 best effort at 30 Hz for 10 s: a publisher with this setting
# delivered 287 frames of ~290 to a default subscriber, a default publisher 140-190.
DEFAULT_TRANSPORTS = "DEFAULT?sockets_size=16MB"


def default_params_file() -> str:
    """The installed package's parameters, or this source tree's when run from a checkout."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return str(Path(get_package_share_directory("llmseg_ros")) / "config" / "llmseg_node.yaml")
    except Exception:  # not installed (PackageNotFoundError) or no ament index at all
        return str(Path(__file__).resolve().parents[1] / "config" / "llmseg_node.yaml")


def node_actions(context, *args, **kwargs):
    """Built at launch time so an empty `preset` can mean "keep the params file's"."""
    preset = LaunchConfiguration("preset").perform(context)
    autostart = LaunchConfiguration("autostart").perform(context).lower() in ("1", "true", "yes")
    parameters = [LaunchConfiguration("params_file").perform(context), {"autostart": autostart}]
    if preset:
        parameters.append({"preset": preset})
    transports = LaunchConfiguration("dds_transports").perform(context)
    actions = []
    if transports:
        actions += [
            SetEnvironmentVariable("FASTDDS_BUILTIN_TRANSPORTS", transports),
            LogInfo(msg=f"llmseg: FASTDDS_BUILTIN_TRANSPORTS={transports} (processes that talk to the node need the "
                        "same setting; dds_transports:='' leaves Fast DDS's default)"),
        ]
    return actions + [
        LifecycleNode(
            package="llmseg_ros",
            executable="llmseg_node",
            name="llmseg",
            namespace=LaunchConfiguration("namespace"),
            parameters=parameters,
            remappings=[("image", LaunchConfiguration("image"))],
            ros_arguments=["--log-level", LaunchConfiguration("log_level")],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument("params_file", default_value=default_params_file(), description="node parameters YAML"),
            DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
            DeclareLaunchArgument("image", default_value="image", description="image topic, remapped onto `image`"),
            DeclareLaunchArgument("preset", default_value="", description="tiny | paper; empty keeps the params file's"),
            DeclareLaunchArgument("autostart", default_value="true", description="configure and activate at start"),
            DeclareLaunchArgument("log_level", default_value="info", description="ROS log level"),
            DeclareLaunchArgument(
                "dds_transports", default_value=os.environ.get("FASTDDS_BUILTIN_TRANSPORTS", DEFAULT_TRANSPORTS),
                description="FASTDDS_BUILTIN_TRANSPORTS for the node ('' = Fast DDS's default)",
            ),
            OpaqueFunction(function=node_actions),
        ]
    )
