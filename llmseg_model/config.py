"""Configuration dataclasses for every stage of LLM-Seg, and the two presets.

The presets differ only in numbers and in where weights live: `paper` reads SAM ViT-H, DINOv2 ViT-L
and a llava-hf checkpoint from local paths; `tiny` uses the same classes with small configs and
weights trained in this repository and shipped inside the package.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TINY_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights" / "tiny"


@dataclass
class SamConfig:
    """Architecture of the segment-anything model used for everything-mode proposals."""

    encoder_embed_dim: int = 1280
    encoder_depth: int = 32
    encoder_num_heads: int = 16
    encoder_global_attn_indexes: tuple[int, ...] = (7, 15, 23, 31)
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8


@dataclass
class ProposalConfig:
    """How SAM's automatic mask generator is run and how its masks are kept."""

    max_side: int = 1024  # images are downscaled so their long side is at most this before SAM
    top_k: int = 50  # proposals kept, largest area first; fewer are padded
    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0
    lowres_size: int = 64  # side of the low-resolution copy used for mask pooling


@dataclass
class FeatureConfig:
    """DINOv2 patch features and the trainable projection used for mask pooling."""

    image_size: int = 518  # DINOv2 input side (a multiple of its patch size)
    embed_dim: int = 256  # output of the trainable 1x1 conv


@dataclass
class VlmConfig:
    """LLaVA with a `<SEG>` token, LoRA on the language model, and the prompt format."""

    seg_token: str = "<SEG>"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    # Regex so peft only wraps the language model's attention, never the vision tower.
    lora_target_regex: str = r".*language_model.*\.(q_proj|v_proj)"
    # Modules trained in full beside LoRA (LISA / LLM-Seg train the token embeddings and lm head so
    # the new <SEG> token gets a real embedding).
    trainable_modules: tuple[str, ...] = ("embed_tokens", "lm_head")
    prompt_template: str = "USER: <image>\n{instruction} Please output the segmentation mask. ASSISTANT:"
    answer_text: str = "Sure, it is <SEG>."
    max_new_tokens: int = 32
    max_instruction_chars: int = 1000
    seg_embed_dim: int = 256
    seg_batch_norm: bool = False  # BatchNorm1d inside the <SEG> projection (Linear-BN-ReLU-Linear)
    # LLaVA's weight dtype: "auto" is bfloat16 on CUDA (as LISA / LLM-Seg train) and float32 on the
    # CPU; "float32", "bfloat16" or "float16" force one.
    dtype: str = "auto"


@dataclass
class FusionConfig:
    """The fusion transformer between the K proposal tokens and the <SEG> token."""

    dim: int = 256
    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    dropout: float = 0.0


@dataclass
class SelectionConfig:
    """Threshold rule that turns per-proposal scores into the answer mask."""

    iop_threshold: float = 0.5
    # If nothing passes the threshold, fall back to the best IoU-head proposal when its IoP is at
    # least this (set > 1 to always report an empty result instead).
    fallback_min_iop: float = 1.01
    max_instances: int = 50


@dataclass
class LossConfig:
    """Weights of the LLM-Seg training losses."""

    ce_weight: float = 1.0
    align_weight: float = 1.0
    iop_weight: float = 50.0
    temperature: float = 0.05


@dataclass
class WeightPaths:
    """Where every pretrained part comes from. Empty strings mean "not given"."""

    sam_checkpoint: str = ""  # a .pth / .safetensors state dict of SAM
    dinov2_path: str = ""  # a folder loadable with Dinov2Model.from_pretrained
    llava_path: str = ""  # a folder loadable with LlavaForConditionalGeneration.from_pretrained
    llmseg_weights: str = ""  # a folder with LLM-Seg's own trained weights (heads, LoRA)


