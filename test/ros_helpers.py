"""Helpers for tests that run the llmseg node in its own process and talk to it over DDS.

The node under test is started with `python -m llmseg_ros.node --ros-args ...`; the test process
is a second, independent rclpy participant (`RosClient`). Both use Fast DDS's shared-memory
transport with large segments (the default segments drop big best-effort images) and a domain id
unique to this test session, so parallel sessions do not hear each other.
"""

from __future__ import annotations

import contextlib
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
from typing import Any, Callable, Iterator

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


INTERFACES_MISSING = "llmseg_interfaces is not built: run scripts/build_interfaces.sh (make setup)"
requires_interfaces = pytest.mark.skipif(not interfaces_available(), reason=INTERFACES_MISSING)


def skip_module_without_interfaces() -> None:
    """For a test module that imports the interfaces at its top: a skip, not a collection error."""
    if not interfaces_available():
        pytest.skip(INTERFACES_MISSING, allow_module_level=True)


def held_out_scene(seed: int) -> Any:
    """A procedural scene from a seed stream no training split uses."""
    from llmseg_model.data.procedural import ProceduralConfig, generate_scene

    return generate_scene(ProceduralConfig(), (12345, seed, 0))


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


@contextlib.contextmanager
def active_node(env: dict[str, str], log_path: Path, params: dict[str, Any] | None = None, namespace: str = "",
                timeout: float = 120.0, ready: Callable[["RosClient"], None] | None = None) -> Iterator[tuple["NodeProcess", "RosClient"]]:
    """A node process driven to active and a client connected to it (`ready` adds the client's
    own publishers and waits for them); a node that does not come up fails the test with its log."""
    with NodeProcess(env, log_path, params=params, namespace=namespace) as node, RosClient(namespace=namespace) as client:
        try:
            client.wait_for_state("active", timeout=timeout)
            client.wait_connected()
            if ready is not None:
                ready(client)
        except TimeoutError:
            pytest.fail(f"node did not come up; its log:\n{node.log()}")
        yield node, client


