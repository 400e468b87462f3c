"""The node's spin loop: the executor turns until shutdown, and nothing that escapes a callback
ends the process."""

from __future__ import annotations

import traceback
from typing import Any, Protocol

from rclpy.exceptions import InvalidHandle
from rclpy.executors import Executor, ExternalShutdownException


class CountingNode(Protocol):
    """A node that counts the exceptions its spin loop survived (shown in its logs)."""

    callback_failures: int

    def get_logger(self) -> Any: ...


def spin(executor: Executor, node: CountingNode) -> None:
    """Spin until shutdown, outliving exceptions that escape callbacks (rclpy's own services raise
    on some malformed requests, e.g. a parameter value of an unknown type): log, count, go on.

    An InvalidHandle is rclpy's executor meeting an entity destroyed while it built its wait set
    (the image subscriptions go on deactivate; ros2/rclpy#1206): it skips the entity when entering it
    but still adds it to the wait set, before waiting, so nothing was taken and the next turn goes on."""
    while executor.context.ok():
        try:
            executor.spin_once(timeout_sec=0.5)
        except (KeyboardInterrupt, ExternalShutdownException):
            raise
        except InvalidHandle:
            node.get_logger().debug("an entity was destroyed while the executor built its wait set; going on")
        except Exception:
            node.callback_failures += 1
            node.get_logger().error(
                f"a callback raised (#{node.callback_failures}); the node goes on:\n{traceback.format_exc()}"
            )
