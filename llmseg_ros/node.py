"""The llmseg lifecycle node: camera images and instructions in, segmentation results out.

    python -m llmseg_ros.node --ros-args --params-file config/llmseg_node.yaml
    ros2 run llmseg_ros llmseg_node --ros-args --params-file ...          (under a ROS 2 install)

Lifecycle: configure builds the model from the parameters (a missing weight path fails the
transition with the setting to fix), activate subscribes to images, deactivate unsubscribes,
cleanup frees the model. With `autostart` (default) the node configures and activates itself.
Instructions (topics and the service) are listened to in every state and always answered:
NOT_ACTIVE unless the node is active.

Threads: executor callbacks only validate and store frames (llmseg_ros.frames) and queue
instructions; one worker thread runs the model (llmseg_ros.worker). Every callback is guarded and
the spin loop outlives exceptions raised inside rclpy's own services: no message and no accepted
parameter value may end the process.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import itertools
import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from llmseg_interfaces.msg import Instruction, SegmentationResult
from llmseg_interfaces.srv import Segment
from llmseg_model.config import LLMSegConfig, preset_config
from llmseg_ros import conversions, parameters, results
from llmseg_ros.frames import NS, DropCounter, Frame, FrameBuffer, stamp_to_ns
from llmseg_ros.parameters import CONFIGURE, PRESET_PARAMETERS, RUNTIME, SPEC, SPECS, STARTUP
from llmseg_ros.results import status_name, status_result  # noqa: F401  (status_name: public helper)
from llmseg_ros.worker import Worker

NODE_NAME = "llmseg"

# Images: the sensor-data profile (best effort, keep last 5); reliability, depth and the rest can be
# overridden with qos_overrides.<topic>.subscription.* parameters (reliable is what many drivers offer).
IMAGE_QOS = qos_profile_sensor_data
# Deep enough that a burst of instructions (or of the QUEUE_FULL results it causes) is not
# overwritten in the reliable history before it is acknowledged: each must get its own answer.
INSTRUCTION_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE)
RESULT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE)
DEBUG_IMAGE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
DROP_REPORT_PERIOD = 5.0  # seconds between checks for frames lost in transport


def guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    """Executor callbacks log their exceptions instead of raising them into the executor."""

    @functools.wraps(method)
    def wrapper(self: "SegmentationNode", *args: Any) -> Any:
        try:
            return method(self, *args)
        except Exception:
            self.get_logger().error(f"{method.__name__} failed; the node goes on:\n{traceback.format_exc()}")
            return None

    return wrapper


def logged_transition(method: Callable[..., TransitionCallbackReturn]) -> Callable[..., TransitionCallbackReturn]:
    """rclpy turns an exception in a transition into a silent ERROR; log it first."""

    @functools.wraps(method)
    def wrapper(self: "SegmentationNode", state: LifecycleState) -> TransitionCallbackReturn:
        try:
            return method(self, state)
        except Exception:
            self.get_logger().error(f"{method.__name__} raised:\n{traceback.format_exc()}")
            return TransitionCallbackReturn.ERROR

    return wrapper


@dataclass
class Job:
    """One instruction on its way to the worker."""

    id: str
    text: str
    image_stamp_ns: int  # 0: the newest frame
    received: float  # time.monotonic() at arrival
    reply: Callable[[SegmentationResult], None]
    image: Frame | None = None  # the Segment service's own image
    invalid: tuple[int, str] | None = None  # a status found while reading the message


@dataclass
class CachedFrame:
    """A frame whose proposals and features are kept for further instructions."""

    frame: Frame
    features: Any  # llmseg_model FrameFeatures
    rgb: Any  # the decoded image, for the overlay


class SegmentationNode(LifecycleNode):
    """LLM-Seg behind ROS topics and a service, as a managed node."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._declare_parameters()
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._state_lock = threading.RLock()  # _active, _configured, _worker between executor threads
        self._lock = threading.Lock()  # _runtime between executor and worker threads
        self._runtime = {spec.name: spec.default for spec in SPECS if spec.phase == RUNTIME}
        self._active = False
        self._configured = False
        self._config: LLMSegConfig | None = None
        self._model: Any = None  # llmseg_model.modeling.model.LLMSeg, imported lazily (torch is slow to import)
        self._model_error: str | None = None
        self._frames = FrameBuffer(SPEC["frame_buffer_size"].default, SPEC["frame_buffer_seconds"].default)
        self._frame_seq = itertools.count()
        self._job_ids = itertools.count(1)
        self._feature_cache: collections.OrderedDict[int, CachedFrame] = collections.OrderedDict()
        self._feature_cache_size = 1
        self._drops = DropCounter()
        self._frame_interval = 0.0  # smoothed seconds between received frames (0: unknown)
        self._last_frame_received = 0.0
        self._worker: Worker[Job] | None = None
        self._image_subscription: Any = None
        self._image_transport = SPEC["image_transport"].default
        self.callback_failures = 0  # exceptions the spin loop survived (see spin)

        # Instructions, results and the service exist in every lifecycle state, so every
        # instruction is answered (NOT_ACTIVE when not active); only images wait for activate.
        instructions = MutuallyExclusiveCallbackGroup()
        self._result_pub = self.create_publisher(SegmentationResult, "result", RESULT_QOS)
        self._mask_pub = self.create_publisher(Image, "mask", DEBUG_IMAGE_QOS)
        self._overlay_pub = self.create_publisher(Image, "overlay", DEBUG_IMAGE_QOS)
        self.create_subscription(Instruction, "instruction", self._on_instruction, INSTRUCTION_QOS,
                                 callback_group=instructions)
        self.create_subscription(String, "instruction_text", self._on_instruction_text, INSTRUCTION_QOS,
                                 callback_group=instructions)
        self.create_service(Segment, "segment", self._on_segment, callback_group=ReentrantCallbackGroup())
        self._image_group = MutuallyExclusiveCallbackGroup()
        self.create_timer(DROP_REPORT_PERIOD, self._report_drops)

    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> None:
        """Declare the table; remember what was given explicitly and what was refused at start."""
        self._internal = threading.local()  # set while the node writes effective values itself
        self._explicit: set[str] = set()  # preset-derived parameters the user gave a value
        self._start_errors: dict[str, str] = {}  # values from the command line / params file that were refused
        for spec in SPECS:
            try:
                parameter = self.declare_parameter(spec.name, spec.default, spec.descriptor())
            except Exception as error:  # out of the descriptor's range: keep the default, fail configure
                given = self._parameter_overrides.get(spec.name)
                reason = parameters.check(spec.name, given.value) if given is not None else None
                self._start_errors[spec.name] = f"{reason or error} (from the command line or params file)"
                parameter = self.declare_parameter(spec.name, spec.default, spec.descriptor(), ignore_override=True)
            if spec.preset_key and parameter.type_ != Parameter.Type.NOT_SET:
                self._explicit.add(spec.name)
        unknown = sorted(name for name in getattr(self, "_parameter_overrides", {})
                         if name not in SPEC and name != "use_sim_time" and not name.startswith("qos_overrides."))
        if unknown:
            self.get_logger().warning(f"unknown parameters ignored (typo?): {', '.join(unknown)}")

    def _on_set_parameters(self, parameter_list: list[Parameter]) -> SetParametersResult:
        """Runtime parameters change any time (checked); model parameters only while unconfigured."""
        internal = getattr(self._internal, "active", False)
        for parameter in parameter_list:
            spec = SPEC.get(parameter.name)
            if spec is None:  # rclpy's own (use_sim_time, qos_overrides.*): rclpy checks those
                continue
            if spec.phase == STARTUP:
                return SetParametersResult(successful=False, reason=f"{spec.name} is read at start only")
            if spec.phase == CONFIGURE and self._configured and not internal:
                return SetParametersResult(
                    successful=False, reason=f"{spec.name} takes effect on configure: cleanup the node first"
                )
            error = parameters.check(spec.name, parameter.value)
            if error:
                return SetParametersResult(successful=False, reason=error)
        with self._lock:
            for parameter in parameter_list:
                if parameter.name in self._runtime:
                    self._runtime[parameter.name] = parameters.coerce(parameter.name, parameter.value)
                if not internal and parameter.name in SPEC:
                    self._start_errors.pop(parameter.name, None)
                    if SPEC[parameter.name].preset_key:
                        self._explicit.add(parameter.name)
        return SetParametersResult(successful=True)

    def _value(self, name: str) -> Any:
        """A parameter's value, checked and of its declared type; ValueError naming it otherwise."""
        if name in self._start_errors:
            raise ValueError(self._start_errors[name])
        value = self.get_parameter(name).value
        error = parameters.check(name, value)
        if error:
            raise ValueError(error)
        return parameters.coerce(name, value)

    def effective_values(self) -> dict[str, Any]:
        """Every parameter's value: the preset's for model settings not given explicitly."""
        preset = preset_config(self._value("preset"))
        return {
            spec.name: parameters.preset_value(preset, spec.name)
            if spec.preset_key and spec.name not in self._explicit else self._value(spec.name)
            for spec in SPECS
        }

    def _show_effective(self, values: dict[str, Any]) -> None:
        """Write the preset-derived values into the parameters, so `ros2 param get` shows what runs."""
        shown = [Parameter(name, value=values[name]) for name in PRESET_PARAMETERS if name not in self._explicit]
        self._internal.active = True
        try:
            self.set_parameters(shown)
        finally:
            self._internal.active = False

    # ------------------------------------------------------------------ lifecycle
    @logged_transition
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            values = self.effective_values()
        except ValueError as error:
            self.get_logger().error(f"configure failed: {error}")
            return TransitionCallbackReturn.FAILURE
        self._config = parameters.apply_to_config(preset_config(values["preset"]), values)
        self._show_effective(values)
        with self._lock:
            self._runtime = {name: values[name] for name in self._runtime}
        self._model_error = None
        if not values["lazy_model_load"]:
            try:
                self._model = self._build_model(values)
            except Exception as error:  # a missing weight path, a bad checkpoint, an unusable device
                self.get_logger().error(f"configure failed: cannot load the {self._config.preset} model: {error}")
                self._model = None
                return TransitionCallbackReturn.FAILURE
        self._frames = FrameBuffer(values["frame_buffer_size"], values["frame_buffer_seconds"])
        self._feature_cache.clear()
        self._feature_cache_size = values["feature_cache_size"]
        self._image_transport = values["image_transport"]
        with self._state_lock:
            self._worker = Worker(self._process, values["max_queue"])
            self._configured = True
        selection = self._config.selection
        self.get_logger().info(
            f"configured: preset {self._config.preset}, K={self._config.proposals.top_k}, selection iop > "
            f"{selection.iop_threshold}, fallback IoP >= {selection.fallback_min_iop}, "
            f"model {'deferred to first instruction' if self._model is None else 'loaded'}"
        )
        return TransitionCallbackReturn.SUCCESS

    @logged_transition
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        compressed = self._image_transport == "compressed"
        topic = self.resolve_topic_name("image") + "/compressed" if compressed else "image"
        try:
            self._image_subscription = self.create_subscription(
                CompressedImage if compressed else Image, topic, self._on_image, IMAGE_QOS,
                callback_group=self._image_group, qos_overriding_options=QoSOverridingOptions.with_default_policies(),
            )
        except Exception as error:  # e.g. a qos_overrides.* parameter with an unusable value
            self.get_logger().error(f"activate failed: cannot subscribe to {topic}: {error}")
            return TransitionCallbackReturn.FAILURE
        with self._state_lock:
            self._active = True
        qos = self._image_subscription.qos_profile
        self.get_logger().info(
            f"active: images on {self._image_subscription.topic_name} ({qos.reliability.name.lower()}, depth {qos.depth})"
        )
        return TransitionCallbackReturn.SUCCESS

    @logged_transition
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._state_lock:
            self._active = False
            jobs = self._worker.drain() if self._worker is not None else []
        if self._image_subscription is not None:
            self.destroy_subscription(self._image_subscription)
            self._image_subscription = None
        for job in jobs:
            self._reply(job, self._status(job, SegmentationResult.NOT_ACTIVE, "the node was deactivated"))
        return TransitionCallbackReturn.SUCCESS

    @logged_transition
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    @logged_transition
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._active:
            self.on_deactivate(state)
        self._release()
        return TransitionCallbackReturn.SUCCESS

    @logged_transition
    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in state {state.label}; releasing everything")
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """Stop taking work and free everything (for process exit, whatever the lifecycle state)."""
        self._release()

    def _release(self) -> None:
        """Stop the worker, answer what it never ran, and free the model's memory."""
        with self._state_lock:
            self._active = False
            self._configured = False
            worker, self._worker = self._worker, None
        if self._image_subscription is not None:
            self.destroy_subscription(self._image_subscription)
            self._image_subscription = None
        if worker is not None:
            for job in worker.stop(timeout=30.0):
                self._reply(job, self._status(job, SegmentationResult.NOT_ACTIVE, "the node is shutting down"))
        self._feature_cache.clear()
        self._frames.clear()
        if self._model is not None:
            self._model.release()
            self._model = None

    def _build_model(self, values: dict[str, Any]) -> Any:
        """Load the model the parameters describe (slow: imports torch and reads the weights)."""
        import torch

        from llmseg_model.modeling.model import LLMSeg

        device = values["device"]
        if values["num_threads"]:
            torch.set_num_threads(values["num_threads"])
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        started = time.monotonic()
        model = LLMSeg.from_config(self._config, device=device)
        self.get_logger().info(f"{self._config.preset} model loaded on {device} in {time.monotonic() - started:.1f} s")
        return model

    # ------------------------------------------------------------------ inputs (executor threads)
    @guarded
    def _on_image(self, msg: Image | CompressedImage, info: Any) -> None:
        """Check the header (no pixel is touched) and keep the frame; refused data is not kept."""
        self._drops.count(info)
        now = time.monotonic()
        if self._last_frame_received:
            interval = now - self._last_frame_received
            self._frame_interval = interval if not self._frame_interval else 0.8 * self._frame_interval + 0.2 * interval
        self._last_frame_received = now
        self._frames.add(self._frame(msg, next(self._frame_seq)))

    def _frame(self, msg: Image | CompressedImage, seq: int | None) -> Frame:
        stamp = stamp_to_ns(msg.header.stamp)
        error = ""
        if stamp is None:
            error = f"header stamp is negative ({msg.header.stamp.sec} s)"
        else:
            with self._lock:
                max_side, max_bytes = self._runtime["max_image_side"], self._runtime["max_image_bytes"]
            try:
                if isinstance(msg, CompressedImage):
                    conversions.check_compressed(msg, max_bytes)
                else:
                    conversions.check_image(msg, max_side, max_bytes)
            except ValueError as invalid:
                error = str(invalid)
        if not stamp:
            stamp = self.get_clock().now().nanoseconds
        return Frame(seq, None if error else msg, msg.header, stamp, error=error)

    @guarded
    def _on_instruction(self, msg: Instruction) -> None:
        job = Job(id=msg.id or f"auto-{next(self._job_ids)}", text=msg.text, image_stamp_ns=0,
                  received=time.monotonic(), reply=self._publish_result)
        stamp = stamp_to_ns(msg.image_stamp)
        if stamp is None:
            job.invalid = (SegmentationResult.BAD_INSTRUCTION, f"image_stamp is negative ({msg.image_stamp.sec} s)")
        else:
            job.image_stamp_ns = stamp
        self._submit(job)

    @guarded
    def _on_instruction_text(self, msg: String) -> None:
        self._submit(Job(id=f"text-{next(self._job_ids)}", text=msg.data, image_stamp_ns=0,
                         received=time.monotonic(), reply=self._publish_result))

    def _on_segment(self, request: Segment.Request, response: Segment.Response) -> Segment.Response:
        """Answer in the response; every failure still becomes a result, never an exception."""
        instruction_id = request.id or f"srv-{next(self._job_ids)}"
        try:
            response.result = self._serve(request, instruction_id)
        except Exception as error:
            self.get_logger().error(f"segment service failed for {instruction_id!r}:\n{traceback.format_exc()}")
            response.result = status_result(instruction_id, request.text, SegmentationResult.MODEL_ERROR,
                                            f"internal error: {error!r}")
        return response

    def _serve(self, request: Segment.Request, instruction_id: str) -> SegmentationResult:
        future: concurrent.futures.Future[SegmentationResult] = concurrent.futures.Future()
        job = Job(id=instruction_id, text=request.text, image_stamp_ns=0, received=time.monotonic(),
                  reply=future.set_result)
        if not conversions.is_empty(request.image):
            job.image = self._frame(request.image, None)  # checked before anything is copied or queued
        request.image = Image()  # keep no reference to a large request while waiting
        self._submit(job)
        with self._lock:
            timeout = self._runtime["service_timeout"]
        try:
            return future.result(timeout=min(timeout, threading.TIMEOUT_MAX))
        except concurrent.futures.TimeoutError:
            worker = self._worker
            if worker is not None:
                worker.cancel(job)
            return self._status(job, SegmentationResult.MODEL_ERROR, f"no result within service_timeout={timeout} s")

    def _submit(self, job: Job) -> None:
        """Queue a job for the worker, or answer it now when it cannot be run."""
        with self._state_lock:
            status, error = self._precheck(job)
            if status is None:
                if self._worker.submit(job):
                    return
                status, error = SegmentationResult.QUEUE_FULL, f"{self._worker.max_queue} instructions already queued"
        self._reply(job, self._status(job, status, error, job.image))

    def _precheck(self, job: Job) -> tuple[int | None, str]:
        """Checks that need no model, in order: state, the message, the text, a service image."""
        if not self._active or self._worker is None or self._config is None:
            return SegmentationResult.NOT_ACTIVE, "the node is not active"
        if job.invalid:
            return job.invalid
        with self._lock:
            max_chars = self._runtime["max_instruction_chars"]
        text = re.sub(r"\s+", " ", job.text).strip()
        if not text:
            return SegmentationResult.BAD_INSTRUCTION, "instruction text is empty"
        if len(text) > max_chars:
            return SegmentationResult.BAD_INSTRUCTION, f"instruction is {len(text)} characters; max_instruction_chars is {max_chars}"
        for token in (self._config.vlm.seg_token, "<image>"):
            if token in text:
                return SegmentationResult.BAD_INSTRUCTION, f"instruction must not contain the special token {token}"
        if job.image is not None and job.image.error:
            return SegmentationResult.BAD_IMAGE, job.image.error
        return None, ""

    @guarded
    def _report_drops(self) -> None:
        received, lost = self._drops.take()
        if lost:
            self.get_logger().warning(
                f"{lost} of {received + lost} image frames were lost in transport in the last {DROP_REPORT_PERIOD:.0f} s "
                "(best-effort images: set FASTDDS_BUILTIN_TRANSPORTS as docs/ros.md says, or "
                "qos_overrides.<image topic>.subscription.reliability: reliable)"
            )

    # ------------------------------------------------------------------ the worker thread
    def _process(self, job: Job) -> None:
        stages = {"queue": time.monotonic() - job.received}
        try:
            result, rgb, labels = self._segment(job, stages)
        except Exception as error:  # never let one instruction take the node down
            self.get_logger().error(f"instruction {job.id!r} failed:\n{traceback.format_exc()}")
            result, rgb, labels = self._status(job, SegmentationResult.MODEL_ERROR, repr(error)), None, None
        stages["total"] = time.monotonic() - job.received
        result.timings = results.timings(stages)
        self._reply(job, result)
        if rgb is not None:
            self._publish_debug_images(result, rgb, labels)

    def _segment(self, job: Job, stages: dict[str, float]) -> tuple[SegmentationResult, Any, Any]:
        with self._lock:
            runtime = dict(self._runtime)
        frame, cached, status, error = self._pick_frame(job, runtime)
        if status:
            return self._status(job, status, error, frame), None, None

        start = time.monotonic()
        if cached is None:
            try:
                rgb = self._decode(frame.msg, runtime)
            except ValueError as invalid:
                return self._status(job, SegmentationResult.BAD_IMAGE, str(invalid), frame), None, None
        else:
            rgb = cached.rgb
        stages["decode"] = time.monotonic() - start

        model = self._ensure_model()
        if model is None:
            return self._status(job, SegmentationResult.MODEL_ERROR, self._model_error or "no model", frame), None, None
        if cached is None:
            try:
                features = model.prepare(rgb)
            except ValueError as invalid:
                return self._status(job, SegmentationResult.BAD_IMAGE, str(invalid), frame), None, None
            stages.update(features.timings)
            if frame.seq is not None:
                self._feature_cache[frame.seq] = CachedFrame(frame, features, rgb)
                while len(self._feature_cache) > self._feature_cache_size:
                    self._feature_cache.popitem(last=False)
        else:
            features = cached.features
            self._feature_cache.move_to_end(frame.seq)

        selection = model.config.selection
        selection.iop_threshold = runtime["selection.iop_threshold"]
        selection.fallback_min_iop = runtime["selection.fallback_min_iop"]
        selection.max_instances = runtime["selection.max_instances"]
        model.config.vlm.max_instruction_chars = runtime["max_instruction_chars"]
        try:
            answer = model.query(features, job.text)
        except ValueError as invalid:
            return self._status(job, SegmentationResult.BAD_INSTRUCTION, str(invalid), frame), None, None
        stages.update({k: v for k, v in answer.timings.items() if k not in features.timings})

        result = self._status(job, SegmentationResult.OK, "", frame)
        result.frame_cached = cached is not None
        labels = results.fill_answer(result, answer, frame.header, runtime["publish_instance_labels"])
        return result, rgb, labels

    def _pick_frame(self, job: Job, runtime: dict[str, Any]) -> tuple[Frame | None, CachedFrame | None, int, str]:
        """The frame an instruction is about (its own image, the one with its stamp, or the newest),
        its cached features if any, or a nonzero status saying why there is none. Validity is
        checked before staleness: a bad frame is BAD_IMAGE, whatever its age."""
        if job.image is not None:
            return job.image, None, 0, ""
        if job.image_stamp_ns:
            frame, cached, status, error = self._find_stamp(job.image_stamp_ns, runtime)
        else:
            frame = self._frames.newest()
            cached = self._feature_cache.get(frame.seq) if frame is not None else None
            status, error = (SegmentationResult.NO_IMAGE, "no image received yet") if frame is None else (0, "")
        if status:
            return frame, None, status, error
        if frame.error:
            return frame, None, SegmentationResult.BAD_IMAGE, frame.error
        age = (self.get_clock().now().nanoseconds - frame.stamp_ns) / NS
        if not job.image_stamp_ns and runtime["max_image_age"] and age > runtime["max_image_age"]:
            return frame, None, SegmentationResult.STALE_IMAGE, (
                f"the latest frame is {age:.2f} s old; max_image_age is {runtime['max_image_age']} s"
            )
        interval = self._frame_interval
        if not job.image_stamp_ns and interval and age > 3 * interval + 0.1:
            self.get_logger().warning(
                f"instruction {job.id!r} uses a frame {age:.2f} s old while frames arrive every {interval:.3f} s: "
                "newer frames are not arriving (lost in transport?)", throttle_duration_sec=10.0,
            )
        return frame, cached, 0, ""

    def _find_stamp(self, stamp_ns: int, runtime: dict[str, Any]) -> tuple[Frame | None, CachedFrame | None, int, str]:
        """A frame named by stamp: among cached features, then buffered frames, waiting briefly for
        one newer than every frame received so far."""
        tolerance = int(runtime["image_stamp_tolerance"] * NS)

        def lookup() -> tuple[Frame | None, CachedFrame | None]:
            for entry in list(self._feature_cache.values()):
                if abs(entry.frame.stamp_ns - stamp_ns) <= tolerance:
                    return entry.frame, entry
            frame = self._frames.find(stamp_ns, tolerance)
            return frame, self._feature_cache.get(frame.seq) if frame is not None else None

        frame, cached = lookup()
        if frame is None and runtime["image_stamp_wait"]:
            if self._frames.wait_for_stamp(stamp_ns - tolerance, runtime["image_stamp_wait"]):
                frame, cached = lookup()
        if frame is not None:
            return frame, cached, 0, ""
        known = [f.stamp_ns for f in self._frames.frames()] + [e.frame.stamp_ns for e in self._feature_cache.values()]
        if not known:
            return None, None, SegmentationResult.NO_IMAGE, "no image received yet"
        wanted = stamp_ns / NS
        if stamp_ns < min(known):
            return None, None, SegmentationResult.STALE_IMAGE, (
                f"frame {wanted:.3f} is no longer buffered (oldest {min(known) / NS:.3f}; "
                "frame_buffer_seconds / frame_buffer_size keep more)"
            )
        return None, None, SegmentationResult.NO_IMAGE, (
            f"no frame with stamp {wanted:.3f} was received (buffered {min(known) / NS:.3f} .. {max(known) / NS:.3f}; "
            "lost in transport?)"
        )

    @staticmethod
    def _decode(msg: Image | CompressedImage, runtime: dict[str, Any]) -> Any:
        limits = runtime["max_image_side"], runtime["max_image_bytes"]
        if isinstance(msg, CompressedImage):
            return conversions.compressed_to_rgb(msg, *limits)
        return conversions.image_to_rgb(msg, *limits)

    def _ensure_model(self) -> Any:
        """The model, built here on first use when lazy_model_load is set; None after a failed load."""
        if self._model is None and self._model_error is None:
            try:
                self._model = self._build_model(self.effective_values())
            except Exception as error:
                self._model_error = f"cannot load the {self._config.preset} model: {error}"
                self.get_logger().error(self._model_error)
        return self._model

    # ------------------------------------------------------------------ outputs
    @staticmethod
    def _status(job: Job, status: int, error: str, frame: Frame | None = None) -> SegmentationResult:
        return status_result(job.id, job.text, status, error, frame.header if frame is not None else None)

    def _reply(self, job: Job, result: SegmentationResult) -> None:
        if not result.timings:
            result.timings = results.timings({"total": time.monotonic() - job.received})
        if result.status not in (SegmentationResult.OK, SegmentationResult.EMPTY):
            self.get_logger().warning(f"instruction {job.id!r}: status {result.status_name}: {result.error}")
        try:
            job.reply(result)
        except Exception as error:  # e.g. the context is already shut down
            self.get_logger().error(f"could not deliver the result of {job.id!r}: {error!r}")

    def _publish_result(self, result: SegmentationResult) -> None:
        self._result_pub.publish(result)

    def _publish_debug_images(self, result: SegmentationResult, rgb: Any, labels: Any) -> None:
        if self._mask_pub.get_subscription_count():
            self._mask_pub.publish(result.mask)
        with self._lock:
            publish_overlay = self._runtime["publish_overlay"]
        if publish_overlay and self._overlay_pub.get_subscription_count():
            self._overlay_pub.publish(conversions.rgb_to_image(conversions.overlay(rgb, labels), result.header))


