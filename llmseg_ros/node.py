"""The llmseg lifecycle node: camera images and instructions in, segmentation results out.

    python -m llmseg_ros.node --ros-args --params-file config/llmseg_node.yaml
    ros2 run llmseg_ros llmseg_node --ros-args --params-file ...          (under a ROS 2 install)

Lifecycle: configure builds the model from the parameters (a missing weight path fails the
transition with the setting to fix), activate subscribes to images, deactivate unsubscribes,
cleanup frees the model. With `autostart` (default) the node configures and activates itself.
Instructions (topics and the service) are listened to in every state and always answered:
NOT_ACTIVE unless the node is active.

Threads: executor callbacks only validate and store frames (llmseg_ros.frames) and queue
instructions, each bound to the newest frame when it arrives; one worker thread (llmseg_ros.worker)
runs the model and answers every queued instruction on the same frame together, with one
`LLMSeg.prepare` (or the cached frame) and one `LLMSeg.query_batch` (llmseg_ros.answering, which
also delivers every result); results, masks, overlays, points and markers go out through
llmseg_ros.outputs. With `use_depth` the answer is placed in 3D (llmseg_ros.spatial); standing
instructions (the Track action and the `standing_instructions` parameter, llmseg_ros.standing) are
answered again on new frames; health goes to /diagnostics (llmseg_ros.diagnostics). Every
callback is guarded and the spin loop (llmseg_ros.spinning) outlives exceptions raised inside
rclpy's own services: no message and no accepted parameter value may end the process.
`gil_switch_interval` keeps the worker's Python from starving the executor threads that take the
frames.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import math
import os
import sys
import threading
import time
import traceback
import dataclasses
from typing import Any, Callable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from llmseg_interfaces.msg import Instruction, SegmentationResult
from llmseg_interfaces.srv import Segment
from llmseg_model.config import LLMSegConfig, preset_config
from llmseg_model.modeling.prompting import clean_instruction
from llmseg_ros import conversions, diagnostics, parameters, spatial
from llmseg_ros.answering import BatchRunner, Replies, job_status
from llmseg_ros.batching import Job
from llmseg_ros.frames import NS, Frame, FrameStore, make_frame, stamp_to_ns
from llmseg_ros.outputs import Outputs
from llmseg_ros.parameters import SPEC, NodeParameters
from llmseg_ros.results import status_name, status_result  # noqa: F401  (status_name: public helper)
from llmseg_ros.spinning import spin
from llmseg_ros.standing import StandingTask, StandingTasks, TrackServer
from llmseg_ros.worker import Worker

NODE_NAME = "llmseg"

# Images: the sensor-data profile (best effort, keep last 5); reliability, depth and the rest can be
# overridden with qos_overrides.<topic>.subscription.* parameters (reliable is what many drivers offer).
IMAGE_QOS = qos_profile_sensor_data
# Deep enough that a burst of instructions (or of the QUEUE_FULL results it causes) is not
# overwritten in the reliable history before it is acknowledged: each must get its own answer.
INSTRUCTION_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE)
DROP_REPORT_PERIOD = 5.0  # seconds between checks for frames lost in transport
DIAGNOSTICS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)


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
        self._device = SPEC["device"].default
        self._frames = FrameStore(SPEC["frame_buffer_size"].default, SPEC["frame_buffer_seconds"].default, 1)
        self._job_ids = itertools.count(1)
        self._worker: Worker[Job] | None = None
        self._image_subscription: Any = None
        self._depth_subscriptions: list[Any] = []
        self._image_transport = SPEC["image_transport"].default
        self._use_depth = False
        self._max_track_goals = SPEC["max_track_goals"].default
        self.callback_failures = 0  # exceptions the spin loop survived (see spin)
        self._stats = diagnostics.Stats()
        self._recently_lost = 0
        self._standing = StandingTasks()
        self._replies = Replies(self.get_logger(), self._stats, self._standing)

        # Instructions, results, the service and the action exist in every lifecycle state, so
        # every instruction and goal is answered (NOT_ACTIVE when not active); only images wait
        # for activate.
        instructions = MutuallyExclusiveCallbackGroup()
        self._outputs = Outputs(self)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        self.create_subscription(Instruction, "instruction", self._on_instruction, INSTRUCTION_QOS,
                                 callback_group=instructions)
        self.create_subscription(String, "instruction_text", self._on_instruction_text, INSTRUCTION_QOS,
                                 callback_group=instructions)
        self.create_service(Segment, "segment", self._on_segment, callback_group=ReentrantCallbackGroup())
        self._tracks = TrackServer(self, self._standing, self._goal_problem, lambda: f"track-{next(self._job_ids)}")
        self._image_group = MutuallyExclusiveCallbackGroup()
        self.create_timer(DROP_REPORT_PERIOD, self._report_drops)
        period = parameters.valid_or_default("diagnostics_period", self.get_parameter("diagnostics_period").value)
        self.create_timer(float(period), self._publish_diagnostics)
        self.parameters.listeners.append(self._on_runtime_change)

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
        self._use_depth = values["use_depth"]
        self._max_track_goals = values["max_track_goals"]
        self._device = values["device"]
        runner = BatchRunner(
            frames=self._frames, runtime=self.parameters.snapshot, replies=self._replies, extras=self._outputs.extras,
            stats=self._stats, logger=self.get_logger(), use_depth=self._use_depth,
            now_ns=lambda: self.get_clock().now().nanoseconds, load_model=self._model_or_reason,
            queue=lambda: self._worker, schedule_standing=self._schedule_standing,
        )
        with self._state_lock:
            self._worker = Worker(runner.process, values["max_queue"])
            self._configured = True
        selection = self._config.selection
        self.get_logger().info(
            f"configured: preset {self._config.preset}, K={self._config.proposals.top_k}, selection iop > "
            f"{selection.iop_threshold}, fallback IoP >= {selection.fallback_min_iop}, "
            f"model {'deferred to first instruction' if self._model is None else 'loaded'}, "
            f"depth {'on' if self._use_depth else 'off'}"
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
            if self._use_depth:
                self._depth_subscriptions = [
                    self.create_subscription(Image, "depth_image", self._on_depth, IMAGE_QOS,
                                             callback_group=self._image_group,
                                             qos_overriding_options=QoSOverridingOptions.with_default_policies()),
                    self.create_subscription(CameraInfo, "depth_info", self._on_camera_info, IMAGE_QOS,
                                             callback_group=self._image_group),
                ]
        except Exception as error:  # e.g. a qos_overrides.* parameter with an unusable value
            self.get_logger().error(f"activate failed: cannot subscribe to {topic}: {error}")
            self._unsubscribe()
            return TransitionCallbackReturn.FAILURE
        with self._state_lock:
            self._active = True
        qos = self._image_subscription.qos_profile
        depth = (f"; depth on {self._depth_subscriptions[0].topic_name} with {self._depth_subscriptions[1].topic_name}"
                 if self._depth_subscriptions else "")
        self.get_logger().info(
            f"active: images on {self._image_subscription.topic_name} ({qos.reliability.name.lower()}, "
            f"depth {qos.depth}){depth}"
        )
        return TransitionCallbackReturn.SUCCESS

    def _unsubscribe(self) -> None:
        for subscription in [self._image_subscription, *self._depth_subscriptions]:
            if subscription is not None:
                self.destroy_subscription(subscription)
        self._image_subscription, self._depth_subscriptions = None, []

    @logged_transition
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._state_lock:
            self._active = False
            jobs = self._worker.drain() if self._worker is not None else []
        self._unsubscribe()
        self._tracks.end_all("the node was deactivated")
        for job in jobs:
            self._replies.send(job, job_status(job, SegmentationResult.NOT_ACTIVE, "the node was deactivated"))
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
        self._unsubscribe()
        self._tracks.end_all("the node is shutting down")
        if worker is not None:
            for job in worker.stop(timeout=30.0):
                self._replies.send(job, job_status(job, SegmentationResult.NOT_ACTIVE, "the node is shutting down"))
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
        self._device = device
        started = time.monotonic()
        model = LLMSeg.from_config(self._config, device=device)
        self.get_logger().info(f"{self._config.preset} model loaded on {device} in {time.monotonic() - started:.1f} s")
        return model

    # ------------------------------------------------------------------ inputs (executor threads)
    @guarded
    def _on_image(self, msg: Image | CompressedImage, info: Any) -> None:
        """Check the header (no pixel is touched) and keep the frame; refused data is not kept.
        Standing instructions due on a new frame are queued for it."""
        store = self._frames
        frame = self._frame(msg, store.arrived(info))
        store.add_colour(frame, int(self.parameters["depth_tolerance"] * NS))
        worker = self._worker
        if worker is not None and worker.pending() == 0:  # busy: the worker schedules them when done
            self._schedule_standing(frame)

    @guarded
    def _on_depth(self, msg: Image) -> None:
        """Keep a depth image (checked from its header) and pair it with its colour frame by stamp."""
        store = self._frames
        depth = spatial.make_depth_frame(msg, self.parameters["max_image_bytes"], self.get_clock().now().nanoseconds)
        store.add_depth(depth, int(self.parameters["depth_tolerance"] * NS))

    @guarded
    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._frames.add_info(msg)

    def _frame(self, msg: Image | CompressedImage, seq: int | None) -> Frame:
        limits = self.parameters["max_image_side"], self.parameters["max_image_bytes"]
        return make_frame(msg, seq, *limits, self.get_clock().now().nanoseconds)

    @guarded
    def _on_instruction(self, msg: Instruction) -> None:
        job = Job(id=msg.id or f"auto-{next(self._job_ids)}", text=msg.text, image_stamp_ns=0,
                  received=time.monotonic(), reply=self._outputs.result, phrase=msg.phrase)
        stamp = stamp_to_ns(msg.image_stamp)
        if stamp is None:
            job.invalid = (SegmentationResult.BAD_INSTRUCTION, f"image_stamp is negative ({msg.image_stamp.sec} s)")
        else:
            job.image_stamp_ns = stamp
        self._submit(job)

    @guarded
    def _on_instruction_text(self, msg: String) -> None:
        self._submit(Job(id=f"text-{next(self._job_ids)}", text=msg.data, image_stamp_ns=0,
                         received=time.monotonic(), reply=self._outputs.result))

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
                  reply=future.set_result, phrase=request.phrase)
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
            return job_status(job, SegmentationResult.MODEL_ERROR, f"no result within service_timeout={timeout} s")

    def _submit(self, job: Job, bounded: bool = True) -> None:
        """Queue a job for the worker, bound to the newest frame now (frame_binding: arrival), or
        answer it now when it cannot be run."""
        with self._state_lock:
            status, error = self._precheck(job)
            if status is None:
                if (job.image is None and not job.image_stamp_ns and job.standing is None
                        and self.parameters["frame_binding"] == "arrival"):
                    job.bound, job.bound_ns = self._frames.buffer.newest(), self.get_clock().now().nanoseconds
                if self._worker.submit(job, bounded):
                    return
                status, error = SegmentationResult.QUEUE_FULL, f"{self._worker.max_queue} instructions already queued"
        self._replies.send(job, job_status(job, status, error, job.image))

    def _precheck(self, job: Job) -> tuple[int | None, str]:
        """Checks that need no model, in order: state, the message, the text, a service image."""
        if not self._active or self._worker is None or self._config is None:
            return SegmentationResult.NOT_ACTIVE, "the node is not active"
        if job.invalid:
            return job.invalid
        max_chars = self.parameters["max_instruction_chars"]
        try:  # the library's own rule (no model needed), with this node's length limit
            clean_instruction(job.text, dataclasses.replace(self._config.vlm, max_instruction_chars=max_chars))
        except ValueError as error:
            reason = str(error).replace("the limit is", "max_instruction_chars is")
            return SegmentationResult.BAD_INSTRUCTION, reason
        if job.image is not None and job.image.error:
            return SegmentationResult.BAD_IMAGE, job.image.error
        return None, ""

    @guarded
    def _report_drops(self) -> None:
        received, lost = self._frames.drops.take()
        self._recently_lost = lost
        self._stats.lost(lost)
        if lost:
            self.get_logger().warning(
                f"{lost} of {received + lost} image frames were lost before the node took them in the last "
                f"{DROP_REPORT_PERIOD:.0f} s "
                "(best-effort images: set FASTDDS_BUILTIN_TRANSPORTS as docs/ros.md says, or "
                "qos_overrides.<image topic>.subscription.reliability: reliable)"
            )

    # ------------------------------------------------------------------ the model (worker thread)
    def _model_or_reason(self) -> tuple[Any, str]:
        """The model for the worker's next batch, built here on first use when lazy_model_load is
        set; None and why after a failed load."""
        if self._model is None and self._model_error is None:
            try:
                self._model = self._build_model(self.parameters.effective())
            except Exception as error:
                self._model_error = f"cannot load the {self._config.preset} model: {error}"
                self.get_logger().error(self._model_error)
        return self._model, "" if self._model is not None else self._model_error or "no model"

    # ------------------------------------------------------------------ standing instructions
    def _schedule_standing(self, frame: Frame | None) -> None:
        """Queue the standing instructions due on a frame, bound to it. Called for a new frame
        while the worker is idle, and by the worker after each batch for the newest frame, so
        tasks that are due together share one proposal pass and one batched query."""
        if frame is None or frame.error or frame.seq is None or not self._active:
            return
        now_ns = self.get_clock().now().nanoseconds
        for task in self._standing.due(frame.seq):
            self._submit(Job(id=task.id, text=task.text, image_stamp_ns=0, received=time.monotonic(),
                             reply=task.deliver, phrase=task.phrase, standing=task, bound=frame, bound_ns=now_ns),
                         bounded=False)

    def _on_runtime_change(self, names: set[str]) -> None:
        """Runtime settings applied outside the model: the interpreter's switch interval, and the
        standing_instructions parameter (one task per entry, results on `result`)."""
        if "gil_switch_interval" in names:
            sys.setswitchinterval(self.parameters["gil_switch_interval"])
        if not names & {"standing_instructions", "standing_rate"}:
            return
        try:
            for task in self._standing.tasks("parameter"):
                self._standing.remove(task)
            rate = self.parameters["standing_rate"]
            for k, text in enumerate(self.parameters["standing_instructions"]):
                self._standing.add(StandingTask(f"standing-{k}", text, False, rate, self._outputs.result,
                                                origin="parameter"))
        except Exception:
            self.get_logger().error(f"standing_instructions could not be applied:\n{traceback.format_exc()}")

    def _goal_problem(self, goal: Any) -> tuple[int, str] | None:
        """Why a Track goal cannot run (status, reason), or None."""
        with self._state_lock:
            if not self._active or self._worker is None:
                return SegmentationResult.NOT_ACTIVE, "the node is not active"
            probe = Job(id=goal.id, text=goal.text, image_stamp_ns=0, received=0.0, reply=lambda result: None)
            status, error = self._precheck(probe)
        if status is not None:
            return status, error
        for name in ("rate", "duration"):
            value = getattr(goal, name)
            if not math.isfinite(value) or value < 0 or value > 1e6:
                return SegmentationResult.BAD_INSTRUCTION, f"{name} must be a finite number >= 0, got {value}"
        running = [t for t in self._standing.tasks("action") if t.id != goal.id]
        if len(running) >= self._max_track_goals:
            return SegmentationResult.QUEUE_FULL, f"{len(running)} Track goals already running (max_track_goals)"
        return None

    # ------------------------------------------------------------------ diagnostics
    @guarded
    def _publish_diagnostics(self) -> None:
        with self._state_lock:
            state = "active" if self._active else "inactive" if self._configured else "unconfigured"
            worker = self._worker
        store = self._frames
        now = time.monotonic()
        newest, depth = store.buffer.newest(), store.depth.newest()
        if self._model is not None:
            model = "loaded"
        elif self._model_error:
            model = "failed to load"
        else:
            model = "deferred to the first instruction" if self._configured else "not loaded"
        max_age = self.parameters["max_image_age"]
        health = diagnostics.Health(
            name=f"{self.get_name()}: {self.get_fully_qualified_name()}",
            state=state, model=model, model_error=self._model_error or "", device=self._device,
            preset=self._config.preset if self._config is not None else self.get_parameter("preset").value,
            queue=worker.queued() if worker is not None else 0,
            max_queue=worker.max_queue if worker is not None else self.get_parameter("max_queue").value,
            frame_age=now - newest.received if newest is not None else None,
            frame_stamp_ns=newest.stamp_ns if newest is not None else None,
            depth_enabled=self._use_depth, depth_age=now - depth.received if depth is not None else None,
            camera_info=store.camera_info is not None,
            standing=len(self._standing.tasks("parameter")), goals=len(self._standing.tasks("action")),
            stale_after=max(max_age, 2.0) if max_age else 2.0, frames_lost_recently=self._recently_lost,
            stats=self._stats.snapshot(),
        )
        self._diagnostics_pub.publish(diagnostics.diagnostic_array(health, self.get_clock().now().to_msg()))


def main(args: list[str] | None = None) -> int:
    """Run the node until Ctrl-C / SIGTERM; with autostart it configures and activates itself."""
    rclpy.init(args=args)
    node = None
    try:
        node = SegmentationNode()
        # Service calls block an executor thread each while they wait (at most max_queue + 1 of
        # them), and so does each running Track goal.
        threads = parameters.valid_or_default("max_queue", node.get_parameter("max_queue").value) + 4
        threads += parameters.valid_or_default("max_track_goals", node.get_parameter("max_track_goals").value)
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
