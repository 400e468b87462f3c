"""`ros2 run llmseg_ros train ...`: the training entry point of llmseg_model, reachable through ros2 run."""

from __future__ import annotations

import sys


def main() -> int | None:
    """Run `llmseg_model.train.main` on the command line minus any `--ros-args ...` section."""
    from rclpy.utilities import remove_ros_args

    from llmseg_model import train

    sys.argv = remove_ros_args(sys.argv)
    return train.main()


if __name__ == "__main__":
    sys.exit(main())
