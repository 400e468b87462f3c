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

import concurrent.futures
import functools
import itertools
import os
import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from llmseg_interfaces.msg import Instruction, SegmentationResult
from llmseg_interfaces.srv import Segment
from llmseg_model.config import LLMSegConfig, preset_config
from llmseg_ros import conversions, parameters, results
from llmseg_ros.frames import Frame, FrameStore, make_frame, stamp_to_ns
from llmseg_ros.parameters import SPEC, NodeParameters
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


class SegmentationNode(LifecycleNode):
    """LLM-Seg behind ROS topics and a service, as a managed node."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._state_lock = threading.RLock()  # _active, _configured, _worker between executor threads
        self._active = False
        self._configured = False
        self.parameters = NodeParameters(self, lambda: self._configured)
        self._config: LLMSegConfig | None = None
        self._model: Any = None  # llmseg_model.modeling.model.LLMSeg, imported lazily (torch is slow to import)
        self._model_error: str | None = None
        self._frames = FrameStore(SPEC["frame_buffer_size"].default, SPEC["frame_buffer_seconds"].default, 1)
        self._job_ids = itertools.count(1)
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

    # ------------------------------------------------------------------ lifecycle
    @logged_transition
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            values = self.parameters.effective()
        except ValueError as error:
            self.get_logger().error(f"configure failed: {error}")
            return TransitionCallbackReturn.FAILURE
        self._config = parameters.apply_to_config(preset_config(values["preset"]), values)
        self.parameters.publish_effective(values)
        self._model_error = None
        if not values["lazy_model_load"]:
            try:
                self._model = self._build_model(values)
            except Exception as error:  # a missing weight path, a bad checkpoint, an unusable device
                self.get_logger().error(f"configure failed: cannot load the {self._config.preset} model: {error}")
                self._model = None
                return TransitionCallbackReturn.FAILURE
        self._frames = FrameStore(values["frame_buffer_size"], values["frame_buffer_seconds"],
                                  values["feature_cache_size"])
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
        self._frames.drops.restart()
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
        store = self._frames
        store.buffer.add(self._frame(msg, store.arrived(info)))

    def _frame(self, msg: Image | CompressedImage, seq: int | None) -> Frame:
        limits = self.parameters["max_image_side"], self.parameters["max_image_bytes"]
        return make_frame(msg, seq, *limits, self.get_clock().now().nanoseconds)

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
        timeout = self.parameters["service_timeout"]
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
        max_chars = self.parameters["max_instruction_chars"]
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
        received, lost = self._frames.drops.take()
        if lost:
            self.get_logger().warning(
                f"{lost} of {received + lost} image frames were lost before the node took them in the last "
                f"{DROP_REPORT_PERIOD:.0f} s "
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
        runtime = self.parameters.snapshot()
        store = self._frames
        if job.image is not None:
            frame, cached = job.image, None
        else:
            pick = store.pick(job.image_stamp_ns, runtime, self.get_clock().now().nanoseconds)
            if pick.status:
                return self._status(job, pick.status, pick.error, pick.frame), None, None
            if pick.late:
                self.get_logger().warning(f"instruction {job.id!r}: {pick.late}", throttle_duration_sec=10.0)
            frame, cached = pick.frame, pick.cached

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
        else:
            features = cached.features
        store.remember(frame, features, rgb)

        selection = model.config.selection
        selection.iop_threshold = runtime["selection.iop_threshold"]
        selection.fallback_min_iop = runtime["selection.fallback_min_iop"]
        selection.max_instances = runtime["selection.max_instances"]
        model.config.instances.iou_threshold = runtime["instances.iou_threshold"]
        model.config.instances.containment_threshold = runtime["instances.containment_threshold"]
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
                self._model = self._build_model(self.parameters.effective())
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
        if self.parameters["publish_overlay"] and self._overlay_pub.get_subscription_count():
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
        if os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == "LOCALHOST" and os.environ.get("FASTDDS_BUILTIN_TRANSPORTS"):
            node.get_logger().warning(
                "ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST: rmw_fastrtps then ignores FASTDDS_BUILTIN_TRANSPORTS and "
                "large best-effort images are dropped (docs/ros.md)"
            )
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
