"""`ros2 run llmseg_ros train ...`: llmseg_model's training entry point, reachable through ros2 run.

`ros2 run llmseg_ros train --config config/train_tiny.yaml` works from any directory: a relative
config path that does not exist where the command runs is looked up in the installed package's
share directory (where config/ is installed).
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = "llmseg_ros"


def share_directory() -> Path | None:
    """The installed package's share directory, or None outside a ROS install."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return None
    try:
        return Path(get_package_share_directory(PACKAGE))
    except (PackageNotFoundError, ValueError, LookupError):
        return None


def resolve_config(path: str, share: Path | None) -> str:
    """path as given when it exists (or is absolute); else the same relative path under share."""
    given = Path(path)
    if given.is_absolute() or given.exists() or share is None:
        return path
    installed = share / given
    return str(installed) if installed.exists() else path


def resolve_config_args(args: list[str], share: Path | None) -> list[str]:
    """The command line with its `--config PATH` / `--config=PATH` resolved by resolve_config."""
    out = list(args)
    for index, arg in enumerate(out):
        if arg == "--config" and index + 1 < len(out):
            out[index + 1] = resolve_config(out[index + 1], share)
        elif arg.startswith("--config="):
            out[index] = "--config=" + resolve_config(arg.split("=", 1)[1], share)
    return out


PROG = "ros2 run llmseg_ros train"


def main(argv: list[str] | None = None) -> int:
    """Run `llmseg_model.train.main` with the command line minus any `--ros-args ...` section,
    under this command's name (in --help, --version and error lines)."""
    from rclpy.utilities import remove_ros_args

    from llmseg_model import train

    args = remove_ros_args(sys.argv if argv is None else [sys.argv[0], *argv])[1:]
    return train.main(resolve_config_args(args, share_directory()), prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
