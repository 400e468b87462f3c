"""The benchmark's baselines: answers chosen from the proposals with the ground truth in hand (what
a perfect IoP head or a perfect single pick would score) or at random, so a report shows how much
of the score the proposals allow."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from pycocotools import mask as mask_utils

from llmseg_model.modeling.rle import coco_rle

if TYPE_CHECKING:
    from llmseg_model.modeling.proposals import Proposals


def oracle_iop_selection(proposals: Proposals, gt: np.ndarray, threshold: float) -> list[int]:
    """Indices of the proposals lying mostly inside the target (IoP >= threshold, ignore excluded)."""
    from llmseg_model.metrics import proposal_overlaps

    inter, areas, _ = proposal_overlaps(proposals.rles, gt)
    iop = np.divide(inter, areas, out=np.zeros(len(areas)), where=areas > 0)
    return [int(i) for i in np.flatnonzero((areas > 0) & (iop >= threshold))]


def oracle_iou_selection(proposals: Proposals, gt: np.ndarray) -> list[int]:
    """The single proposal with the best IoU, or nothing when no proposal touches the target."""
    from llmseg_model.metrics import proposal_overlaps

    inter, areas, target = proposal_overlaps(proposals.rles, gt)
    if not len(inter) or inter.max() == 0:
        return []
    union = areas + target - inter
    iou = inter / np.maximum(union, 1)
    return [int(np.argmax(iou))]


def random_selection(proposals: Proposals, rng: np.random.Generator, prob: float) -> list[int]:
    """Every proposal kept with probability `prob` (a uniformly random subset at 0.5)."""
    return [int(i) for i in np.flatnonzero(rng.random(proposals.count) < prob)]


def union_mask(proposals: Proposals, indices: Sequence[int]) -> np.ndarray:
    """(H, W) bool union of some proposals, merged as RLE so only one full mask is decoded."""
    if not len(indices):
        return np.zeros(proposals.image_size, bool)
    rles = [coco_rle(proposals.rles[i]) for i in indices]
    return mask_utils.decode(mask_utils.merge(rles, intersect=False)).astype(bool)
