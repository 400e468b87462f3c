"""DINOv2 patch features and soft mask pooling into one embedding per proposal.

DINOv2 stays frozen; only the 1x1 projection is trained. Pooling works on the proposals' low-res
copies, resized to the patch grid, so it costs milliseconds whatever the image size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Dinov2Model

from llmseg_model.config import FeatureConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MaskFeatureExtractor(nn.Module):
    """Frozen DINOv2 + trainable 1x1 conv + soft (weighted-mean) mask pooling."""

    def __init__(self, dinov2: Dinov2Model, config: FeatureConfig) -> None:
        super().__init__()
        self.config = config
        self.dinov2 = dinov2
        self.dinov2.requires_grad_(False)
        self.dinov2.eval()
        self.proj = nn.Conv2d(dinov2.config.hidden_size, config.embed_dim, kernel_size=1)

    def train(self, mode: bool = True) -> "MaskFeatureExtractor":
        super().train(mode)
        self.dinov2.eval()  # frozen backbone: never in training mode
        return self

    def preprocess(self, images: np.ndarray | list[np.ndarray]) -> torch.Tensor:
        """(H, W, 3) uint8 images -> (B, 3, S, S) normalised, resized to the DINOv2 input side.

        Stays on the CPU (so DataLoader workers can call it); `patch_features` moves it."""
        if isinstance(images, np.ndarray):
            images = [images]
        side = self.config.image_size
        batch = []
        for image in images:
            tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0).float() / 255.0
            batch.append(F.interpolate(tensor, size=(side, side), mode="bilinear", antialias=True, align_corners=False))
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (torch.cat(batch) - mean) / std

    @torch.no_grad()
    def patch_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> frozen DINOv2 patch tokens as a (B, C, G, G) map (CLS and registers dropped)."""
        hidden = self.dinov2(pixel_values=pixels.to(self.dinov2.device, self.dinov2.dtype)).last_hidden_state
        grid = pixels.shape[-1] // self.dinov2.config.patch_size
        patches = hidden[:, -grid * grid :]
        return patches.transpose(1, 2).reshape(pixels.shape[0], -1, grid, grid).float()

    def pool(self, patch_features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Project (B, C, G, G) features and pool them under (B, K, R, R) soft masks -> (B, K, D).

        An empty (padding) mask pools to zeros rather than NaN.
        """
        features = self.proj(patch_features)  # (B, D, G, G)
        grid = features.shape[-2:]
        weights = F.interpolate(masks.float(), size=grid, mode="area")  # (B, K, G, G)
        weights = weights.flatten(2)
        total = weights.sum(-1, keepdim=True)
        weights = weights / total.clamp_min(1e-6)
        return torch.einsum("bkn,bdn->bkd", weights, features.flatten(2))
