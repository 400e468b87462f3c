"""gIoU / cIoU: hand-built cases, and equality with plain reference computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmseg_model.metrics import (
    IoUAccumulator,
    image_iou,
    intersection_union,
    proposal_overlaps,
)
from llmseg_model.modeling.proposals import encode_rles


def reference_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """Pixel by pixel, the way the definition reads."""
    inter = union = 0
    for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist()):
        if g == 255:
            continue
        inter += bool(p) and g == 1
        union += bool(p) or g == 1
    return inter, union


def lisa_scores(preds: list[np.ndarray], gts: list[np.ndarray]) -> tuple[float, float]:
    """LISA's validate(): intersectionAndUnion with ignore 255, acc_iou with the both-empty rule."""
    total_i = total_u = 0.0
    acc = 0.0
    for pred, gt in zip(preds, gts):
        output = pred.astype(np.int64).copy()
        target = gt.astype(np.int64)
        output[target == 255] = 255
        hit = output[output == target]
        area_i = np.histogram(hit, bins=2, range=(0, 1))[0]
        area_o = np.histogram(output, bins=2, range=(0, 1))[0]
        area_t = np.histogram(target, bins=2, range=(0, 1))[0]
        area_u = area_o + area_t - area_i
        iou = area_i / (area_u + 1e-5)
        iou[area_u == 0] += 1.0
        acc += iou[1]
        total_i += area_i[1]
        total_u += area_u[1]
    return acc / len(preds), total_i / (total_u + 1e-10)


def test_hand_built_cases():
    gt = np.zeros((4, 6), np.uint8)
    gt[1:3, 1:4] = 1  # 6 target pixels
    assert image_iou(gt == 1, gt) == 1.0
    assert image_iou(np.zeros_like(gt, bool), gt) == 0.0
    pred = np.zeros_like(gt, bool)
    pred[1:3, 2:5] = True  # 4 of 6 inside, 2 outside
    assert intersection_union(pred, gt) == (4, 8)
    assert image_iou(pred, gt) == 0.5
    # Both empty scores 1.0.
    assert image_iou(np.zeros((3, 3), bool), np.zeros((3, 3), np.uint8)) == 1.0
    # Prediction on an empty target scores 0.
    assert image_iou(np.ones((3, 3), bool), np.zeros((3, 3), np.uint8)) == 0.0


def test_ignore_pixels_are_excluded():
    gt = np.zeros((4, 4), np.uint8)
    gt[0, :2] = 1
    gt[3, :] = 255
    pred = np.zeros((4, 4), bool)
    pred[0, :2] = True
    pred[3, :] = True  # all inside ignore: does not count against the prediction
    assert intersection_union(pred, gt) == (2, 2)
    # A target-free image whose only predicted pixels are ignored is both-empty.
    gt2 = np.full((2, 2), 255, np.uint8)
    gt2[0, 0] = 0
    assert image_iou(np.array([[False, True], [True, True]]), gt2) == 1.0


def test_accumulator_hand_values():
    acc = IoUAccumulator()
    assert math.isnan(acc.giou) and math.isnan(acc.ciou)
    assert acc.add_counts(1, 2) == 0.5
    assert acc.add_counts(3, 4) == 0.75
    acc.add_counts(0, 0)  # both empty
    assert acc.giou == pytest.approx((0.5 + 0.75 + 1.0) / 3)
    assert acc.ciou == pytest.approx(4 / 6)
    assert acc.summary()["count"] == 3
    empty = IoUAccumulator()
    empty.add(np.zeros((2, 2), bool), np.zeros((2, 2), np.uint8))
    assert empty.ciou == 1.0 and empty.giou == 1.0


