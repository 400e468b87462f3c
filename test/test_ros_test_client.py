"""The test client (ros_helpers.RosClient) that every node test drives the node with: its spin
thread outlives an exception inside the executor, and `paused` holds back what it would take.

A CI run once timed out on every Track goal of a module: rclpy's ActionClient joins the node's
waitables before it creates its lock (ros2/rclpy#1589), the client's spin thread, then building its
wait set, raised AttributeError and ended, and no later response was ever taken.
"""

from __future__ import annotations

import threading

import pytest

from ros_helpers import RosClient, requires_interfaces

pytestmark = [requires_interfaces, pytest.mark.timeout(120)]


@pytest.fixture
def client(ros_env):
    with RosClient(namespace="/test_client") as client:
        yield client


def echo(client: RosClient, topic: str) -> tuple[object, list, threading.Event]:
    """A publisher and a subscription of the client's own node on `topic`: what it takes arrives."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    received: list[str] = []
    arrived = threading.Event()

    def on_message(msg: String) -> None:
        received.append(msg.data)
        arrived.set()

    client.node.create_subscription(String, topic, on_message, qos)
    return client.node.create_publisher(String, topic, qos), received, arrived


def test_spin_thread_outlives_an_exception_raised_inside_spin_once(client):
    from std_msgs.msg import String

    spin_once = client.executor.spin_once
    failed = threading.Event()

    def fail_once(timeout_sec=None):
        if not failed.is_set():
            failed.set()
            raise AttributeError("'ActionClient' object has no attribute '_lock'")
        return spin_once(timeout_sec=timeout_sec)

    client.executor.spin_once = fail_once
    assert failed.wait(5)
    publisher, received, arrived = echo(client, "echo")
    publisher.publish(String(data="after the failure"))
    assert arrived.wait(10), "the client's spin thread stopped taking messages"
    assert received == ["after the failure"]
    assert client.spin_errors == ["AttributeError(\"'ActionClient' object has no attribute '_lock'\")"]


def test_paused_takes_nothing_until_it_ends(client):
    from std_msgs.msg import String

    publisher, received, arrived = echo(client, "held")
    with client.paused():
        publisher.publish(String(data="held back"))
        assert not arrived.wait(0.5)
        assert received == []
    assert arrived.wait(10)
    assert received == ["held back"]
