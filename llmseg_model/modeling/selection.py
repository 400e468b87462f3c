"""The threshold rule that turns per-proposal scores into the answer.

Union of every proposal whose IoP passes the threshold: a part of the target scores high IoP, so
multi-instance targets come out whole; an empty selection is reported, never hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmseg_model.config import SelectionConfig


@dataclass
class Selection:
    indices: np.ndarray  # (N,) selected proposal indices, best IoP first
    scores: np.ndarray  # (N,) their IoP


def select_proposals(iou: np.ndarray, iop: np.ndarray, config: SelectionConfig) -> Selection:
    """iou, iop: (K,) scores of the valid proposals."""
    iou = np.asarray(iou, dtype=np.float32)
    iop = np.asarray(iop, dtype=np.float32)
    if iou.shape != iop.shape or iou.ndim != 1:
        raise ValueError(f"iou and iop must be 1-D of one length, got {iou.shape} and {iop.shape}")
    chosen = np.flatnonzero(iop > config.iop_threshold)
    if chosen.size == 0 and iop.size and config.fallback_min_iop <= 1.0:
        best = int(np.argmax(iou))
        if iop[best] >= config.fallback_min_iop:
            chosen = np.array([best])
    chosen = chosen[np.argsort(-iop[chosen], kind="stable")][: config.max_instances]
    return Selection(indices=chosen.astype(np.int64), scores=iop[chosen])


def validate_selection_config(config: SelectionConfig) -> None:
    """Raise ValueError for settings the rule cannot use (e.g. from a ROS parameter)."""
    if not 0.0 <= config.iop_threshold < 1.0:
        raise ValueError(f"iop_threshold must be in [0, 1), got {config.iop_threshold}")
    if config.fallback_min_iop < 0.0:
        raise ValueError(f"fallback_min_iop must be >= 0 (> 1 disables it), got {config.fallback_min_iop}")
    if config.max_instances < 1:
        raise ValueError(f"max_instances must be >= 1, got {config.max_instances}")
