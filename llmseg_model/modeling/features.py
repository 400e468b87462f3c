"""DINOv2 patch features and soft mask pooling into one embedding per proposal.

DINOv2 stays frozen; only the 1x1 projection is trained. The published model letterboxes the
image (long side 896, zero-padded bottom/right: a 64x64 patch grid), upsamples the projected
features to 256x256 and pools them under 256x256 maps of the proposals padded the same way
(model/LISA.py, utils/reason_seg_dataset.py); the tiny preset squashes its square scenes and pools
on the patch grid. Both are settings of `FeatureConfig` (`layout`, `pool_size`) that must agree
with the proposals' low-res copies (`ProposalConfig.lowres_layout`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn
from transformers import Dinov2Model
from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings

from llmseg_model.config import FeatureConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class HubInterpolationEmbeddings(Dinov2Embeddings):
    """DINOv2 embeddings whose position embeddings are resized as torch.hub's DINOv2 does it
    (bicubic with scale factor (grid + 0.1) / pretraining grid), which is what the published
    LLM-Seg ran; transformers resizes to the exact grid instead, which samples slightly apart."""

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        num_positions = self.position_embeddings.shape[1] - 1
        if embeddings.shape[1] - 1 == num_positions and height == width:
            return self.position_embeddings
        side = int(math.sqrt(num_positions))
        pos = self.position_embeddings.float()
        patch_pos = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        patch_pos = F.interpolate(
            patch_pos, scale_factor=((grid_h + 0.1) / side, (grid_w + 0.1) / side), mode="bicubic", align_corners=False
        )
        if patch_pos.shape[-2:] != (grid_h, grid_w):
            raise ValueError(f"position embedding resized to {tuple(patch_pos.shape[-2:])}, expected {(grid_h, grid_w)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat((pos[:, :1], patch_pos), dim=1).to(self.position_embeddings.dtype)


def load_dinov2(path: str, config: FeatureConfig, dtype: torch.dtype = torch.float32) -> Dinov2Model:
    """A local DINOv2 folder, with the position-embedding rule `config.pos_embed` names."""
    config.__post_init__()  # its own checks again: settings may have changed since it was built
    model = Dinov2Model.from_pretrained(path, local_files_only=True, dtype=dtype)
    if config.pos_embed == "hub":
        hub = HubInterpolationEmbeddings(model.config)
        hub.load_state_dict(model.embeddings.state_dict())
        model.embeddings = hub.to(dtype)
    return model


def letterbox_size(height: int, width: int, side: int) -> tuple[int, int]:
    """(h, w) after resizing the long side to `side`: segment-anything's rounding, as the published
    DINOv2 letterbox uses it."""
    return ResizeLongestSide.get_preprocess_shape(height, width, side)


class MaskFeatureExtractor(nn.Module):
    """Frozen DINOv2 + trainable 1x1 conv + soft (weighted-mean) mask pooling."""

    def __init__(self, dinov2: Dinov2Model, config: FeatureConfig) -> None:
        super().__init__()
        config.__post_init__()  # its own checks again: settings may have changed since it was built
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
        """(H, W, 3) uint8 images -> (B, 3, S, S) normalised DINOv2 input.

        "letterbox": PIL bilinear resize of the long side to S (as ResizeLongestSide), normalise,
        zero-pad bottom/right. "stretch": resize to S x S. Stays on the CPU (so DataLoader
        workers can call it); `patch_features` moves it."""
        if isinstance(images, np.ndarray):
            images = [images]
        side = self.config.image_size
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        batch = []
        for image in images:
            if self.config.layout == "letterbox":
                height, width = letterbox_size(*image.shape[:2], side)
                resized = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.BILINEAR))
                tensor = torch.from_numpy(resized.copy()).permute(2, 0, 1).unsqueeze(0).float()
                tensor = (tensor - 255.0 * mean) / (255.0 * std)
                batch.append(F.pad(tensor, (0, side - width, 0, side - height)))
            else:
                tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0).float() / 255.0
                tensor = F.interpolate(tensor, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
                batch.append((tensor - mean) / std)
        return torch.cat(batch)

    @torch.no_grad()
    def patch_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> frozen DINOv2 patch tokens as a (B, C, G, G) float32 map (CLS and
        registers dropped)."""
        hidden = self.dinov2(pixel_values=pixels.to(self.dinov2.device, self.dinov2.dtype)).last_hidden_state
        grid = pixels.shape[-1] // self.dinov2.config.patch_size
        patches = hidden[:, -grid * grid :]
        return patches.transpose(1, 2).reshape(pixels.shape[0], -1, grid, grid).float()

    def pool(self, patch_features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Project (B, C, G, G) features and pool them under (B, K, R, R) soft masks -> (B, K, D).

        With `pool_size` N the projected features are upsampled bilinearly to N x N and the masks
        brought to N x N; with 0 the masks are area-resized to the patch grid. An empty (padding)
        mask pools to zeros rather than NaN.
        """
        features = self.proj(patch_features.to(self.proj.weight.dtype)).float()  # (B, D, G, G)
        if self.config.pool_size:
            size = (self.config.pool_size, self.config.pool_size)
            features = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
        grid = features.shape[-2:]
        weights = masks.float()
        if weights.shape[-2:] != grid:
            mode = "area" if weights.shape[-1] > grid[-1] else "bilinear"
            weights = F.interpolate(weights, size=grid, mode=mode, **({} if mode == "area" else {"align_corners": False}))
        weights = weights.flatten(2)
        total = weights.sum(-1, keepdim=True)
        weights = weights / total.clamp_min(1e-6)
        return torch.einsum("bkn,bdn->bkd", weights, features.flatten(2))