@dataclass
class LLMSegConfig:
    """Everything needed to build an LLMSeg model, minus the weights."""

    preset: str = "paper"
    sam: SamConfig = field(default_factory=SamConfig)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    vlm: VlmConfig = field(default_factory=VlmConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    weights: WeightPaths = field(default_factory=WeightPaths)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LLMSegConfig":
        """Build from a (possibly partial) nested dict; unknown keys are an error."""
        return _from_dict(cls, data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "LLMSegConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown setting(s) {sorted(unknown)}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name) if name in fields else None
        if dataclasses.is_dataclass(default):
            kwargs[name] = _from_dict(type(default), value)
        elif isinstance(default, tuple):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def paper_config(**weights: str) -> LLMSegConfig:
    """LLM-Seg as published: SAM ViT-H, DINOv2 ViT-L/14, LLaVA; weights from local paths."""
    return LLMSegConfig(preset="paper", weights=WeightPaths(**weights))


def tiny_config() -> LLMSegConfig:
    """The small preset trained in this repository on procedural scenes; runs on a CPU."""
    return LLMSegConfig(
        preset="tiny",
        sam=SamConfig(
            encoder_embed_dim=96,
            encoder_depth=4,
            encoder_num_heads=4,
            encoder_global_attn_indexes=(1, 3),
            image_size=256,
            patch_size=16,
            window_size=8,
            prompt_embed_dim=64,
            decoder_depth=2,
            decoder_mlp_dim=256,
            decoder_num_heads=4,
        ),
        proposals=ProposalConfig(
            max_side=256,
            top_k=16,
            points_per_side=16,
            points_per_batch=256,
            pred_iou_thresh=0.7,
            stability_score_thresh=0.8,
            box_nms_thresh=0.7,
            lowres_size=64,
        ),
        features=FeatureConfig(image_size=224, embed_dim=128),
        vlm=VlmConfig(
            seg_embed_dim=128,
            # The tiny Llama starts with nearly the same <SEG> state for every instruction (cosine
            # 0.99); restating the request in the answer and batch-normalising the projection is
            # what let the fusion learn from it (the plain answer collapsed to one vector).
            answer_text="Sure, {instruction} It is <SEG>.",
            seg_batch_norm=True,
            max_new_tokens=48,
            # As in LISA / LLM-Seg: LoRA + token embeddings + LM head (+ the projector, since the tiny
            # projector has no pretraining). Training the whole tiny Llama instead let the answer CE
            # collapse the <SEG> hidden state to one vector for every instruction (measured).
            trainable_modules=("embed_tokens", "lm_head", "multi_modal_projector"),
            # Its trained embeddings and LM head are small enough to keep in float32 on a GPU too:
            # bfloat16 weights would round away AdamW's small updates.
            dtype="float32",
        ),
        fusion=FusionConfig(dim=128, depth=2, num_heads=8, mlp_dim=512),
        # Every procedural instruction has a target; when no proposal passes the IoP threshold the
        # best IoU-head proposal is still the better answer if its IoP is not negligible (held-out
        # val gIoU 0.692 -> 0.697). Below 0.2 the result stays explicitly empty.
        selection=SelectionConfig(fallback_min_iop=0.2),
        weights=WeightPaths(
            sam_checkpoint=str(TINY_WEIGHTS_DIR / "sam.safetensors"),
            dinov2_path=str(TINY_WEIGHTS_DIR / "dinov2"),
            llava_path=str(TINY_WEIGHTS_DIR / "llava"),
            llmseg_weights=str(TINY_WEIGHTS_DIR / "llmseg"),
        ),
    )


PRESETS = {"paper": paper_config, "tiny": tiny_config}


def merge_nested(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` applied key by key, recursing into nested mappings."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge_nested(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def preset_with_overrides(name: str, overrides: dict[str, Any]) -> LLMSegConfig:
    """The named preset with nested overrides (as training and benchmark YAML files give them)."""
    return LLMSegConfig.from_dict(merge_nested(preset_config(name).to_dict(), overrides))


def preset_config(name: str) -> LLMSegConfig:
    """The named preset; an unknown name is an error listing the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
