"""`ros2 run llmseg_ros train ...`: llmseg_model's training entry point, reachable through ros2 run."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run `llmseg_model.train.main` with the command line minus any `--ros-args ...` section."""
    from rclpy.utilities import remove_ros_args

    from llmseg_model import train

    args = remove_ros_args(sys.argv if argv is None else [sys.argv[0], *argv])[1:]
    train.main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
