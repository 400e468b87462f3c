"""Helpers for tests that run the llmseg node in its own process and talk to it over DDS.

The node under test is started with `python -m llmseg_ros.node --ros-args ...`; the test process
is a second, independent rclpy participant (`RosClient`). Both use Fast DDS's shared-memory
transport with large segments (the default segments drop big best-effort images) and a domain id
unique to this test session, so parallel sessions do not hear each other.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / "config" / "llmseg_node.yaml"
TRANSPORTS = "SHM?max_msg_size=4MB&sockets_size=16MB"
DISCOVERY_GRACE = 1.0  # seconds for the node to see what this client already sees


# Every node and client of this test session lives under this namespace: a second guard, beside the
# domain id, against hearing another session's /llmseg (two sessions may still share a domain).
SESSION_NAMESPACE = f"/test_{os.getpid()}_{secrets.token_hex(3)}"


def session_domain_id(env: dict[str, str]) -> str:
    """The ROS domain of this test session: the one it was given (LLMSEG_TEST_DOMAIN_ID, else
    ROS_DOMAIN_ID, as scripts/run_tests.sh exports a random one), else a random one of its own."""
    given = env.get("LLMSEG_TEST_DOMAIN_ID") or env.get("ROS_DOMAIN_ID")
    return given if given else str(random.SystemRandom().randint(100, 199))


_DOMAIN_ID = session_domain_id(dict(os.environ))


def ros_environment() -> dict[str, str]:
    """The environment both processes run with: SHM transport, private domain, this repository first."""
    env = dict(os.environ)
    env["FASTDDS_BUILTIN_TRANSPORTS"] = TRANSPORTS
    env["ROS_DOMAIN_ID"] = _DOMAIN_ID
    # Not LOCALHOST: with it rmw_fastrtps sets up its own transports, FASTDDS_BUILTIN_TRANSPORTS is
    # ignored and camera-sized best-effort frames are dropped again (measured: 1280x720 never
    # arrived). With only the SHM transport, nothing leaves this machine anyway.
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SUBNET"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    # One torch thread: the node and the test share 2 cores, and oversubscribed OpenMP threads make
    # small models many times slower (see scripts/run_tests.sh).
    env.setdefault("OMP_NUM_THREADS", "1")
    env["RCUTILS_COLORIZED_OUTPUT"] = "0"
    return env


@pytest.fixture(scope="session")
def ros_env() -> Iterator[dict[str, str]]:
    """Put the test environment into this process too (Fast DDS reads it when rclpy creates a participant)."""
    env = ros_environment()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def interfaces_available() -> bool:
    try:
        import llmseg_interfaces.msg  # noqa: F401
    except ImportError:
        return False
    return True


requires_interfaces = pytest.mark.skipif(
    not interfaces_available(), reason="llmseg_interfaces is not built: run scripts/build_interfaces.sh (make setup)"
)


class NodeProcess:
    """The llmseg node in a child process; stopped with SIGINT (then SIGKILL) on exit."""

    def __init__(self, env: dict[str, str], log_path: Path, params: dict[str, Any] | None = None,
                 namespace: str = "", extra_args: list[str] | None = None) -> None:
        args = [sys.executable, "-m", "llmseg_ros.node", "--ros-args", "--params-file", str(PARAMS_FILE)]
        # Tests that run nodes side by side keep them apart by namespace, all under the session's.
        args += ["-r", f"__ns:={session_namespace(namespace)}"]
        for name, value in (params or {}).items():
            args += ["-p", f"{name}:={_yaml(value)}"]
        args += extra_args or []
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(args, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> "NodeProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def session_namespace(namespace: str = "") -> str:
    """A test's namespace ("" or "/name") inside this session's own namespace."""
    return SESSION_NAMESPACE + ("/" + namespace.strip("/") if namespace.strip("/") else "")


def _yaml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    return repr(value)


class RosClient:
    """A second ROS participant: publishes images and instructions, collects results, calls services."""

    def __init__(self, node_name: str = "llmseg", namespace: str = "") -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import String

        from llmseg_interfaces.msg import Instruction, SegmentationResult
        from llmseg_interfaces.srv import Segment
        from llmseg_ros.node import IMAGE_QOS, INSTRUCTION_QOS, RESULT_QOS, DEBUG_IMAGE_QOS
        from lifecycle_msgs.srv import ChangeState, GetState
        from rcl_interfaces.srv import DescribeParameters, GetParameters, SetParameters

        namespace = session_namespace(namespace)
        self.target = f"{namespace}/{node_name}"
        self.context = Context()
        rclpy.init(context=self.context, args=[])
        self.node = rclpy.create_node("llmseg_test_client", namespace=namespace, context=self.context)
        self.image_pub = self.node.create_publisher(Image, "image", IMAGE_QOS)
        self.compressed_pub = self.node.create_publisher(CompressedImage, "image/compressed", IMAGE_QOS)
        self.instruction_pub = self.node.create_publisher(Instruction, "instruction", INSTRUCTION_QOS)
        self.text_pub = self.node.create_publisher(String, "instruction_text", INSTRUCTION_QOS)
        self._lock = threading.Condition()
        self.results: dict[str, list[Any]] = defaultdict(list)
        self._used_clients: set[Any] = set()
        self.masks: list[Any] = []
        self.overlays: list[Any] = []
        self.node.create_subscription(SegmentationResult, "result", self._on_result, RESULT_QOS)
        self.node.create_subscription(Image, "mask", self._on_mask, DEBUG_IMAGE_QOS)
        self.node.create_subscription(Image, "overlay", self._on_overlay, DEBUG_IMAGE_QOS)
        self.segment_client = self.node.create_client(Segment, "segment")
        self.change_state_client = self.node.create_client(ChangeState, f"{self.target}/change_state")
        self.get_state_client = self.node.create_client(GetState, f"{self.target}/get_state")
        self.set_parameters_client = self.node.create_client(SetParameters, f"{self.target}/set_parameters")
        self.get_parameters_client = self.node.create_client(GetParameters, f"{self.target}/get_parameters")
        self.describe_parameters_client = self.node.create_client(
            DescribeParameters, f"{self.target}/describe_parameters")
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except (ExternalShutdownException, Exception):
            pass

    def close(self) -> None:
        self.context.try_shutdown()
        self._thread.join(5)
        self.node.destroy_node()

    def _on_result(self, msg: Any) -> None:
        with self._lock:
            self.results[msg.instruction_id].append(msg)
            self._lock.notify_all()

    def _on_mask(self, msg: Any) -> None:
        with self._lock:
            self.masks.append(msg)
            self._lock.notify_all()

    def _on_overlay(self, msg: Any) -> None:
        with self._lock:
            self.overlays.append(msg)
            self._lock.notify_all()

    # ---------------------------------------------------------------- waiting
    def wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.05)

    def call(self, client: Any, request: Any, timeout: float = 60.0, retry: bool = False) -> Any:
        """Call a service of the node. Discovery is two-sided: the client may see the server before
        the server sees the client's reply reader, and a response sent then is lost. So the first
        call through a client waits a moment after the service is ready, and idempotent calls
        (retry=True) are sent again when no response came."""
        self.wait_for(client.service_is_ready, timeout, f"service {client.srv_name}")
        if client not in self._used_clients:
            time.sleep(DISCOVERY_GRACE)
            self._used_clients.add(client)
        attempts = 3 if retry else 1
        for attempt in range(attempts):
            future = client.call_async(request)
            try:
                self.wait_for(future.done, timeout / attempts, f"a response from {client.srv_name}")
                return future.result()
            except TimeoutError:
                client.remove_pending_request(future)
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def state(self, timeout: float = 60.0) -> str:
        from lifecycle_msgs.srv import GetState

        return self.call(self.get_state_client, GetState.Request(), timeout, retry=True).current_state.label

    def wait_for_state(self, label: str, timeout: float = 120.0) -> None:
        self.wait_for(lambda: self.state(timeout) == label, timeout, f"lifecycle state {label}")

    def change_state(self, transition: str, timeout: float = 60.0) -> bool:
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request()
        request.transition.label = transition
        return self.call(self.change_state_client, request, timeout).success

    def set_parameters(self, **values: Any) -> list[Any]:
        """Set parameters on the node under test; returns the SetParametersResult of each."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request()
        request.parameters = [Parameter(name, value=value).to_parameter_msg() for name, value in values.items()]
        return list(self.call(self.set_parameters_client, request).results)

    def get_parameters(self, *names: str) -> dict[str, Any]:
        """The node's current values of these parameters (None for unset ones)."""
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        values = self.call(self.get_parameters_client, GetParameters.Request(names=list(names)), retry=True).values
        return {name: parameter_value_to_python(value) for name, value in zip(names, values)}

    def wait_connected(self, timeout: float = 30.0, images: bool = True) -> None:
        """Until the node's subscriptions (images too, unless remapped elsewhere) and result publisher match ours."""
        self.wait_for(
            lambda: self.instruction_pub.get_subscription_count() > 0
            and self.text_pub.get_subscription_count() > 0
            and (not images or self.image_pub.get_subscription_count() > 0
                 or self.compressed_pub.get_subscription_count() > 0)
            and self.node.count_publishers(self._resolved("result")) > 0,
            timeout,
            "the node's topics to match",
        )
        time.sleep(DISCOVERY_GRACE)  # the node's side of the match may come a moment later

    def _resolved(self, name: str) -> str:
        return self.node.resolve_topic_name(name)

    # ---------------------------------------------------------------- talking
    def publish_image(self, msg: Any, settle: float = 0.3) -> None:
        """Publish one frame and give it time to arrive (best effort, depth 1: send it once)."""
        from sensor_msgs.msg import CompressedImage

        (self.compressed_pub if isinstance(msg, CompressedImage) else self.image_pub).publish(msg)
        time.sleep(settle)

    def instruct(self, instruction_id: str, text: str, image_stamp: Any = None) -> None:
        from llmseg_interfaces.msg import Instruction

        msg = Instruction(id=instruction_id, text=text)
        if image_stamp is not None:
            msg.image_stamp = image_stamp
        self.instruction_pub.publish(msg)

    def instruct_text(self, text: str) -> None:
        from std_msgs.msg import String

        self.text_pub.publish(String(data=text))

    def wait_result(self, instruction_id: str, timeout: float = 30.0) -> Any:
        with self._lock:
            if not self._lock.wait_for(lambda: self.results.get(instruction_id), timeout):
                raise TimeoutError(f"no result for instruction {instruction_id!r} within {timeout} s")
            return self.results[instruction_id][0]

    def wait_new_result(self, known: set[str], timeout: float = 30.0) -> Any:
        """The first result whose instruction id is not in `known` (for ids the node assigns)."""
        with self._lock:
            if not self._lock.wait_for(lambda: set(self.results) - known, timeout):
                raise TimeoutError(f"no new result within {timeout} s")
            return self.results[sorted(set(self.results) - known)[0]][0]

    def segment(self, text: str, image: Any = None, instruction_id: str = "", timeout: float = 60.0) -> Any:
        from llmseg_interfaces.srv import Segment

        request = Segment.Request(text=text, id=instruction_id)
        if image is not None:
            request.image = image
        return self.call(self.segment_client, request, timeout).result

    def __enter__(self) -> "RosClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def stamp_now(offset: float = 0.0) -> Any:
    """builtin_interfaces/Time for the wall clock plus offset seconds (both processes share it)."""
    from builtin_interfaces.msg import Time

    ns = time.time_ns() + int(offset * 1e9)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def rgb_image(rgb: np.ndarray, stamp: Any = None, frame_id: str = "camera") -> Any:
    from llmseg_ros.conversions import rgb_to_image
    from std_msgs.msg import Header

    return rgb_to_image(rgb, Header(stamp=stamp if stamp is not None else stamp_now(), frame_id=frame_id))
