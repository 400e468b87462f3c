"""SegmentationResult messages: statuses by name, and a model Result packed to fit the transport.

Instances travel as one label image plus a box and scores each (vision_msgs Detection2D style),
not as one full-size mask each: a 1280x720 result with 50 instances is then ~1.8 MB (union mask +
label image) instead of ~46 MB, inside the shared-memory segments the docs recommend.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmseg_interfaces.msg import BoundingBox2D, Instance, SegmentationResult, StageTiming
from llmseg_ros import conversions

STATUS_NAMES = ("OK", "EMPTY", "NO_IMAGE", "STALE_IMAGE", "BAD_IMAGE", "BAD_INSTRUCTION", "MODEL_ERROR",
                "NOT_ACTIVE", "QUEUE_FULL")


def status_name(status: int, names: tuple[str, ...] = STATUS_NAMES) -> str:
    """The constant's name for a SegmentationResult status value (e.g. 2 -> 'NO_IMAGE'); `names`:
    the constants to look in (the depth statuses are a second set)."""
    for name in names:
        if getattr(SegmentationResult, name) == status:
            return name
    return str(status)


def status_result(instruction_id: str, text: str, status: int, error: str = "", header: Any = None) -> SegmentationResult:
    """A result that carries only a status (and the frame's header when there was one)."""
    result = SegmentationResult(instruction_id=instruction_id, instruction_text=text, status=status,
                                status_name=status_name(status), error=error, depth_status_name="DEPTH_OFF")
    if header is not None:
        result.header = header
    return result


def fill_answer(result: SegmentationResult, answer: Any, header: Any, with_labels: bool) -> np.ndarray:
    """Put a model Result (llmseg_model.modeling.outputs.Result) into `result`; returns its label
    image.

    Instances are the Result's objects (merged proposals), best IoP first, numbered 1..N in the
    label image, where an overlap belongs to the better one; each keeps its whole box, and its
    area counts the pixels it owns. Nothing here decodes a per-object mask: the label image, the
    union and the boxes come with the Result.
    """
    status = SegmentationResult.EMPTY if answer.empty else SegmentationResult.OK
    result.status, result.status_name = status, status_name(status)
    result.mask = conversions.mask_to_image(answer.mask, header)
    labels = answer.labels
    if with_labels:
        result.instance_labels = conversions.labels_to_image(labels, header)
    instances = []
    for rank, instance in enumerate(answer.instances):
        proposals = [int(i) for i in instance.proposal_indices]
        x, y, width, height = (float(v) for v in instance.box)  # XYWH over whole pixels
        instances.append(Instance(
            label=rank + 1,
            proposal_indices=proposals,
            score=float(instance.score),
            iou_score=float(answer.iou_scores[proposals[0]]),
            bbox=BoundingBox2D(center_x=x + width / 2, center_y=y + height / 2, size_x=width, size_y=height),
            area=int(answer.label_areas[rank]),
        ))
    result.instances = instances
    result.answer = answer.answer
    return labels


def timings(stages: dict[str, float]) -> list[StageTiming]:
    return [StageTiming(stage=stage, seconds=float(seconds)) for stage, seconds in stages.items()]
