"""`ros2 run llmseg_ros train ...`: llmseg_model's training entry point, reachable through ros2 run."""

from __future__ import annotations

import sys

PROG = "ros2 run llmseg_ros train"


def main(argv: list[str] | None = None) -> int:
    """Run `llmseg_model.train.main` with the command line minus any `--ros-args ...` section,
    under this command's name (in --help, --version and error lines)."""
    from rclpy.utilities import remove_ros_args

    from llmseg_model import train

    args = remove_ros_args(sys.argv if argv is None else [sys.argv[0], *argv])[1:]
    return train.main(args, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
