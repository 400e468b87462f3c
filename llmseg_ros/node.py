"""The llmseg lifecycle node: camera images and instructions in, segmentation results out.

    python -m llmseg_ros.node --ros-args --params-file config/llmseg_node.yaml
    ros2 run llmseg_ros llmseg_node --ros-args --params-file ...          (under a ROS 2 install)

Lifecycle: configure builds the model from the parameters (a missing weight path fails the
transition with the setting to fix), activate subscribes, deactivate unsubscribes, cleanup frees
the model. With `autostart` (default) the node configures and activates itself at start.

Threads: executor callbacks only store the newest frame and queue instructions; one worker thread
runs the model (llmseg_ros.worker). Instructions bind to the newest frame when the worker takes
them (or to the buffered frame with their image_stamp); each frame's proposals and features are
cached, so several instructions on one frame cost one proposal pass. Every instruction gets exactly
one SegmentationResult: a mask, or a status saying why not.
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
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from llmseg_interfaces.msg import Instruction, SegmentationResult, StageTiming
from llmseg_interfaces.srv import Segment
from llmseg_model.config import LLMSegConfig, preset_config
from llmseg_ros import conversions
from llmseg_ros.worker import Worker

NODE_NAME = "llmseg"

# Images: newest only, best effort (a late frame is worth nothing). Everything else: reliable.
IMAGE_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.BEST_EFFORT,
    durability=DurabilityPolicy.VOLATILE,
)
# Deep enough that a burst of instructions (or of the QUEUE_FULL results it causes) is not
# overwritten in the reliable history before it is acknowledged: each must get its own answer.
INSTRUCTION_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE)
RESULT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE)
DEBUG_IMAGE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)

# name -> (default, description). Defaults mirror config/llmseg_node.yaml.
CONFIGURE_PARAMETERS: dict[str, tuple[Any, str]] = {
    "preset": ("tiny", "model preset: tiny (shipped, CPU) or paper (LLaVA + SAM ViT-H + DINOv2 ViT-L)"),
    "device": ("cpu", "torch device: cpu, cuda, cuda:N, or auto (cuda when available)"),
    "weights.sam_checkpoint": ("", "SAM checkpoint file; empty = the preset's"),
    "weights.dinov2_path": ("", "DINOv2 model folder; empty = the preset's"),
    "weights.llava_path": ("", "LLaVA model folder; empty = the preset's"),
    "weights.llmseg_weights": ("", "folder with LLM-Seg's trained weights; empty = the preset's"),
    "proposals.top_k": (0, "K, the number of SAM proposals kept per frame; 0 = the preset's"),
    "proposals.points_per_side": (0, "SAM everything-mode point grid side; 0 = the preset's"),
    "proposals.pred_iou_thresh": (-1.0, "SAM's predicted-IoU filter for proposals, [0, 1]; negative = the preset's"),
    "proposals.stability_score_thresh": (-1.0, "SAM's stability-score filter, [0, 1]; negative = the preset's"),
    "num_threads": (0, "torch CPU threads for inference; 0 = torch's default (OMP_NUM_THREADS or all cores)"),
    "lazy_model_load": (False, "build the model on the first instruction instead of in configure"),
    "image_transport": ("raw", "raw: sensor_msgs/Image on `image`; compressed: CompressedImage on `image/compressed`"),
    "max_queue": (4, "instructions waiting for the worker; more are answered QUEUE_FULL"),
    "frame_buffer_size": (8, "recent frames kept for instructions that name an image_stamp"),
    "feature_cache_size": (2, "frames whose proposals and features are kept for further instructions"),
}
RUNTIME_PARAMETERS: dict[str, tuple[Any, str]] = {
    "selection.iop_threshold": (0.5, "IoP score a proposal needs to be selected, in [0, 1]"),
    "selection.fallback_min_iop": (1.01, "if none passes, take the best IoU proposal when its IoP >= this (> 1: never)"),
    "selection.max_instances": (50, "most instances in one result, >= 1"),
    "max_image_age": (2.0, "seconds; the latest frame is STALE_IMAGE when older than this (0 = no limit)"),
    "image_stamp_tolerance": (0.005, "seconds; how close a frame's stamp must be to an instruction's image_stamp"),
    "max_image_side": (4096, "images with a longer side are BAD_IMAGE (0 = no limit)"),
    "max_instruction_chars": (1000, "longer instructions are BAD_INSTRUCTION"),
    "service_timeout": (120.0, "seconds the segment service waits for its result"),
    "publish_instance_masks": (True, "fill instance_masks in results (one mono8 image per instance)"),
    "publish_overlay": (True, "publish the tinted debug image on `overlay`"),
}
STARTUP_PARAMETERS: dict[str, tuple[Any, str]] = {
    "autostart": (True, "configure and activate at start (no lifecycle manager needed)"),
}


PARAMETER_DEFAULTS = {
    name: default
    for table in (CONFIGURE_PARAMETERS, RUNTIME_PARAMETERS, STARTUP_PARAMETERS)
    for name, (default, _) in table.items()
}


def coerce_parameter(name: str, value: Any) -> Any:
    """The value as its parameter's type (an integer is fine for a float); ValueError otherwise.

    Parameters are declared dynamically typed so that `iop_threshold: 1` in a YAML file is read as
    1.0 instead of killing the node at start; the types are checked here instead.
    """
    expected = type(PARAMETER_DEFAULTS[name])
    if expected is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, expected) and (expected is bool or not isinstance(value, bool)):
        return value
    raise ValueError(f"{name} must be a {expected.__name__}, got {value!r}")


def check_parameter(name: str, value: Any) -> str | None:
    """Why a parameter value is unacceptable, or None when it is fine."""
    try:
        value = coerce_parameter(name, value)
    except ValueError as error:
        return str(error)
    if name == "preset" and value not in ("tiny", "paper"):
        return f"preset must be 'tiny' or 'paper', got {value!r}"
    if name == "device" and not re.fullmatch(r"cpu|auto|cuda(:\d+)?|mps", value):
        return f"device must be cpu, auto, cuda or cuda:N, got {value!r}"
    if name == "image_transport" and value not in ("raw", "compressed"):
        return f"image_transport must be 'raw' or 'compressed', got {value!r}"
    if name in ("proposals.top_k", "proposals.points_per_side", "max_image_side", "num_threads") and value < 0:
        return f"{name} must be >= 0, got {value}"
    if name in ("max_queue", "frame_buffer_size", "feature_cache_size", "selection.max_instances", "max_instruction_chars"):
        if value < 1:
            return f"{name} must be >= 1, got {value}"
    if name in ("proposals.pred_iou_thresh", "proposals.stability_score_thresh") and not value <= 1.0:
        return f"{name} must be in [0, 1] (or negative for the preset's), got {value}"
    if name == "selection.iop_threshold" and not 0.0 <= value <= 1.0:
        return f"selection.iop_threshold must be in [0, 1], got {value}"
    if name == "selection.fallback_min_iop" and not value >= 0.0:
        return f"selection.fallback_min_iop must be >= 0, got {value}"
    if name in ("max_image_age", "image_stamp_tolerance") and not value >= 0.0:
        return f"{name} must be >= 0 seconds, got {value}"
    if name == "service_timeout" and not value > 0.0:
        return f"service_timeout must be > 0 seconds, got {value}"
    return None


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
class Frame:
    """One received image, kept undecoded until an instruction needs it."""

    seq: int | None  # None: a service request's own image (never cached)
    msg: Image | CompressedImage
    stamp_ns: int  # header stamp, or the receive time when the header has none

    @property
    def header(self) -> Header:
        return self.msg.header


@dataclass
class Job:
    """One instruction on its way to the worker."""

    id: str
    text: str
    image_stamp_ns: int  # 0: the newest frame
    received: float  # time.monotonic() at arrival
    reply: Callable[[SegmentationResult], None]
    image: Image | None = None  # the Segment service's own image


class SegmentationNode(LifecycleNode):
    """LLM-Seg behind ROS topics and a service, as a managed node."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for table in (CONFIGURE_PARAMETERS, RUNTIME_PARAMETERS, STARTUP_PARAMETERS):
            for name, (default, description) in table.items():
                self.declare_parameter(
                    name, default, ParameterDescriptor(description=description, dynamic_typing=True)
                )
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._lock = threading.Lock()  # guards _frames and _runtime between executor and worker threads
        # Validated on configure; until then a bad value from the params file is kept as given.
        self._runtime = {name: self.get_parameter(name).value for name in RUNTIME_PARAMETERS}
        self._frames: collections.deque[Frame] = collections.deque(maxlen=1)
        self._frame_seq = itertools.count()
        self._job_ids = itertools.count(1)
        self._active = False
        self._configured = False
        self._config: LLMSegConfig | None = None
        self._model: Any = None  # llmseg_model.modeling.model.LLMSeg, imported lazily (torch is slow to import)
        self._model_error: str | None = None
        self._feature_cache: collections.OrderedDict[int, tuple[Any, Any]] = collections.OrderedDict()
        self._worker: Any = None
        self._outputs: dict[str, Any] = {}
        self._subscriptions_active: list[Any] = []
        self._service = None
        self._image_group = MutuallyExclusiveCallbackGroup()
        self._instruction_group = MutuallyExclusiveCallbackGroup()
        self._service_group = ReentrantCallbackGroup()

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Runtime parameters change any time (validated); model parameters only when unconfigured."""
        for parameter in parameters:
            name = parameter.name
            if name in CONFIGURE_PARAMETERS and self._configured:
                return SetParametersResult(
                    successful=False, reason=f"{name} takes effect on configure: cleanup the node first"
                )
            if name in STARTUP_PARAMETERS:
                return SetParametersResult(successful=False, reason=f"{name} is read at start only")
            error = check_parameter(name, parameter.value)
            if error:
                return SetParametersResult(successful=False, reason=error)
        with self._lock:
            for parameter in parameters:
                if parameter.name in self._runtime:
                    self._runtime[parameter.name] = coerce_parameter(parameter.name, parameter.value)
        return SetParametersResult(successful=True)

    def _parameter(self, name: str) -> Any:
        """A parameter's value, checked and of its declared type; ValueError naming it otherwise."""
        value = self.get_parameter(name).value
        error = check_parameter(name, value)
        if error:
            raise ValueError(error)
        return coerce_parameter(name, value)

    def model_config(self) -> LLMSegConfig:
        """The model config the parameters describe: the preset with the given overrides."""
        config = preset_config(self._parameter("preset"))
        for key in ("sam_checkpoint", "dinov2_path", "llava_path", "llmseg_weights"):
            value = self._parameter(f"weights.{key}")
            if value:
                setattr(config.weights, key, value)
        for key in ("top_k", "points_per_side"):
            value = self._parameter(f"proposals.{key}")
            if value:
                setattr(config.proposals, key, value)
        for key in ("pred_iou_thresh", "stability_score_thresh"):
            value = self._parameter(f"proposals.{key}")
            if value >= 0.0:
                setattr(config.proposals, key, value)
        return config

    # ------------------------------------------------------------------ lifecycle
    @logged_transition
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            runtime = {name: self._parameter(name) for name in RUNTIME_PARAMETERS}
            for name in CONFIGURE_PARAMETERS:
                self._parameter(name)
            self._config = self.model_config()
        except ValueError as error:
            self.get_logger().error(f"configure failed: {error}")
            return TransitionCallbackReturn.FAILURE
        with self._lock:
            self._runtime = runtime
        self._model_error = None
        if not self._parameter("lazy_model_load"):
            try:
                self._model = self._build_model()
            except Exception as error:  # a missing weight path, a bad checkpoint, an unusable device
                self.get_logger().error(f"configure failed: cannot load the {self._config.preset} model: {error}")
                self._model = None
                return TransitionCallbackReturn.FAILURE

        self._frames = collections.deque(maxlen=self._parameter("frame_buffer_size"))
        self._feature_cache.clear()
        self._outputs = {
            "result": self.create_publisher(SegmentationResult, "result", RESULT_QOS),
            "mask": self.create_publisher(Image, "mask", DEBUG_IMAGE_QOS),
            "overlay": self.create_publisher(Image, "overlay", DEBUG_IMAGE_QOS),
        }
        self._service = self.create_service(Segment, "segment", self._on_segment, callback_group=self._service_group)
        self._worker = Worker(self._process, self._parameter("max_queue"))
        self._configured = True
        self.get_logger().info(
            f"configured: preset {self._config.preset}, K={self._config.proposals.top_k}, "
            f"model {'deferred to first instruction' if self._model is None else 'loaded'}"
        )
        return TransitionCallbackReturn.SUCCESS

    @logged_transition
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._parameter("image_transport") == "compressed":
            topic = self.resolve_topic_name("image") + "/compressed"
            image_sub = self.create_subscription(
                CompressedImage, topic, self._on_image, IMAGE_QOS, callback_group=self._image_group
            )
        else:
            image_sub = self.create_subscription(
                Image, "image", self._on_image, IMAGE_QOS, callback_group=self._image_group
            )
        self._subscriptions_active = [
            image_sub,
            self.create_subscription(
                Instruction, "instruction", self._on_instruction, INSTRUCTION_QOS, callback_group=self._instruction_group
            ),
            self.create_subscription(
                String, "instruction_text", self._on_instruction_text, INSTRUCTION_QOS,
                callback_group=self._instruction_group,
            ),
        ]
        self._active = True
        self.get_logger().info(f"active: images on {image_sub.topic_name}")
        return TransitionCallbackReturn.SUCCESS

    @logged_transition
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        for subscription in self._subscriptions_active:
            self.destroy_subscription(subscription)
        self._subscriptions_active = []
        if self._worker is not None:
            for job in self._worker.drain():
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
        self._active = False
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """Stop taking work and free everything (for process exit, whatever the lifecycle state)."""
        self._active = False
        self._release()

    def _release(self) -> None:
        """Stop the worker, answer what it never ran, drop publishers and free the model's memory."""
        if self._worker is not None:
            for job in self._worker.stop(timeout=30.0):
                self._reply(job, self._status(job, SegmentationResult.NOT_ACTIVE, "the node is shutting down"))
            self._worker = None
        if self._service is not None:
            self.destroy_service(self._service)
            self._service = None
        for publisher in self._outputs.values():
            self.destroy_publisher(publisher)
        self._outputs = {}
        self._feature_cache.clear()
        with self._lock:
            self._frames.clear()
        if self._model is not None:
            self._model.release()
            self._model = None
        self._configured = False

    def _build_model(self) -> Any:
        """Load the model the parameters describe (slow: imports torch and reads the weights)."""
        import torch

        from llmseg_model.modeling.model import LLMSeg

        device = self._parameter("device")
        if self._parameter("num_threads"):
            torch.set_num_threads(self._parameter("num_threads"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        started = time.monotonic()
        model = LLMSeg.from_config(self._config, device=device)
        self.get_logger().info(f"{self._config.preset} model loaded on {device} in {time.monotonic() - started:.1f} s")
        return model

    # ------------------------------------------------------------------ inputs (executor threads)
    def _on_image(self, msg: Image | CompressedImage) -> None:
        stamp_ns = Time.from_msg(msg.header.stamp).nanoseconds
        if stamp_ns == 0:
            stamp_ns = self.get_clock().now().nanoseconds
        with self._lock:
            self._frames.append(Frame(next(self._frame_seq), msg, stamp_ns))

    def _on_instruction(self, msg: Instruction) -> None:
        job = Job(
            id=msg.id or f"auto-{next(self._job_ids)}",
            text=msg.text,
            image_stamp_ns=Time.from_msg(msg.image_stamp).nanoseconds,
            received=time.monotonic(),
            reply=self._publish_result,
        )
        self._submit(job)

    def _on_instruction_text(self, msg: String) -> None:
        job = Job(
            id=f"text-{next(self._job_ids)}",
            text=msg.data,
            image_stamp_ns=0,
            received=time.monotonic(),
            reply=self._publish_result,
        )
        self._submit(job)

    def _on_segment(self, request: Segment.Request, response: Segment.Response) -> Segment.Response:
        future: concurrent.futures.Future[SegmentationResult] = concurrent.futures.Future()
        job = Job(
            id=request.id or f"srv-{next(self._job_ids)}",
            text=request.text,
            image_stamp_ns=0,
            received=time.monotonic(),
            reply=future.set_result,
            image=None if conversions.is_empty(request.image) else request.image,
        )
        self._submit(job)
        with self._lock:
            timeout = self._runtime["service_timeout"]
        try:
            response.result = future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            response.result = self._status(job, SegmentationResult.MODEL_ERROR, f"no result within service_timeout={timeout} s")
        return response

    def _submit(self, job: Job) -> None:
        """Queue a job for the worker, or answer it now when it cannot be run."""
        status, error = self._precheck(job)
        if status is None:
            if self._worker is not None and self._worker.submit(job):
                return
            queued = self._worker.max_queue if self._worker is not None else 0
            status, error = SegmentationResult.QUEUE_FULL, f"{queued} instructions already queued"
        self._reply(job, self._status(job, status, error))

    def _precheck(self, job: Job) -> tuple[int | None, str]:
        """Checks that need no model: state and instruction text."""
        if not self._active or self._config is None:
            return SegmentationResult.NOT_ACTIVE, "the node is not active"
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
        return None, ""

    # ------------------------------------------------------------------ the worker thread
    def _process(self, job: Job) -> None:
        timings = {"queue": time.monotonic() - job.received}
        try:
            result, rgb, instance_masks = self._segment(job, timings)
        except Exception as error:  # never let one instruction take the node down
            self.get_logger().error(f"instruction {job.id!r} failed: {error!r}")
            result, rgb, instance_masks = self._status(job, SegmentationResult.MODEL_ERROR, repr(error)), None, None
        timings["total"] = time.monotonic() - job.received
        result.timings = [StageTiming(stage=stage, seconds=float(seconds)) for stage, seconds in timings.items()]
        self._reply(job, result)
        if rgb is not None:
            self._publish_debug_images(result, rgb, instance_masks)

    def _segment(self, job: Job, timings: dict[str, float]) -> tuple[SegmentationResult, Any, Any]:
        with self._lock:
            runtime = dict(self._runtime)
        frame, status, error = self._pick_frame(job, runtime)
        if status:
            return self._status(job, status, error, frame), None, None

        cached = frame.seq is not None and frame.seq in self._feature_cache
        start = time.monotonic()
        if cached:
            features, rgb = self._feature_cache[frame.seq]
            self._feature_cache.move_to_end(frame.seq)
        else:
            try:
                rgb = self._decode(frame.msg, runtime["max_image_side"])
            except ValueError as error:
                return self._status(job, SegmentationResult.BAD_IMAGE, str(error), frame), None, None
        timings["decode"] = time.monotonic() - start

        model = self._ensure_model()
        if model is None:
            return self._status(job, SegmentationResult.MODEL_ERROR, self._model_error or "no model", frame), None, None
        if not cached:
            try:
                features = model.prepare(rgb)
            except ValueError as error:
                return self._status(job, SegmentationResult.BAD_IMAGE, str(error), frame), None, None
            timings.update(features.timings)
            if frame.seq is not None:
                self._feature_cache[frame.seq] = (features, rgb)
                while len(self._feature_cache) > self._parameter("feature_cache_size"):
                    self._feature_cache.popitem(last=False)

        selection = model.config.selection
        selection.iop_threshold = runtime["selection.iop_threshold"]
        selection.fallback_min_iop = runtime["selection.fallback_min_iop"]
        selection.max_instances = runtime["selection.max_instances"]
        try:
            answer = model.query(features, job.text)
        except ValueError as error:
            return self._status(job, SegmentationResult.BAD_INSTRUCTION, str(error), frame), None, None
        timings.update({k: v for k, v in answer.timings.items() if k not in features.timings})

        result = self._status(job, SegmentationResult.EMPTY if answer.empty else SegmentationResult.OK, "", frame)
        result.frame_cached = cached
        result.mask = conversions.mask_to_image(answer.mask, frame.header)
        if runtime["publish_instance_masks"]:
            result.instance_masks = [conversions.mask_to_image(m, frame.header) for m in answer.instance_masks]
        result.instance_ids = [int(i) for i in answer.proposal_indices]
        result.instance_scores = [float(s) for s in answer.instance_scores]
        result.instance_iou_scores = [float(answer.iou_scores[i]) for i in answer.proposal_indices]
        result.answer = answer.answer
        return result, rgb, answer.instance_masks

    def _pick_frame(self, job: Job, runtime: dict[str, Any]) -> tuple[Frame | None, int, str]:
        """The frame an instruction is about (its own image, the one with its stamp, or the newest),
        or a nonzero status saying why there is none (the frame is still given when it is stale)."""
        if job.image is not None:
            return Frame(None, job.image, Time.from_msg(job.image.header.stamp).nanoseconds), 0, ""
        with self._lock:
            frames = list(self._frames)
        if not frames:
            return None, SegmentationResult.NO_IMAGE, "no image received yet"
        if job.image_stamp_ns:
            tolerance = int(runtime["image_stamp_tolerance"] * 1e9)
            matches = [f for f in frames if abs(f.stamp_ns - job.image_stamp_ns) <= tolerance]
            if matches:
                return min(matches, key=lambda f: abs(f.stamp_ns - job.image_stamp_ns)), 0, ""
            oldest = min(f.stamp_ns for f in frames)
            if job.image_stamp_ns < oldest:
                return None, SegmentationResult.STALE_IMAGE, (
                    f"frame {job.image_stamp_ns / 1e9:.3f} is no longer buffered (oldest {oldest / 1e9:.3f})"
                )
            return None, SegmentationResult.NO_IMAGE, f"no frame with stamp {job.image_stamp_ns / 1e9:.3f} received"
        frame = frames[-1]
        age = (self.get_clock().now().nanoseconds - frame.stamp_ns) / 1e9
        if runtime["max_image_age"] and age > runtime["max_image_age"]:
            return frame, SegmentationResult.STALE_IMAGE, (
                f"the latest frame is {age:.2f} s old; max_image_age is {runtime['max_image_age']} s"
            )
        return frame, 0, ""

    @staticmethod
    def _decode(msg: Image | CompressedImage, max_side: int) -> Any:
        if isinstance(msg, CompressedImage):
            return conversions.compressed_to_rgb(msg, max_side)
        return conversions.image_to_rgb(msg, max_side)

    def _ensure_model(self) -> Any:
        """The model, built here on first use when lazy_model_load is set; None after a failed load."""
        if self._model is None and self._model_error is None:
            try:
                self._model = self._build_model()
            except Exception as error:
                self._model_error = f"cannot load the {self._config.preset} model: {error}"
                self.get_logger().error(self._model_error)
        return self._model

    # ------------------------------------------------------------------ outputs
    def _status(self, job: Job, status: int, error: str, frame: Frame | None = None) -> SegmentationResult:
        result = SegmentationResult(instruction_id=job.id, instruction_text=job.text, status=status, error=error)
        if frame is not None:
            result.header = frame.header
        return result

    def _reply(self, job: Job, result: SegmentationResult) -> None:
        if not result.timings:
            result.timings = [StageTiming(stage="total", seconds=time.monotonic() - job.received)]
        if result.status not in (SegmentationResult.OK, SegmentationResult.EMPTY):
            self.get_logger().warning(f"instruction {job.id!r}: status {status_name(result.status)}: {result.error}")
        try:
            job.reply(result)
        except Exception as error:  # e.g. the context is already shut down
            self.get_logger().error(f"could not deliver the result of {job.id!r}: {error!r}")

    def _publish_result(self, result: SegmentationResult) -> None:
        publisher = self._outputs.get("result")
        if publisher is None:
            self.get_logger().error(f"no result publisher; dropping the result of {result.instruction_id!r}")
            return
        publisher.publish(result)

    def _publish_debug_images(self, result: SegmentationResult, rgb: Any, instance_masks: Any) -> None:
        mask_pub, overlay_pub = self._outputs.get("mask"), self._outputs.get("overlay")
        if mask_pub is not None and mask_pub.get_subscription_count():
            mask_pub.publish(result.mask)
        with self._lock:
            publish_overlay = self._runtime["publish_overlay"]
        if publish_overlay and overlay_pub is not None and overlay_pub.get_subscription_count():
            overlay_pub.publish(conversions.rgb_to_image(conversions.overlay(rgb, instance_masks), result.header))


def status_name(status: int) -> str:
    """The constant's name for a SegmentationResult status value (e.g. 2 -> 'NO_IMAGE')."""
    for name in ("OK", "EMPTY", "NO_IMAGE", "STALE_IMAGE", "BAD_IMAGE", "BAD_INSTRUCTION", "MODEL_ERROR",
                 "NOT_ACTIVE", "QUEUE_FULL"):
        if getattr(SegmentationResult, name) == status:
            return name
    return str(status)


def main(args: list[str] | None = None) -> int:
    """Run the node until Ctrl-C / SIGTERM; with autostart it configures and activates itself."""
    rclpy.init(args=args)
    node = None
    try:
        node = SegmentationNode()
        # Service calls block an executor thread each while they wait; the queue bound caps them.
        queue = node.get_parameter("max_queue").value
        executor = MultiThreadedExecutor(num_threads=(queue if isinstance(queue, int) and queue > 0 else 4) + 4)
        executor.add_node(node)
        autostart = node.get_parameter("autostart").value
        if check_parameter("autostart", autostart):
            node.get_logger().error(f"{check_parameter('autostart', autostart)}; not starting by itself")
        elif autostart:
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()
            else:
                node.get_logger().error("autostart: configure failed; the node stays unconfigured")
        executor.spin()
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
