import math

import pytest
import torch

from llmseg_model.config import LossConfig
from llmseg_model.modeling.losses import alignment_loss, iop_loss, llmseg_loss, proposal_targets


def test_alignment_loss_is_kl_of_tempered_softmaxes():
    cos = torch.tensor([[0.9, 0.1, -0.2, 0.0]])
    gt = torch.tensor([[0.8, 0.0, 0.1, 0.0]])
    valid = torch.tensor([[True, True, True, False]])
    t = 0.05
    p = torch.softmax(gt[0, :3] / t, 0)
    q = torch.log_softmax(cos[0, :3] / t, 0)
    expected = float((p * (p.log() - q)).sum())
    assert math.isclose(float(alignment_loss(cos, gt, valid, t)), expected, rel_tol=1e-5)
    # matching scores give ~zero loss; padding never matters
    assert float(alignment_loss(gt, gt, valid, t)) < 1e-6


def test_iop_loss_weights_errors_inside_the_target_more():
    valid = torch.ones(1, 2, dtype=torch.bool)
    inside = iop_loss(torch.tensor([[0.5, 0.0]]), torch.tensor([[1.0, 0.0]]), valid, 50.0, "pooled")
    outside = iop_loss(torch.tensor([[0.0, 0.5]]), torch.tensor([[0.0, 0.0]]), valid, 50.0, "pooled")
    assert math.isclose(float(inside), 50 * 0.25 / 2, rel_tol=1e-6)
    assert math.isclose(float(outside), 50 * math.exp(-1) * 0.25 / 2, rel_tol=1e-6)


def test_total_is_weighted_sum_and_backpropagates():
    cos = torch.randn(2, 5, requires_grad=True)
    iop = torch.rand(2, 5, requires_grad=True)
    valid = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = llmseg_loss(torch.tensor(0.7), cos.masked_fill(~valid, float("-inf")), iop, torch.rand(2, 5), torch.rand(2, 5), valid, LossConfig())
    assert math.isclose(out.total.item(), (out.ce + out.align + out.iop).item(), rel_tol=1e-6)
    out.total.backward()
    assert torch.isfinite(cos.grad).all() and cos.grad[0, 3:].abs().sum() == 0


def test_proposal_targets_exclude_ignore_pixels():
    gt = torch.zeros(4, 4, dtype=torch.uint8)
    gt[:2, :2] = 1
    gt[3, 3] = 255
    props = torch.zeros(3, 4, 4, dtype=torch.bool)
    props[0, :2, :2] = True  # exact
    props[1, 0, 0] = True  # part of the target
    props[2, 3, 3] = True  # only an ignore pixel
    iou, iop = proposal_targets(props, gt)
    assert iou.tolist() == [1.0, 0.25, 0.0]
    assert iop.tolist() == [1.0, 1.0, 0.0]


def test_iop_row_reduction_is_the_published_per_round_mean():
    """model/loss.py iou_regression_loss: 50 * mean over one round's K proposals, then the mean
    over rounds; "pooled" averages over every valid proposal of the batch instead."""
    pred, gt = torch.rand(2, 6), torch.rand(2, 6)
    valid = torch.tensor([[True] * 2 + [False] * 4, [True] * 6])

    def published(p, g):
        return 50.0 * (torch.exp(g - 1.0) * (p - g) ** 2).mean()

    rows = [published(pred[0, :2], gt[0, :2]), published(pred[1], gt[1])]
    assert math.isclose(float(iop_loss(pred, gt, valid, 50.0, "row")), float(sum(rows) / 2), rel_tol=1e-6)
    pooled = 50.0 * (torch.exp(gt - 1.0) * (pred - gt) ** 2)[valid].mean()
    assert math.isclose(float(iop_loss(pred, gt, valid, 50.0, "pooled")), float(pooled), rel_tol=1e-6)
    with pytest.raises(ValueError, match="iop_reduction"):
        iop_loss(pred, gt, valid, 50.0, "sum")
