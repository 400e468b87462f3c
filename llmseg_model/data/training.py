"""Training records: a sample, its cached proposals, and the per-proposal IoU / IoP targets.

SAM never runs here: proposals come from a lookup (the on-disk proposal cache in practice). The
frozen backbones (DINOv2, the LLaVA vision tower) may run here too, once per image, with their
outputs memoised: then a training step costs only the trainable parts.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from llmseg_model.data.sample import IGNORE_INDEX, SegSample
from llmseg_model.losses import proposal_targets
from llmseg_model.proposals import Proposals

PIXEL_KEYS = ("dino_pixels", "llava_pixels")
FEATURE_KEYS = ("dino_features", "vision_states")


class TrainingSet(Dataset):
    """Items ready for `LLMSeg.forward`, one per sample.

    `proposals_for(sample)` returns that image's Proposals. Without `frozen`, items carry the
    backbones' input pixels (`preprocess(image) -> (dino_pixels, llava_pixels)`); with
    `frozen(image) -> (dino_features, vision_states)`, they carry the frozen outputs instead, and
    per-image work and per-sample targets are memoised (up to `memo_items` images), so only the
    first epoch pays for rendering, decoding and backbones. Memoisation lives in this process: use
    it with num_workers=0.
    """

    def __init__(
        self,
        samples: Sequence[SegSample],
        proposals_for: Callable[[SegSample], Proposals],
        top_k: int,
        preprocess: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]] | None = None,
        frozen: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]] | None = None,
        memo_items: int = 20000,
        seed: int = 0,
    ) -> None:
        if (preprocess is None) == (frozen is None):
            raise ValueError("give exactly one of preprocess (pixels) or frozen (memoised backbone features)")
        self.samples = samples
        self.proposals_for = proposals_for
        self.top_k = top_k
        self.preprocess = preprocess
        self.frozen = frozen
        self.memo_items = memo_items if frozen is not None else 0
        self.rng = random.Random(seed)
        self.image_memo: dict[str, dict[str, torch.Tensor]] = {}
        self.target_memo: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _image_part(self, sample: SegSample, image: np.ndarray | None) -> tuple[dict[str, torch.Tensor], Proposals | None]:
        key = f"{sample.source}:{sample.image_id}"
        if key in self.image_memo:
            return self.image_memo[key], None
        image = sample.load_image() if image is None else image
        proposals = self.proposals_for(sample)
        if proposals.image_size != image.shape[:2]:
            raise ValueError(f"{sample.image_id}: proposals are {proposals.image_size}, image is {image.shape[:2]}")
        lowres, valid = proposals.padded_lowres(self.top_k)
        inputs = self.frozen(image) if self.frozen is not None else self.preprocess(image)
        keys = FEATURE_KEYS if self.frozen is not None else PIXEL_KEYS
        part = {"lowres": lowres, "valid": valid, keys[0]: inputs[0], keys[1]: inputs[1]}
        if len(self.image_memo) < self.memo_items:
            self.image_memo[key] = part
        return part, proposals

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        instruction = self.rng.choice(sample.texts)
        part, proposals = self._image_part(sample, None)
        target_key = (f"{sample.source}:{sample.image_id}", "\n".join(sample.texts))
        if target_key in self.target_memo:
            gt_iou, gt_iop = self.target_memo[target_key]
        else:
            gt_iou, gt_iop = self._targets(sample, proposals)
            if self.memo_items and len(self.target_memo) < 8 * self.memo_items:
                self.target_memo[target_key] = (gt_iou, gt_iop)
        return {**part, "gt_iou": gt_iou, "gt_iop": gt_iop, "instruction": instruction, "image_id": sample.image_id}

    def _targets(self, sample: SegSample, proposals: Proposals | None) -> tuple[torch.Tensor, torch.Tensor]:
        gt = sample.load_mask()
        proposals = proposals or self.proposals_for(sample)
        if gt.shape != proposals.image_size:
            raise ValueError(f"{sample.image_id}: mask {gt.shape} does not match image {proposals.image_size}")
        kept = min(proposals.count, self.top_k)
        gt_iou = torch.zeros(self.top_k)
        gt_iop = torch.zeros(self.top_k)
        if kept:
            masks = torch.from_numpy(proposals.masks(range(kept)))
            iou, iop = proposal_targets(masks, torch.from_numpy(gt), IGNORE_INDEX)
            gt_iou[:kept], gt_iop[:kept] = iou, iop
        return gt_iou, gt_iop


def collate(items: list[dict]) -> dict:
    """Stack tensors; keep instructions and ids as lists."""
    keys = [k for k in items[0] if isinstance(items[0][k], torch.Tensor)]
    batch = {key: torch.stack([item[key] for item in items]) for key in keys}
    batch["instructions"] = [item["instruction"] for item in items]
    batch["image_ids"] = [item["image_id"] for item in items]
    return batch
