"""LLM-Seg training losses: answer-text CE, IoU alignment (KL) and IoP regression."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmseg_model.config import IOP_REDUCTIONS, LossConfig


@dataclass
class LossOutput:
    total: torch.Tensor
    ce: torch.Tensor
    align: torch.Tensor
    iop: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("total", "ce", "align", "iop")}


def alignment_loss(cosine: torch.Tensor, gt_iou: torch.Tensor, valid: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(gt_iou / T) || softmax(cosine / T)) over the valid proposals, mean over the batch."""
    neg_inf = torch.finfo(cosine.dtype).min
    target = F.softmax((gt_iou / temperature).masked_fill(~valid, neg_inf), dim=-1)
    log_pred = F.log_softmax((cosine / temperature).masked_fill(~valid, neg_inf), dim=-1)
    terms = torch.where(valid, target * (torch.log(target.clamp_min(1e-12)) - log_pred), torch.zeros_like(target))
    has_any = valid.any(dim=-1)
    return terms.sum(-1)[has_any].mean() if has_any.any() else cosine.sum() * 0.0


def iop_loss(pred: torch.Tensor, gt_iop: torch.Tensor, valid: torch.Tensor, weight: float, reduction: str = "row") -> torch.Tensor:
    """exp(gt - 1)-weighted MSE, times `weight`: errors on proposals inside the target cost most.

    "row": mean over each row's valid proposals, then over rows with any; "pooled": mean over
    every valid proposal of the batch."""
    valid_f = valid.float()
    terms = torch.exp(gt_iop - 1.0) * valid_f * (pred - gt_iop) ** 2
    if reduction == "pooled":
        return weight * terms.sum() / valid_f.sum().clamp_min(1.0)
    if reduction != "row":
        raise ValueError(f"loss.iop_reduction must be one of {IOP_REDUCTIONS}, got {reduction!r}")
    counts = valid_f.sum(-1)
    has_any = counts > 0
    if not has_any.any():
        return pred.sum() * 0.0
    return weight * (terms.sum(-1)[has_any] / counts[has_any]).mean()


def llmseg_loss(
    ce: torch.Tensor,
    cosine: torch.Tensor,
    pred_iop: torch.Tensor,
    gt_iou: torch.Tensor,
    gt_iop: torch.Tensor,
    valid: torch.Tensor,
    config: LossConfig,
) -> LossOutput:
    """Total = CE + align + regression, each with its configured weight."""
    cosine = cosine.masked_fill(~valid, 0.0)  # the model marks padding -inf; keep the math finite
    align = alignment_loss(cosine, gt_iou, valid, config.temperature)
    regression = iop_loss(pred_iop, gt_iop, valid, config.iop_weight, config.iop_reduction)
    total = config.ce_weight * ce + config.align_weight * align + regression
    return LossOutput(total=total, ce=ce, align=align, iop=regression)


def proposal_targets(proposal_masks: torch.Tensor, gt: torch.Tensor, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-proposal IoU and IoP against a ground truth, ignore pixels excluded.

    proposal_masks (K, H, W) bool, gt (H, W) uint8 with 1 target / 0 background / ignore_index.
    """
    keep = gt != ignore_index
    target = (gt == 1) & keep
    props = proposal_masks & keep
    inter = (props & target).flatten(1).sum(-1).float()
    prop_area = props.flatten(1).sum(-1).float()
    union = prop_area + target.sum().float() - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))
    iop = torch.where(prop_area > 0, inter / prop_area.clamp_min(1), torch.zeros_like(inter))
    return iou, iop