class RosClient:
    """A second ROS participant: publishes images and instructions, collects results, calls services."""

    def __init__(self, node_name: str = "llmseg", namespace: str = "") -> None:
        import rclpy
        from rclpy.action import ActionClient
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import String

        from llmseg_interfaces.action import Track
        from llmseg_interfaces.msg import Instruction, SegmentationResult
        from llmseg_interfaces.srv import Segment
        from llmseg_ros.node import IMAGE_QOS, INSTRUCTION_QOS
        from llmseg_ros.outputs import DEBUG_IMAGE_QOS, RESULT_QOS
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
        self.arrivals: dict[str, float] = {}  # time.monotonic() when an id's first result arrived
        self._used_clients: set[Any] = set()
        self.masks: list[Any] = []
        self.overlays: list[Any] = []
        self.node.create_subscription(SegmentationResult, "result", self._on_result, RESULT_QOS)
        self.node.create_subscription(Image, "mask", self._on_mask, DEBUG_IMAGE_QOS)
        self.node.create_subscription(Image, "overlay", self._on_overlay, DEBUG_IMAGE_QOS)
        self.segment_client = self.node.create_client(Segment, "segment")
        self.diagnostics: list[Any] = []  # this node's last 50 DiagnosticStatus messages, oldest first
        self.diagnostics_count = 0  # how many arrived in all
        from diagnostic_msgs.msg import DiagnosticArray

        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.change_state_client = self.node.create_client(ChangeState, f"{self.target}/change_state")
        self.get_state_client = self.node.create_client(GetState, f"{self.target}/get_state")
        self.set_parameters_client = self.node.create_client(SetParameters, f"{self.target}/set_parameters")
        self.get_parameters_client = self.node.create_client(GetParameters, f"{self.target}/get_parameters")
        self.describe_parameters_client = self.node.create_client(
            DescribeParameters, f"{self.target}/describe_parameters")
        # Before the spin thread starts: rclpy's ActionClient joins the node's waitables (waking
        # the executor) before it creates the lock its add_to_wait_set takes, so one made while
        # another thread spins can fail that thread's spin_once.
        self._track_client = ActionClient(self.node, Track, "track")
        self.spin_errors: list[str] = []  # exceptions raised inside spin_once, which went on
        self._gate = threading.Condition()  # `paused` holds the spin loop between two spin_once
        self._paused = self._spinning = False
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        while self.context.ok():
            with self._gate:
                while self._paused:
                    self._gate.wait()
                self._spinning = True
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except ExternalShutdownException:
                return
            except Exception as error:  # keep spinning: every later future depends on this thread
                if not self.context.ok():
                    return
                self.spin_errors.append(repr(error))
            finally:
                with self._gate:
                    self._spinning = False
                    self._gate.notify_all()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Nothing is taken or executed while inside (at most one spin_once, 50 ms, to wait)."""
        with self._gate:
            self._paused = True
            while self._spinning:
                self._gate.wait()
        try:
            yield
        finally:
            with self._gate:
                self._paused = False
                self._gate.notify_all()

    def close(self) -> None:
        self.context.try_shutdown()
        self._thread.join(5)
        self.node.destroy_node()

    def _on_result(self, msg: Any) -> None:
        with self._lock:
            self.arrivals.setdefault(msg.instruction_id, time.monotonic())
            self.results[msg.instruction_id].append(msg)
            self._lock.notify_all()

    def _on_diagnostics(self, msg: Any) -> None:
        with self._lock:
            mine = [s for s in msg.status if s.name.endswith(f": {self.target}")]
            self.diagnostics_count += len(mine)
            self.diagnostics += mine
            del self.diagnostics[:-50]
            self._lock.notify_all()

    def diagnostic_values(self, status: Any = None) -> dict[str, str]:
        """The key/value pairs of a DiagnosticStatus of this node: `status`, else the newest one
        received (empty before any)."""
        with self._lock:
            if status is None:
                if not self.diagnostics:
                    return {}
                status = self.diagnostics[-1]
            return {kv.key: kv.value for kv in status.values}

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
                errors = f" (errors inside the client's spin loop: {self.spin_errors[-3:]})" if self.spin_errors else ""
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}{errors}")
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

    def track(self, text: str, rate: float = 0.0, duration: float = 0.0, goal_id: str = "", phrase: bool = False,
              timeout: float = 60.0) -> "TrackGoal":
        """Send a Track goal to the node; the goal's feedback is collected as it arrives."""
        from llmseg_interfaces.action import Track

        if self._track_client not in self._used_clients:
            if not self._track_client.wait_for_server(timeout_sec=timeout):
                raise TimeoutError("the Track action server did not appear")
            time.sleep(DISCOVERY_GRACE)  # discovery is two-sided (see call)
            self._used_clients.add(self._track_client)
        goal = TrackGoal(self)
        # rclpy 9.1.2's send_goal_async registers the goal's future, releases its lock, then
        # registers a second future under the same request: a response taken in between completes
        # the first and the returned one never completes. Nothing is taken while paused.
        with self.paused():
            future = self._track_client.send_goal_async(
                Track.Goal(id=goal_id, text=text, phrase=phrase, rate=rate, duration=duration), goal.on_feedback)
        self.wait_for(future.done, timeout, "the Track goal to be accepted")
        goal.handle = future.result()
        if not goal.handle.accepted:
            raise AssertionError("the node rejected a Track goal")
        goal.result_future = goal.handle.get_result_async()
        return goal

    def __enter__(self) -> "RosClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class TrackGoal:
    """One Track goal sent by a RosClient: its feedback results, cancel, and its final result."""

    def __init__(self, client: RosClient) -> None:
        self.client = client
        self.handle: Any = None
        self.result_future: Any = None
        self.feedback: list[Any] = []  # SegmentationResult, in arrival order

    def on_feedback(self, msg: Any) -> None:
        with self.client._lock:
            self.feedback.append(msg.feedback.result)
            self.client._lock.notify_all()

    def wait_feedback(self, count: int, timeout: float = 120.0) -> list[Any]:
        with self.client._lock:
            if not self.client._lock.wait_for(lambda: len(self.feedback) >= count, timeout):
                raise TimeoutError(f"{len(self.feedback)} feedback results of {count} within {timeout} s")
            return list(self.feedback)

    def cancel(self, timeout: float = 60.0) -> None:
        future = self.handle.cancel_goal_async()
        self.client.wait_for(future.done, timeout, "the cancel response")

    def result(self, timeout: float = 120.0) -> tuple[int, Any]:
        """(GoalStatus value, Track.Result) once the goal has ended."""
        self.client.wait_for(self.result_future.done, timeout, "the Track goal's result")
        response = self.result_future.result()
        return response.status, response.result


def stamp_now(offset: float = 0.0) -> Any:
    """builtin_interfaces/Time for the wall clock plus offset seconds (both processes share it)."""
    from builtin_interfaces.msg import Time

    ns = time.time_ns() + int(offset * 1e9)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def rgb_image(rgb: np.ndarray, stamp: Any = None, frame_id: str = "camera") -> Any:
    from llmseg_ros.conversions import rgb_to_image
    from std_msgs.msg import Header

    return rgb_to_image(rgb, Header(stamp=stamp if stamp is not None else stamp_now(), frame_id=frame_id))


