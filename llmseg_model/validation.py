"""Validation during training: gIoU / cIoU of the model on held-out samples, for keeping the best
checkpoint as the published training does (after every epoch, on ReasonSeg val).

Each sample is asked its first text (the published validation uses the first sentence of each
image), as a phrase or a sentence as the sample says, and the answer is the model's own selection. Scoring is either `native` (the image's
size, as llmseg_model.metrics) or `resize1024`: prediction and ground truth are first resized to
1024x1024 with nearest neighbour, as the published ReasonSeg validation does; ignore pixels (255)
are left out and an image with an empty prediction and an empty target scores 1, either way.
Work is split across processes by index; the caller sums the counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from llmseg_model.data.sample import SegSample
from llmseg_model.metrics import intersection_union, iou_from_counts

PUBLISHED_SIZE = 1024


def resize_nearest(mask: np.ndarray, size: int) -> np.ndarray:
    """(H, W) -> (size, size) by nearest neighbour, picking source row floor(i * H / size) as
    torch's `interpolate(mode="nearest")` does."""
    height, width = mask.shape
    rows = np.floor(np.arange(size) * (height / size)).astype(np.int64).clip(0, height - 1)
    cols = np.floor(np.arange(size) * (width / size)).astype(np.int64).clip(0, width - 1)
    return mask[rows[:, None], cols[None, :]]


def score_pair(pred: np.ndarray, gt: np.ndarray, scoring: str) -> tuple[int, int]:
    """(intersection, union) of one prediction against its ground truth under `scoring`."""
    if scoring == "resize1024":
        pred = resize_nearest(np.asarray(pred, bool), PUBLISHED_SIZE)
        gt = resize_nearest(np.asarray(gt), PUBLISHED_SIZE)
    elif scoring != "native":
        raise ValueError(f"scoring must be resize1024 or native, got {scoring!r}")
    return intersection_union(pred, gt)


@dataclass
class ValidationCounts:
    """Per-sample counts; several processes' counts add up by concatenation."""

    intersections: list[int]
    unions: list[int]

    def giou(self) -> float:
        ious = [iou_from_counts(i, u) for i, u in zip(self.intersections, self.unions)]
        return float(np.mean(ious)) if ious else 0.0

    def ciou(self) -> float:
        total = sum(self.unions)
        return sum(self.intersections) / total if total else 1.0

    @classmethod
    def merged(cls, parts: Sequence["ValidationCounts"]) -> "ValidationCounts":
        return cls([i for p in parts for i in p.intersections], [u for p in parts for u in p.unions])


def validate(
    model,
    samples: Sequence[SegSample],
    scoring: str = "resize1024",
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> ValidationCounts:
    """Score `model` (an LLMSeg: prepare + query) on this process's share of `samples`."""
    counts = ValidationCounts([], [])
    indices = range(rank, len(samples), world_size)
    for index in tqdm(indices, desc="validate", unit="sample", disable=not progress):
        sample = samples[index]
        if not sample.texts:
            raise ValueError(f"validation sample {sample.image_id} has no text")
        image = sample.load_image()
        gt = sample.load_mask()
        result = model.query(model.prepare(image), sample.texts[0], phrase=sample.phrase)
        inter, union = score_pair(result.mask, gt, scoring)
        counts.intersections.append(inter)
        counts.unions.append(union)
    return counts
