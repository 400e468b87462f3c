"""What `LLMSeg.prepare` and `LLMSeg.query` return.

`FrameFeatures` holds everything computed once per image (proposals, mask embeddings, the LLaVA
image tokens, the KV cache of the prompt up to the question and the fusion's proposal tokens) so
that several instructions on one frame cost one proposal pass and one short forward each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from llmseg_model.modeling.instances import Instance, instance_masks
from llmseg_model.modeling.proposals import Proposals
from llmseg_model.modeling.vlm import PromptPrefix


@dataclass
class FrameFeatures:
    """Per-image state shared by every query on that image."""

    image_size: tuple[int, int]  # (height, width) of the original image
    proposals: Proposals
    mask_embeddings: torch.Tensor  # (K, D), rows past proposals.count are padding
    image_features: torch.Tensor  # LLaVA vision tower + projector output, (1, N, hidden)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per prepare stage
    prefix: PromptPrefix | None = None  # the prompt before the question, run once (None: not cached)
    # The fusion's proposal tokens before they meet <SEG> (1, K, dim), run once (None: each query
    # runs the whole fusion; also when there is no proposal).
    proposal_tokens: torch.Tensor | None = None


@dataclass
class Result:
    """The answer to one instruction on one frame."""

    # (H, W) uint8 (uint16 beyond 255 objects): 0 outside the answer, k where instances[k-1] owns the
    # pixel; where objects overlap the better one (earlier) owns it.
    labels: np.ndarray
    label_areas: np.ndarray  # (M,) int64 pixels each object owns in `labels` (its area less overlaps)
    proposal_indices: np.ndarray  # (N,) int, the selected proposals (indices into the frame's), best IoP first
    proposal_scores: np.ndarray  # (N,) float, their IoP scores
    iou_scores: np.ndarray  # (K_valid,) float, IoU-head score of every proposal
    iop_scores: np.ndarray  # (K_valid,) float, IoP-head score of every proposal
    answer: str  # the LLM's answer text
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, prepare included
    instances: list[Instance] = field(default_factory=list)  # the objects, best score first: RLE, box, score, proposals

    @cached_property
    def mask(self) -> np.ndarray:
        """(H, W) bool, the union of the selected proposals: every labelled pixel."""
        return self.labels > 0

    @cached_property
    def instance_scores(self) -> np.ndarray:
        """(M,) float32, each object's best IoP score, in the order of `instances`."""
        return np.array([instance.score for instance in self.instances], np.float32)

    @cached_property
    def instance_masks(self) -> np.ndarray:
        """(M, H, W) bool, each object's whole mask, in the order of `instances`. Decoded on first use:
        the union and the label image come from the masks' runs, and at camera resolutions the
        decoded masks cost more than the rest of the selection."""
        return instance_masks(self.instances, self.labels.shape)

    @property
    def empty(self) -> bool:
        """True when no proposal was selected: the target was not found."""
        return len(self.proposal_indices) == 0
