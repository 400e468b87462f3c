"""Training records: a sample, its cached proposals, and the per-proposal IoU / IoP targets.

SAM never runs here: proposals come from a lookup (the on-disk proposal cache in practice), so a
training step only costs DINOv2 on one image plus the LLM.
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


class TrainingSet(Dataset):
    """Items ready for `LLMSeg.forward`: one per (sample, instruction) pair.

    `proposals_for(sample)` returns that image's Proposals; `dino_preprocess` and
    `llava_preprocess` turn an (H, W, 3) uint8 image into each model's (3, S, S) pixels.
    """

    def __init__(
        self,
        samples: Sequence[SegSample],
        proposals_for: Callable[[SegSample], Proposals],
        dino_preprocess: Callable[[np.ndarray], torch.Tensor],
        llava_preprocess: Callable[[np.ndarray], torch.Tensor],
        top_k: int,
        seed: int = 0,
    ) -> None:
        self.samples = samples
        self.proposals_for = proposals_for
        self.dino_preprocess = dino_preprocess
        self.llava_preprocess = llava_preprocess
        self.top_k = top_k
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = sample.load_image()
        gt = sample.load_mask()
        if gt.shape != image.shape[:2]:
            raise ValueError(f"{sample.image_id}: mask {gt.shape} does not match image {image.shape[:2]}")
        proposals = self.proposals_for(sample)
        if proposals.image_size != gt.shape:
            raise ValueError(f"{sample.image_id}: proposals are {proposals.image_size}, image is {gt.shape}")
        kept = min(proposals.count, self.top_k)
        gt_iou = torch.zeros(self.top_k)
        gt_iop = torch.zeros(self.top_k)
        if kept:
            masks = torch.from_numpy(proposals.masks(range(kept)))
            iou, iop = proposal_targets(masks, torch.from_numpy(gt), IGNORE_INDEX)
            gt_iou[:kept], gt_iop[:kept] = iou, iop
        lowres, valid = proposals.padded_lowres(self.top_k)
        return {
            "dino_pixels": self.dino_preprocess(image),
            "llava_pixels": self.llava_preprocess(image),
            "lowres": lowres,
            "valid": valid,
            "gt_iou": gt_iou,
            "gt_iop": gt_iop,
            "instruction": self.rng.choice(sample.texts),
            "image_id": sample.image_id,
        }


def collate(items: list[dict]) -> dict:
    """Stack tensors; keep instructions and ids as lists."""
    batch = {key: torch.stack([item[key] for item in items]) for key in ("dino_pixels", "llava_pixels", "lowres", "valid", "gt_iou", "gt_iop")}
    batch["instructions"] = [item["instruction"] for item in items]
    batch["image_ids"] = [item["image_id"] for item in items]
    return batch
