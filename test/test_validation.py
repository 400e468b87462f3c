"""Validation during training: the published 1024x1024 scoring, per-process shares that add up to a
single-process run, and gIoU / cIoU from the counts."""

import numpy as np
import pytest
import torch

from llmseg_model.data.procedural import ProceduralConfig, ProceduralDataset
from llmseg_model.validation import ValidationCounts, resize_nearest, score_pair, validate


@pytest.mark.parametrize("shape", [(48, 64), (1500, 700), (1024, 1024), (3, 5)])
def test_resize_nearest_picks_the_pixels_torch_interpolate_picks(shape):
    mask = np.random.default_rng(0).integers(0, 3, shape).astype(np.uint8)
    expected = torch.nn.functional.interpolate(torch.from_numpy(mask)[None, None].float(), size=(1024, 1024), mode="nearest")
    np.testing.assert_array_equal(resize_nearest(mask, 1024), expected[0, 0].numpy().astype(np.uint8))


def test_scores_at_1024_differ_from_native_and_leave_ignore_pixels_out():
    gt = np.zeros((3, 5), np.uint8)
    gt[0, :2] = 1
    gt[2, 4] = 255
    pred = np.zeros((3, 5), bool)
    pred[0, :3] = True
    pred[2, 4] = True  # on an ignore pixel: neither hit nor miss
    assert score_pair(pred, gt, "native") == (2, 3)
    inter, union = score_pair(pred, gt, "resize1024")
    assert union == int(np.ceil(1024 / 3)) * (3 * 1024 // 5 + 1) and inter < union
    assert score_pair(np.zeros((3, 5), bool), np.zeros((3, 5), np.uint8), "resize1024") == (0, 0)
    with pytest.raises(ValueError, match="scoring"):
        score_pair(pred, gt, "other")


def test_counts_give_giou_and_ciou():
    counts = ValidationCounts.merged([ValidationCounts([1, 0], [2, 0]), ValidationCounts([3], [4])])
    assert counts.giou() == pytest.approx((0.5 + 1.0 + 0.75) / 3) and counts.ciou() == pytest.approx(4 / 6)


def test_process_shares_add_up_to_one_run(untrained_tiny_model):
    samples = ProceduralDataset("val", 1, ProceduralConfig(height=96, width=96, instructions_per_scene=3))
    whole = validate(untrained_tiny_model, samples, "native", progress=False)
    shares = [validate(untrained_tiny_model, samples, "native", rank, 2, progress=False) for rank in (0, 1)]
    assert [len(s.unions) for s in shares] == [2, 1]
    merged = ValidationCounts.merged(shares)
    assert sorted(zip(merged.intersections, merged.unions)) == sorted(zip(whole.intersections, whole.unions))
