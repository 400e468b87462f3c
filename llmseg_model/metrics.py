"""gIoU and cIoU exactly as ReasonSeg (LISA) defines them.

For one image with prediction P and ground truth G (ignore pixels, 255, removed from both):
    I = |P & G|,  U = |P | G|,  IoU = I / U, and IoU = 1.0 when U == 0 (both empty).
gIoU is the mean of the per-image IoUs; cIoU is sum(I) / sum(U) over the whole set.

Two scorings (`scored_counts`): "native" scores at the image's own resolution, as LISA and the
published LLM-Seg40K script (validate_llmseg.py) do; "resize1024" first resizes prediction and
ground truth to 1024x1024 with nearest neighbour, as the published ReasonSeg evaluation
(training.py validate_threshold) does, which weighs small images up and changes cIoU. The
functions below never resize on their own: prediction and ground truth must have the same (H, W).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from llmseg_model.config import SCORINGS
from llmseg_model.data.sample import IGNORE_INDEX
from llmseg_model.modeling.rle import coco_rle


def check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a prediction / ground-truth pair; return (bool prediction, uint8 ground truth).

    pred: (H, W) bool or integer (non-zero = foreground). Floats are refused so that a soft score
    map is never silently treated as a mask. gt: (H, W) integer with values in {0, 1, 255}.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.ndim != 2 or gt.ndim != 2:
        raise ValueError(f"prediction and ground truth must be 2-D (H, W), got {pred.shape} and {gt.shape}")
    if pred.shape != gt.shape:
        raise ValueError(
            f"prediction {pred.shape} and ground truth {gt.shape} differ in size; "
            "metrics are computed at the image's native resolution, so resize the prediction first"
        )
    if pred.dtype != bool:
        if not np.issubdtype(pred.dtype, np.integer):
            raise ValueError(f"prediction must be a bool or integer mask, got dtype {pred.dtype}; threshold it first")
        pred = pred != 0
    if not np.issubdtype(gt.dtype, np.integer) and gt.dtype != bool:
        raise ValueError(f"ground truth must be an integer mask in {{0, 1, 255}}, got dtype {gt.dtype}")
    gt = gt.astype(np.uint8, copy=False)
    if np.any((gt > 1) & (gt != IGNORE_INDEX)):
        bad = sorted(set(np.unique(gt).tolist()) - {0, 1, IGNORE_INDEX})
        raise ValueError(f"ground truth may only hold 0, 1 and {IGNORE_INDEX}; found {bad}")
    return pred, gt


def intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """Foreground intersection and union of one image, ignore pixels excluded."""
    pred, gt = check_pair(pred, gt)
    valid_pred = pred & (gt != IGNORE_INDEX)
    target = gt == 1
    intersection = int(np.count_nonzero(valid_pred & target))
    union = int(np.count_nonzero(valid_pred)) + int(np.count_nonzero(target)) - intersection
    return intersection, union


def resize_nearest(mask: np.ndarray, size: int = 1024) -> np.ndarray:
    """(H, W) integer mask -> (size, size) with torch's nearest rule (the published evaluation's)."""
    tensor = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8))[None, None].float()
    return F.interpolate(tensor, size=(size, size), mode="nearest")[0, 0].numpy().astype(np.uint8)


def scored_counts(pred: np.ndarray, gt: np.ndarray, scoring: str = "native") -> tuple[int, int]:
    """Intersection and union of one image under a scoring of SCORINGS."""
    if scoring == "native":
        return intersection_union(pred, gt)
    if scoring == "resize1024":
        pred, gt = check_pair(pred, gt)
        return intersection_union(resize_nearest(pred) != 0, resize_nearest(gt))
    raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")


def iou_from_counts(intersection: int, union: int) -> float:
    """Per-image IoU; an image where prediction and target are both empty scores 1.0."""
    if intersection < 0 or union < intersection:
        raise ValueError(f"invalid counts: intersection {intersection}, union {union}")
    return 1.0 if union == 0 else intersection / union


def image_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of one prediction against one ground truth (ignore pixels excluded, both-empty = 1)."""
    return iou_from_counts(*intersection_union(pred, gt))


@dataclass
class IoUAccumulator:
    """Collects per-image intersection / union counts and reports gIoU and cIoU."""

    intersections: list[int] = field(default_factory=list)
    unions: list[int] = field(default_factory=list)

    def add(self, pred: np.ndarray, gt: np.ndarray) -> float:
        """Score one image and return its IoU."""
        return self.add_counts(*intersection_union(pred, gt))

    def add_counts(self, intersection: int, union: int) -> float:
        iou = iou_from_counts(intersection, union)
        self.intersections.append(int(intersection))
        self.unions.append(int(union))
        return iou

    def merge(self, other: "IoUAccumulator") -> None:
        self.intersections += other.intersections
        self.unions += other.unions

    @property
    def count(self) -> int:
        return len(self.unions)

    @property
    def ious(self) -> np.ndarray:
        return np.array([iou_from_counts(i, u) for i, u in zip(self.intersections, self.unions)], dtype=np.float64)

    @property
    def giou(self) -> float:
        """Mean per-image IoU; NaN before anything was added."""
        return float(self.ious.mean()) if self.count else math.nan

    @property
    def ciou(self) -> float:
        """Cumulative intersection over cumulative union; NaN before anything was added.

        When every image is empty in both prediction and target (total union 0) the answer is
        perfect and this returns 1.0, consistent with the per-image rule (LISA's formula would
        give 0 there, an artefact of its epsilon).
        """
        if not self.count:
            return math.nan
        total_union = sum(self.unions)
        return 1.0 if total_union == 0 else sum(self.intersections) / total_union

    def summary(self) -> dict[str, float | int]:
        return {"giou": self.giou, "ciou": self.ciou, "count": self.count}


def proposal_overlaps(rles: list[dict], gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Intersection with the target and valid area of each RLE proposal, ignore pixels excluded.

    Works on COCO RLEs so K full-resolution proposals never need decoding at once.
    Returns (intersections (K,), proposal areas outside ignore (K,), target area).
    """
    gt = np.asarray(gt)
    if gt.ndim != 2:
        raise ValueError(f"ground truth must be 2-D (H, W), got {gt.shape}")
    gt = gt.astype(np.uint8, copy=False)
    height, width = gt.shape
    for rle in rles:
        if tuple(rle["size"]) != (height, width):
            raise ValueError(f"proposal size {tuple(rle['size'])} differs from ground truth {(height, width)}")
    target_area = int(np.count_nonzero(gt == 1))
    if not rles:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), target_area
    rles = [coco_rle(r) for r in rles]
    target_rle = mask_utils.encode(np.asfortranarray((gt == 1).astype(np.uint8)))
    ignore_rle = mask_utils.encode(np.asfortranarray((gt == IGNORE_INDEX).astype(np.uint8)))
    areas = mask_utils.area(rles).astype(np.int64)
    intersections = np.array([mask_utils.area(mask_utils.merge([r, target_rle], intersect=True)) for r in rles], np.int64)
    ignored = np.array([mask_utils.area(mask_utils.merge([r, ignore_rle], intersect=True)) for r in rles], np.int64)
    return intersections, areas - ignored, target_area
