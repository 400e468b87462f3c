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


def fill_answer(result: SegmentationResult, answer: Any, header: Any, with_labels: bool) -> tuple[np.ndarray, np.ndarray]:
    """Put a model Result (llmseg_model.modeling.outputs.Result) into `result`; returns the label
    array and the instance masks in the order of result.instances.

    Instances are the Result's objects (merged proposals), ordered best IoP first and numbered 1..N
    in the label image; each keeps its whole box, and its area counts the pixels it owns after
    overlaps went to better ones.
    """
    status = SegmentationResult.EMPTY if answer.empty else SegmentationResult.OK
    result.status, result.status_name = status, status_name(status)
    result.mask = conversions.mask_to_image(answer.mask, header)
    masks = np.asarray(answer.instance_masks, dtype=bool).reshape(-1, *answer.mask.shape)
    labels, order = conversions.label_image(masks, answer.instance_scores)
    if with_labels:
        result.instance_labels = conversions.labels_to_image(labels, header)
    areas = np.bincount(labels.ravel(), minlength=len(order) + 1)
    instances = []
    for rank, index in enumerate(order):
        proposals = [int(i) for i in answer.instances[index].proposal_indices]
        center_x, center_y, size_x, size_y = conversions.mask_box(masks[index])
        instances.append(Instance(
            label=rank + 1,
            proposal_indices=proposals,
            score=float(answer.instance_scores[index]),
            iou_score=float(answer.iou_scores[proposals[0]]),
            bbox=BoundingBox2D(center_x=center_x, center_y=center_y, size_x=size_x, size_y=size_y),
            area=int(areas[rank + 1]),
        ))
    result.instances = instances
    result.answer = answer.answer
    return labels, masks[order]


def timings(stages: dict[str, float]) -> list[StageTiming]:
    return [StageTiming(stage=stage, seconds=float(seconds)) for stage, seconds in stages.items()]
