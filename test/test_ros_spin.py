"""The node's spin loop: what escapes the executor is logged and counted, and the loop goes on."""

from __future__ import annotations

import rclpy
from rclpy.context import Context
from rclpy.exceptions import InvalidHandle
from rclpy.executors import MultiThreadedExecutor

from ros_helpers import skip_module_without_interfaces

skip_module_without_interfaces()  # the node package needs the built interfaces

from llmseg_ros.spinning import spin  # noqa: E402


class FailingExecutor(MultiThreadedExecutor):
    """The real executor, made to fail its first turns as rclpy does: an entity destroyed while the
    wait set was built (ros2/rclpy#1206), then a service callback that raised; then shutdown."""

    def __init__(self, context: Context) -> None:
        super().__init__(num_threads=2, context=context)
        self.failures = [InvalidHandle("cannot use Destroyable because destruction was requested"),
                         ValueError("11 is not a valid Parameter.Type")]

    def spin_once(self, timeout_sec: float | None = None) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.context.try_shutdown()


def test_spin_outlives_escaped_exceptions_and_counts_only_callback_failures():
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("spin_test", context=context)
    try:
        node.callback_failures = 0
        executor = FailingExecutor(context)
        spin(executor, node)  # returns once the context is shut down, having survived both
        assert not executor.failures
        assert node.callback_failures == 1  # the ValueError; the destroyed entity was rclpy's own race
    finally:
        node.destroy_node()
        context.try_shutdown()