def test_random_masks_match_references():
    rng = np.random.default_rng(0)
    preds, gts = [], []
    acc = IoUAccumulator()
    for k in range(40):
        h, w = rng.integers(3, 12, size=2)
        gt = (rng.random((h, w)) < 0.4).astype(np.uint8)
        gt[rng.random((h, w)) < 0.15] = 255
        pred = rng.random((h, w)) < (0.0 if k % 10 == 0 else 0.5)
        if k % 13 == 0:
            gt[gt == 1] = 0  # some target-free images
        assert intersection_union(pred, gt) == reference_counts(pred, gt)
        acc.add(pred, gt)
        preds.append(pred)
        gts.append(gt)
    inter_u = [reference_counts(p, g) for p, g in zip(preds, gts)]
    giou_ref = np.mean([1.0 if u == 0 else i / u for i, u in inter_u])
    ciou_ref = sum(i for i, _ in inter_u) / sum(u for _, u in inter_u)
    assert acc.giou == pytest.approx(giou_ref, abs=1e-12)
    assert acc.ciou == pytest.approx(ciou_ref, abs=1e-12)
    giou_lisa, ciou_lisa = lisa_scores(preds, gts)
    assert acc.giou == pytest.approx(giou_lisa, abs=1e-4)
    assert acc.ciou == pytest.approx(ciou_lisa, abs=1e-6)


def test_integer_predictions_and_merge():
    gt = np.array([[1, 0], [255, 1]], np.uint8)
    assert intersection_union(np.array([[255, 0], [0, 7]], np.uint8), gt) == (2, 2)
    a, b = IoUAccumulator(), IoUAccumulator()
    a.add_counts(1, 2)
    b.add_counts(2, 2)
    a.merge(b)
    assert a.count == 2 and a.ciou == 0.75


@pytest.mark.parametrize(
    "pred, gt, message",
    [
        (np.zeros((2, 3), bool), np.zeros((3, 2), np.uint8), "differ in size"),
        (np.zeros((2, 2), np.float32), np.zeros((2, 2), np.uint8), "threshold"),
        (np.zeros((2, 2), bool), np.full((2, 2), 2, np.uint8), "found \\[2\\]"),
        (np.zeros((2, 2, 1), bool), np.zeros((2, 2, 1), np.uint8), "2-D"),
    ],
)
def test_bad_input_is_a_clear_error(pred, gt, message):
    with pytest.raises(ValueError, match=message):
        image_iou(pred, gt)


def test_invalid_counts():
    with pytest.raises(ValueError):
        IoUAccumulator().add_counts(3, 2)


def test_proposal_overlaps_match_dense_reference():
    rng = np.random.default_rng(1)
    gt = (rng.random((17, 23)) < 0.3).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.1] = 255
    masks = rng.random((5, 17, 23)) < 0.4
    inter, areas, target = proposal_overlaps(encode_rles(masks), gt)
    valid = gt != 255
    assert target == int((gt == 1).sum())
    for k, mask in enumerate(masks):
        assert inter[k] == int((mask & (gt == 1)).sum())
        assert areas[k] == int((mask & valid).sum())
    assert proposal_overlaps([], gt)[0].shape == (0,)
    with pytest.raises(ValueError, match="differs"):
        proposal_overlaps(encode_rles(masks[:, :5, :5]), gt)


def test_resize1024_scoring_is_the_published_reasonseg_one():
    """training.py validate_threshold: prediction and ground truth nearest-resized to 1024x1024,
    then ignore-aware intersection / union; native scoring differs on non-square images."""
    import torch
    import torch.nn.functional as F

    from llmseg_model.metrics import scored_counts

    rng = np.random.default_rng(5)
    pred = rng.random((37, 53)) > 0.5
    gt = (rng.random((37, 53)) > 0.6).astype(np.uint8)
    gt[:5, :5] = 255

    def published(p, g):
        p = F.interpolate(torch.from_numpy(p.astype(np.uint8))[None, None].float(), size=(1024, 1024), mode="nearest")[0, 0]
        g = F.interpolate(torch.from_numpy(g)[None, None].float(), size=(1024, 1024), mode="nearest")[0, 0]
        p = p.clone()
        p[g == 255] = 255  # intersectionAndUnionGPU: output[target == ignore] = ignore
        inter = int(((p == 1) & (g == 1)).sum())
        return inter, int((p == 1).sum() + (g == 1).sum()) - inter

    assert scored_counts(pred, gt, "resize1024") == published(pred, gt)
    assert scored_counts(pred, gt, "native") == intersection_union(pred, gt) != published(pred, gt)
    with pytest.raises(ValueError, match="scoring"):
        scored_counts(pred, gt, "1024")
