"""LLM-Seg of random weights at any shape, the paper's included, for timing and memory without
weights: the real SAM, DINOv2 and LLaVA classes, built on the device in their run-time dtype."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmseg_model.config import LLMSegConfig, ProposalConfig

if TYPE_CHECKING:
    from segment_anything.modeling import Sam
    from transformers import Dinov2Config, Dinov2Model

    from llmseg_model.modeling.features import MaskFeatureExtractor
    from llmseg_model.modeling.model import LLMSeg
    from llmseg_model.modeling.proposals import Proposals

# DINOv2 ViT-L/14 as torch.hub ships it (518 px pretraining grid), the paper preset's backbone,
# for random-weight runs without a model folder.
DINOV2_VITL14 = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "patch_size": 14, "image_size": 518}
# Random LLaVA shapes (TinyLlavaConfig fields) for instruction timing without weights. The paper's
# is a 7B-like Llama cut to 6 layers of width 768 with the 7B's head width (128) and vocabulary, and a
# 2-layer CLIP-L giving LLaVA-v1's 256 image tokens: the token counts and per-token work that
# decide the ratios, at a size a CPU runs.
RANDOM_LLAVA = {
    "tiny": {},
    "paper": {
        "image_size": 224, "patch_size": 14, "vision_hidden": 1024, "vision_layers": 2, "vision_heads": 16,
        "text_hidden": 768, "text_layers": 6, "text_heads": 6, "text_intermediate": 2048, "max_positions": 2048,
        "vocab_size": 32004,
    },
}
# LLaVA-v1.5's CLIP-L/14 at 336 px: 576 image tokens.
RANDOM_LLAVA["paper_llava15"] = {**RANDOM_LLAVA["paper"], "image_size": 336}
# The 7B itself (a Vicuna / LLaMA-7B of 32 layers of width 4096, all of CLIP ViT-L/14's 24 layers)
# at the preset's image size: about 7 billion parameters, for a GPU.
LLAVA_7B = {
    "vision_layers": 24, "text_hidden": 4096, "text_layers": 32, "text_heads": 32, "text_intermediate": 11008,
    "max_positions": 4096,
}


@contextmanager
def building_on(device: str, dtype: Any = None) -> Iterator[None]:
    """New modules' parameters created (and randomly initialised) on `device`, in `dtype` when
    given: a 7B model built on the CPU in float32 first would take 28 GB and minutes."""
    import torch

    default = torch.get_default_dtype()
    try:
        if dtype is not None:
            torch.set_default_dtype(dtype)
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(default)


def llava_shape(preset: str, full: bool = False, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """TinyLlavaConfig fields of a random LLaVA: the preset's RANDOM_LLAVA shape, LLAVA_7B's layer
    sizes over it with `full` (its image size kept), then `overrides`."""
    return {**RANDOM_LLAVA.get(preset, {}), **(LLAVA_7B if full else {}), **(overrides or {})}


def random_dinov2_config(model_config: LLMSegConfig, overrides: dict[str, Any] | None = None) -> Dinov2Config:
    """The DINOv2 architecture of the preset's weight folder when it has one, else ViT-L/14 (at
    the hub checkpoint's 518 px grid; larger inputs interpolate its position embeddings);
    `overrides` (Dinov2Config settings) change either."""
    from transformers import Dinov2Config

    folder = Path(model_config.weights.dinov2_path) if model_config.weights.dinov2_path else None
    if folder is not None and (folder / "config.json").is_file():
        dinov2 = Dinov2Config.from_pretrained(str(folder), local_files_only=True)
    else:
        dinov2 = Dinov2Config(**DINOV2_VITL14)
    for key, value in (overrides or {}).items():
        if not hasattr(dinov2, key):
            raise ValueError(f"dinov2: unknown Dinov2Config setting {key!r}")
        setattr(dinov2, key, value)
    return dinov2


def random_backbones(
    model_config: LLMSegConfig, dinov2_overrides: dict[str, Any], device: str, seed: int, dtype: Any
) -> tuple[Sam, Dinov2Model]:
    """SAM and DINOv2 of the preset's shapes with random weights, initialised where they run (ViT-H
    alone is 2.5 GB), DINOv2 in `dtype` with the position-embedding rule `load_dinov2` sets up."""
    import torch
    from transformers import Dinov2Model

    from llmseg_model.modeling.features import HubInterpolationEmbeddings
    from llmseg_model.modeling.proposals import build_sam

    torch.manual_seed(seed)
    with building_on(device):
        sam = build_sam(model_config.sam)
        dinov2 = Dinov2Model(random_dinov2_config(model_config, dinov2_overrides))
        if model_config.features.pos_embed == "hub":
            hub = HubInterpolationEmbeddings(dinov2.config)
            hub.load_state_dict(dinov2.embeddings.state_dict())
            dinov2.embeddings = hub
    return sam, dinov2.to(dtype)


def build_random_model(
    model_config: LLMSegConfig,
    parts: tuple[Sam, MaskFeatureExtractor],
    shape: dict[str, Any],
    device: str,
    seed: int = 0,
) -> LLMSeg:
    """An LLMSeg of random weights around SAM and DINOv2 (`parts`): a random LLaVA of `shape`
    (TinyLlavaConfig fields, e.g. from `llava_shape`) built on the device in the preset's run-time
    dtype, a word-level tokenizer over the procedural vocabulary, random fusion heads."""
    import torch

    from llmseg_model.data.procedural import vocabulary_texts
    from llmseg_model.modeling.model import LLMSeg, vlm_dtype
    from llmseg_model.modeling.proposals import ProposalGenerator
    from llmseg_model.modeling.vlm import SegVLM
    from llmseg_model.tiny.llava import TinyLlavaConfig, build_tiny_llava, train_tokenizer

    sam, features = parts
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(vocabulary_texts(), model_config.vlm)
    with building_on(device, vlm_dtype(model_config.vlm.dtype, device.startswith("cuda"))):
        llava, processor = build_tiny_llava(tokenizer, TinyLlavaConfig(**shape))
    vlm = SegVLM(llava, tokenizer, processor, model_config.vlm)
    model = LLMSeg(model_config, ProposalGenerator(sam, model_config.proposals), features, vlm)
    return model.to(device).eval()


def synthetic_proposals(image: np.ndarray, count: int, lowres: ProposalConfig) -> Proposals:
    """`count` disc and box masks laid over the frame, for timing without a SAM pass (random SAM
    weights keep almost no mask)."""
    from llmseg_model.modeling.proposals import Proposals

    height, width = image.shape[:2]
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:height, :width]
    masks = []
    for _ in range(count):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.05, 0.3) * min(height, width)
        masks.append((rows - cy) ** 2 + (cols - cx) ** 2 <= r * r if rng.random() < 0.5 else (np.abs(rows - cy) <= r) & (np.abs(cols - cx) <= r))
    return Proposals.from_masks(np.stack(masks), lowres.lowres_size, lowres_layout=lowres.lowres_layout)
