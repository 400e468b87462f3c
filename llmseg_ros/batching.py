"""What the worker thread hands the model: the jobs of a batch, and the model calls they need.

A `Job` is one instruction on its way to the worker; a `Member` is one job of a batch with the
seconds it spent per stage. `query_jobs` runs one `LLMSeg.query_batch` for a batch and keeps one
refused instruction from spoiling the others; no ROS node state is touched here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from sensor_msgs.msg import CompressedImage, Image

from llmseg_interfaces.msg import SegmentationResult
from llmseg_ros import conversions
from llmseg_ros.frames import Frame
from llmseg_ros.standing import StandingTask


@dataclass(eq=False)
class Job:
    """One instruction on its way to the worker."""

    id: str
    text: str
    image_stamp_ns: int  # 0: the newest frame
    received: float  # time.monotonic() at arrival
    reply: Callable[[SegmentationResult], None]
    phrase: bool = False
    image: Frame | None = None  # the Segment service's own image
    invalid: tuple[int, str] | None = None  # a status found while reading the message
    bound: Frame | None = None  # the newest frame when it arrived (frame_binding: arrival)
    bound_ns: int | None = None  # ROS time at arrival when bound then; None: bound when the worker takes it
    standing: StandingTask | None = None  # the standing instruction this answers once


@dataclass(eq=False)
class Member:
    """One job of a batch: the seconds it spent per stage, and whether it got its answer."""

    job: Job
    stages: dict[str, float]
    joined_late: bool = False  # taken after the frame's proposal pass, so it did not wait for it
    replied: bool = False


def apply_runtime(model: Any, runtime: dict[str, Any]) -> None:
    """The selection and instance settings that may change while the node runs, set on the model
    before each batch (a parameter change applies to the next batch)."""
    selection = model.config.selection
    selection.iop_threshold = runtime["selection.iop_threshold"]
    selection.fallback_min_iop = runtime["selection.fallback_min_iop"]
    selection.max_instances = runtime["selection.max_instances"]
    model.config.instances.iou_threshold = runtime["instances.iou_threshold"]
    model.config.instances.containment_threshold = runtime["instances.containment_threshold"]
    model.config.vlm.max_instruction_chars = runtime["max_instruction_chars"]


def query_jobs(model: Any, features: Any, jobs: list[Job]) -> tuple[list[Any], int]:
    """One LLMSeg.query_batch for the jobs: a model Result each, or why it has none: a str (its
    instruction was refused: BAD_INSTRUCTION) or a ValueError (the model refused the batch for
    another reason: MODEL_ERROR). A refused instruction (query_batch names its index) is taken
    out and the rest asked again, so one bad instruction spoils nothing for the others."""
    answers: list[Any] = [None] * len(jobs)
    pending = list(range(len(jobs)))
    while pending:
        try:
            batch = model.query_batch(features, [jobs[i].text for i in pending], [jobs[i].phrase for i in pending])
        except ValueError as invalid:
            index = getattr(invalid, "index", None)  # llmseg_model's InstructionError
            if index is not None and index < len(pending):
                answers[pending.pop(index)] = invalid.reason
                continue
            for i in pending:
                answers[i] = invalid
            return answers, 0
        for i, answer in zip(pending, batch):
            answers[i] = answer
        return answers, len(pending)
    return answers, 0


def decode(msg: Image | CompressedImage, runtime: dict[str, Any]) -> Any:
    """The frame's pixels as RGB, within the node's size limits (ValueError: BAD_IMAGE)."""
    limits = runtime["max_image_side"], runtime["max_image_bytes"]
    if isinstance(msg, CompressedImage):
        return conversions.compressed_to_rgb(msg, *limits)
    return conversions.image_to_rgb(msg, *limits)
