"""SAM everything-mode mask proposals, kept compactly and padded to K.

Proposals are stored two ways: COCO RLE at the image's native resolution (for the answer mask and
for scoring) and a small soft copy (`lowres`, R x R) that mask pooling and training use, so no step
after proposal generation ever touches full-resolution masks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from llmseg_model.config import LOWRES_LAYOUTS, ProposalConfig, SamConfig
from llmseg_model.modeling.mask_generator import LeanMaskGenerator, MaskSet

logger = logging.getLogger(__name__)


def build_sam(config: SamConfig, checkpoint: str | Path | None = None) -> Sam:
    """Build segment-anything's `Sam` from a config; load a state dict when a checkpoint is given.

    Mirrors `segment_anything.build_sam._build_sam` but takes every size from the config, so the
    tiny preset is the very same class with smaller numbers.
    """
    embedding_size = config.image_size // config.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=config.encoder_depth,
            embed_dim=config.encoder_embed_dim,
            img_size=config.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=config.encoder_num_heads,
            patch_size=config.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(config.encoder_global_attn_indexes),
            window_size=config.window_size,
            out_chans=config.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_num_heads,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    if checkpoint:
        sam.load_state_dict(load_state_dict(checkpoint))
    sam.eval()
    return sam


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors or a torch pickle (SAM's official .pth files)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


@dataclass
class Proposals:
    """K mask proposals of one image, largest first."""

    rles: list[dict]  # COCO RLE (counts as str) at native resolution
    lowres: torch.Tensor  # (count, R, R) float16 soft masks in [0, 1]
    areas: np.ndarray  # (count,) pixels at native resolution
    boxes: np.ndarray  # (count, 4) XYWH at native resolution
    sam_scores: np.ndarray  # (count,) SAM's predicted IoU
    image_size: tuple[int, int]  # (height, width)

    @property
    def count(self) -> int:
        return len(self.rles)

    def masks(self, indices: np.ndarray | list[int] | None = None) -> np.ndarray:
        """Decode proposals to (N, H, W) bool at native resolution."""
        indices = range(self.count) if indices is None else indices
        rles = [self.rles[i] for i in indices]
        if not rles:
            return np.zeros((0, *self.image_size), dtype=bool)
        return mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)

    def padded_lowres(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, R, R) float masks and a (k,) bool validity vector, zero-padded or truncated to k."""
        size = self.lowres.shape[-1]
        out = torch.zeros((k, size, size), dtype=torch.float32)
        n = min(k, self.count)
        out[:n] = self.lowres[:n].float()
        valid = torch.zeros(k, dtype=torch.bool)
        valid[:n] = True
        return out, valid

    def to_dict(self) -> dict:
        """A plain, picklable/JSON-able form for the proposal cache."""
        return {
            "rles": self.rles,
            "lowres": self.lowres.numpy().astype(np.float16),
            "areas": self.areas,
            "boxes": self.boxes,
            "sam_scores": self.sam_scores,
            "image_size": list(self.image_size),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Proposals":
        return cls(
            rles=list(data["rles"]),
            lowres=torch.from_numpy(np.asarray(data["lowres"], dtype=np.float16)),
            areas=np.asarray(data["areas"], dtype=np.int64),
            boxes=np.asarray(data["boxes"], dtype=np.float32).reshape(-1, 4),
            sam_scores=np.asarray(data["sam_scores"], dtype=np.float32),
            image_size=(int(data["image_size"][0]), int(data["image_size"][1])),
        )

    @classmethod
    def from_masks(
        cls, masks: np.ndarray, lowres_size: int, sam_scores: np.ndarray | None = None, lowres_layout: str = "pad"
    ) -> "Proposals":
        """Build from (N, H, W) bool masks, sorted by area (largest first)."""
        masks = np.asarray(masks, dtype=bool)
        n, height, width = masks.shape
        areas = masks.reshape(n, height * width).sum(1).astype(np.int64)
        order = np.argsort(-areas, kind="stable")
        masks, areas = masks[order], areas[order]
        scores = np.ones(n, np.float32) if sam_scores is None else np.asarray(sam_scores, np.float32)[order]
        rles = encode_rles(masks)
        boxes = mask_utils.toBbox(rles).astype(np.float32).reshape(-1, 4) if n else np.zeros((0, 4), np.float32)
        return cls(
            rles=rles,
            lowres=lowres_masks(masks, lowres_size, lowres_layout),
            areas=areas,
            boxes=boxes,
            sam_scores=scores,
            image_size=(height, width),
        )


def encode_rles(masks: np.ndarray) -> list[dict]:
    """(N, H, W) bool -> COCO RLEs with str counts (JSON-safe)."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def lowres_masks(masks: np.ndarray, size: int, layout: str = "pad") -> torch.Tensor:
    """(N, H, W) bool -> (N, size, size) float16 soft masks for pooling.

    "pad": zero-padded bottom/right to a square, then bilinear with antialias (the published
    pooling maps, which line up with a letterboxed DINOv2 input). "stretch": area-averaged over the
    unpadded mask (lines up with a squashed input)."""
    if layout not in LOWRES_LAYOUTS:
        raise ValueError(f"proposals.lowres_layout must be one of {LOWRES_LAYOUTS}, got {layout!r}")
    if len(masks) == 0:
        return torch.zeros((0, size, size), dtype=torch.float16)
    tensor = torch.from_numpy(np.asarray(masks, dtype=np.uint8)).float().unsqueeze(1)
    if layout == "stretch":
        return F.interpolate(tensor, size=(size, size), mode="area").squeeze(1).to(torch.float16)
    height, width = tensor.shape[-2:]
    side = max(height, width)
    tensor = F.pad(tensor, (0, side - width, 0, side - height))
    out = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.squeeze(1).to(torch.float16)


def resize_long_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale (never upscale) an HxWx3 uint8 image so its long side is at most max_side."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return image
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0).float()
    resized = F.interpolate(tensor, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    return resized.squeeze(0).permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


class ProposalGenerator:
    """Runs SAM in everything mode (`config.engine`) and keeps the top-K proposals by area."""

    def __init__(self, sam: Sam, config: ProposalConfig) -> None:
        self.config = config
        self.sam = sam
        if config.engine == "segment_anything":
            self.generator: SamAutomaticMaskGenerator | LeanMaskGenerator = SamAutomaticMaskGenerator(
                sam,
                points_per_side=config.points_per_side,
                points_per_batch=config.points_per_batch,
                pred_iou_thresh=config.pred_iou_thresh,
                stability_score_thresh=config.stability_score_thresh,
                box_nms_thresh=config.box_nms_thresh,
                min_mask_region_area=config.min_mask_region_area,
                output_mode="binary_mask",
            )
        else:
            self.generator = LeanMaskGenerator(sam, config)

    def masks(self, image: np.ndarray) -> MaskSet:
        """Everything-mode masks of an image already at SAM's working size, in SAM's order."""
        if isinstance(self.generator, LeanMaskGenerator):
            return self.generator.generate(image)
        records = self.generator.generate(image)
        masks = np.stack([r["segmentation"] for r in records]) if records else np.zeros((0, *image.shape[:2]), bool)
        scores = np.array([r["predicted_iou"] for r in records], np.float32)
        return MaskSet(masks=masks, scores=scores, prompts=len(self.generator.point_grids[0]))

    def __call__(self, image: np.ndarray) -> Proposals:
        """image: (H, W, 3) uint8 RGB. Returns at most `top_k` proposals, largest first."""
        return self.propose(image)[0]

    @torch.inference_mode()
    def propose(self, image: np.ndarray) -> tuple[Proposals, int]:
        """The proposals of an image and how many point prompts SAM decoded for them."""
        check_image(image)
        height, width = image.shape[:2]
        small = resize_long_side(image, self.config.max_side)
        found = self.masks(small)
        areas = found.masks.sum((1, 2))
        # Largest first; equal areas keep SAM's order, as sorting the stock records does.
        order = np.argsort(-areas, kind="stable")[: self.config.top_k]
        masks, scores = found.masks[order], found.scores[order]
        if masks.shape[1:] != (height, width):
            masks = upscale_masks(masks, (height, width))
        return Proposals.from_masks(masks, self.config.lowres_size, scores, self.config.lowres_layout), found.prompts


def upscale_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (N, h, w) bool masks to (N, H, W)."""
    if len(masks) == 0:
        return np.zeros((0, *size), bool)
    tensor = torch.from_numpy(masks.astype(np.uint8)).unsqueeze(1).float()
    return F.interpolate(tensor, size=size, mode="nearest").squeeze(1).numpy() > 0.5


def check_image(image: np.ndarray) -> None:
    """Raise ValueError unless image is a non-empty (H, W, 3) uint8 array."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"image is too small: {image.shape[1]}x{image.shape[0]}")