def depth_image(depth: np.ndarray, stamp: Any, frame_id: str = "camera", encoding: str = "32FC1") -> Any:
    """A depth array as sensor_msgs/Image: 32FC1 (metres, float32) or 16UC1 (millimetres, uint16)."""
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    pixels = np.ascontiguousarray(depth.astype(np.float32 if encoding == "32FC1" else np.uint16))
    height, width = pixels.shape
    return Image(header=Header(stamp=stamp, frame_id=frame_id), height=height, width=width, encoding=encoding,
                 is_bigendian=sys.byteorder == "big", step=width * pixels.itemsize, data=pixels.tobytes())


def camera_info(fx: float, fy: float, cx: float, cy: float, width: int, height: int, stamp: Any,
                frame_id: str = "camera") -> Any:
    """A pinhole sensor_msgs/CameraInfo (no distortion)."""
    from sensor_msgs.msg import CameraInfo
    from std_msgs.msg import Header

    return CameraInfo(header=Header(stamp=stamp, frame_id=frame_id), width=width, height=height,
                      distortion_model="plumb_bob", d=[0.0] * 5, k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
                      r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], p=[fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0])


class Camera:
    """Publishes frames (and, if given, their depth images and camera info, same stamps) at a rate
    on a thread of its own, each with a fresh stamp; `published` lists the stamps sent."""

    def __init__(self, client: RosClient, images: list[np.ndarray], rate: float = 10.0,
                 depths: list[np.ndarray] | None = None, info: Any = None, frame_id: str = "camera") -> None:
        self.client, self.images, self.rate, self.depths, self.info = client, images, rate, depths, info
        self.frame_id = frame_id
        self.published: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from sensor_msgs.msg import CameraInfo, Image

        depth_pub = self.client.node.create_publisher(Image, "depth_image", 10) if self.depths else None
        info_pub = self.client.node.create_publisher(CameraInfo, "depth_info", 10) if self.depths else None
        k = 0
        while not self._stop.is_set():
            stamp = stamp_now()
            if depth_pub is not None:
                self.info.header.stamp = stamp
                info_pub.publish(self.info)
                depth_pub.publish(depth_image(self.depths[k % len(self.depths)], stamp, self.frame_id))
            self.client.image_pub.publish(rgb_image(self.images[k % len(self.images)], stamp, self.frame_id))
            self.published.append(stamp)
            k += 1
            self._stop.wait(1.0 / self.rate)

    def __enter__(self) -> "Camera":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)


# A pinhole camera for 256x256 procedural scenes, and their depth: every object flat at its own
# depth (0.8 m, 1.05 m, ...) before a slightly tilted wall, so each object's true 3D centroid is known.
PROCEDURAL_K = (300.0, 280.0, 127.5, 130.0)  # fx, fy, cx, cy
WALL = 2.5  # metres


def object_depths(sample: Any) -> list[float]:
    return [0.8 + 0.25 * i for i in range(len(sample.objects))]


def render_depth(sample: Any) -> np.ndarray:
    """The scene's depth in metres (float32): objects at object_depths, the wall behind them."""
    rows = np.arange(sample.image.shape[0], dtype=np.float32)[:, None]
    depth = np.broadcast_to(WALL + 0.001 * rows, sample.image.shape[:2]).astype(np.float32).copy()
    for mask, value in zip(sample.masks, object_depths(sample)):
        depth[mask > 0] = value
    return depth


def true_centroid(mask: np.ndarray, depth: float, k: tuple[float, float, float, float] = PROCEDURAL_K) -> np.ndarray:
    """Mean of an object's pixels back-projected at its depth (pixel (u, v) at column u, row v)."""
    fx, fy, cx, cy = k
    rows, cols = np.nonzero(mask)
    return np.array([((cols - cx) * depth / fx).mean(), ((rows - cy) * depth / fy).mean(), depth])


def centroid_errors(result: Any, sample: Any) -> list[tuple[float, float, float]]:
    """(error in metres, true depth, IoU with the object) of each instance of a result that is one of the scene's
    objects (IoU >= 0.5 of the pixels it owns with the object's mask); other instances are the
    model's mistakes, not the geometry's, and are left out."""
    from llmseg_ros.conversions import image_to_labels

    labels = image_to_labels(result.instance_labels)
    errors = []
    for instance in result.instances:
        owned = labels == instance.label
        ious = [(owned & (m > 0)).sum() / max((owned | (m > 0)).sum(), 1) for m in sample.masks]
        best = int(np.argmax(ious))
        if ious[best] >= 0.5 and instance.target_3d.valid:
            truth = true_centroid(sample.masks[best] > 0, object_depths(sample)[best])
            c = instance.target_3d.centroid
            errors.append((float(np.linalg.norm(np.array([c.x, c.y, c.z]) - truth)), float(truth[2]), float(ious[best])))
    return errors