def spin(executor: MultiThreadedExecutor, node: SegmentationNode) -> None:
    """Spin until shutdown, outliving exceptions that escape callbacks (rclpy's own services raise
    on some malformed requests, e.g. a parameter value of an unknown type): log, count, go on."""
    while executor.context.ok():
        try:
            executor.spin_once(timeout_sec=0.5)
        except (KeyboardInterrupt, ExternalShutdownException):
            raise
        except Exception:
            node.callback_failures += 1
            node.get_logger().error(
                f"a callback raised (#{node.callback_failures}); the node goes on:\n{traceback.format_exc()}"
            )


def main(args: list[str] | None = None) -> int:
    """Run the node until Ctrl-C / SIGTERM; with autostart it configures and activates itself."""
    rclpy.init(args=args)
    node = None
    try:
        node = SegmentationNode()
        # Service calls block an executor thread each while they wait (at most max_queue + 1 of them).
        queue = node.get_parameter("max_queue").value
        threads = (queue if parameters.check("max_queue", queue) is None else SPEC["max_queue"].default) + 4
        executor = MultiThreadedExecutor(num_threads=min(threads, 64))
        executor.add_node(node)
        autostart = node.get_parameter("autostart").value
        if parameters.check("autostart", autostart):
            node.get_logger().error(f"{parameters.check('autostart', autostart)}; not starting by itself")
        elif autostart:
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()
            else:
                node.get_logger().error("autostart: configure failed; the node stays unconfigured")
        spin(executor, node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
