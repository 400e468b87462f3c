"""Configuration dataclasses for every stage of LLM-Seg, and the two presets.

The presets differ only in numbers and in where weights live: `paper` reads SAM ViT-H, DINOv2 ViT-L
and a llava-hf checkpoint from local paths; `tiny` uses the same classes with small configs and
weights trained in this repository and shipped inside the package.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TINY_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights" / "tiny"

# Named settings and what they may be. The modeling modules read them from here, so the library and
# every command check a config the same way, before anything is loaded.
LOWRES_LAYOUTS = ("pad", "stretch")  # proposals.lowres_layout
PROPOSAL_SAMPLINGS = ("grid", "refine")  # proposals.sampling
PROPOSAL_ENGINES = ("lean", "segment_anything")  # proposals.engine
PROPOSAL_DECODERS = ("sam", "fused")  # proposals.decoder
LAYOUTS = ("letterbox", "stretch")  # features.layout
POS_EMBEDS = ("hub", "hf")  # features.pos_embed
DTYPES = ("auto", "float32", "bfloat16", "float16")  # features.dtype, vlm.dtype
ANSWER_MODES = ("given", "verified", "generate")  # vlm.answer_mode
SEG_STATES = ("before_seg", "at_seg")  # vlm.seg_state
PREFIX_ATTENTIONS = ("auto", "shared", "copy")  # vlm.prefix_attention
FUSION_VARIANTS = ("published", "joint")  # fusion.variant
IOP_REDUCTIONS = ("row", "pooled")  # loss.iop_reduction
SCORINGS = ("native", "resize1024")  # how masks are scored (llmseg_model.metrics)
PRESET_NAMES = ("tiny", "paper", "paper_llava15")  # the presets of PRESETS, below
# The DINOv2 input layout and the proposals' low-res copies must describe the same geometry.
MATCHING_LAYOUTS = {"letterbox": "pad", "stretch": "stretch"}


# ------------------------------------------------------------------------------ checked fields


def one_of(default: str, choices: tuple[str, ...]) -> Any:
    """A str setting that must be one of `choices` (checked by `check_fields`, listed by --help)."""
    return field(default=default, metadata={"choices": tuple(choices)})


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None) -> Any:
    """A number setting with bounds (checked by `check_fields`, enforced by the command line)."""
    limits = {"ge": ge, "gt": gt, "le": le, "lt": lt}
    return field(default=default, metadata={k: v for k, v in limits.items() if v is not None})


BOUNDS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="), "lt": (operator.lt, "<")}


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """A dataclass's resolved field types, once per class: every config check and build reads them
    (the node checks each instruction against a copy of its VLM settings)."""
    return typing.get_type_hints(cls)


def check_fields(config: Any, prefix: str = "") -> None:
    """Raise ValueError naming the first field of a dataclass whose value has the wrong type, is
    not one of its choices or is out of its bounds (`one_of`, `bounded`)."""
    hints = type_hints(type(config))
    for f in dataclasses.fields(config):
        value, key = getattr(config, f.name), prefix + f.name
        check_type(hints[f.name], value, key)
        choices = f.metadata.get("choices")
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if choices is not None and item not in choices:
                raise ValueError(f"{key} must be {'' if item is value else 'a list of '}one of {', '.join(choices)}; got {item!r}")
        for name, (compare, symbol) in BOUNDS.items():
            if name in f.metadata and not compare(value, f.metadata[name]):
                raise ValueError(f"{key} must be {symbol} {f.metadata[name]}, got {value!r}")


def check_type(hint: Any, value: Any, key: str) -> None:
    """Raise ValueError when `value` is not of the plain type `hint` (int, float, str, bool, tuple,
    list, dict; an int is a float; a bool is no number). Element types are left to the parsers."""
    origin = typing.get_origin(hint) or hint
    if origin is typing.Union or origin is typing.Any or not isinstance(origin, type):
        return
    if dataclasses.is_dataclass(origin):
        ok = isinstance(value, origin)
    elif origin is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif origin is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif origin is tuple:
        ok = isinstance(value, (tuple, list))
    else:
        ok = isinstance(value, origin)
    if not ok:
        raise ValueError(f"{key} must be {_type_name(origin)}, got {type(value).__name__} {value!r}")


def _type_name(origin: type) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", tuple: "a list",
             list: "a list", dict: "a mapping"}
    return names.get(origin, f"a {origin.__name__}")


def from_mapping(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass `cls` from a (possibly partial) nested mapping such as a YAML file gives.

    Unknown keys, wrong types and values out of range are a ValueError naming the setting
    (`where` is the key of `data` itself, e.g. "datasets[0]."); nested dataclasses, lists of them and
    tuples are built from their mappings and lists."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where.rstrip('.') or cls.__name__}: expected a mapping of settings, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where.rstrip('.') or cls.__name__}: unknown setting(s) {unknown}; known: {sorted(fields)}")
    missing = [name for name, f in fields.items() if name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{where.rstrip('.') or cls.__name__}: missing setting(s) {missing}")
    hints = type_hints(cls)
    kwargs = {name: _from_value(hints[name], value, f"{where}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as err:  # from the class's own checks
        if not where:
            raise
        raise ValueError(prefixed(str(err), where, cls)) from None


def _from_value(hint: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if not dataclasses.is_dataclass(hint):
        check_type(hint, value, key)
    if dataclasses.is_dataclass(hint) and not isinstance(value, hint):
        return from_mapping(hint, value, key + ".")
    if origin is list and args and dataclasses.is_dataclass(args[0]) and isinstance(value, list):
        return [v if isinstance(v, args[0]) else from_mapping(args[0], v, f"{key}[{i}].") for i, v in enumerate(value)]
    if (origin is tuple or hint is tuple) and isinstance(value, list):
        return tuple(value)
    return value


def prefixed(message: str, where: str, cls: type) -> str:
    """An error about dataclass `cls` named from where it sits ("sources[0]."): a message that
    starts with one of its settings gets `where` in front, any other one "where: "."""
    if message.startswith(where.rstrip(".")):
        return message
    first = re.split(r"[.: \[]", message, maxsplit=1)[0]
    if first in {f.name for f in dataclasses.fields(cls)}:
        return f"{where}{message}"
    return f"{where.rstrip('.')}: {message.removeprefix(cls.__name__ + ': ')}"


@dataclass
class SamConfig:
    """Architecture of the segment-anything model used for everything-mode proposals."""

    encoder_embed_dim: int = bounded(1280, ge=1)
    encoder_depth: int = bounded(32, ge=1)
    encoder_num_heads: int = bounded(16, ge=1)
    encoder_global_attn_indexes: tuple[int, ...] = (7, 15, 23, 31)  # blocks with global attention
    image_size: int = bounded(1024, ge=1)
    patch_size: int = bounded(16, ge=1)
    window_size: int = bounded(14, ge=1)
    prompt_embed_dim: int = bounded(256, ge=1)
    decoder_depth: int = bounded(2, ge=1)
    decoder_mlp_dim: int = bounded(2048, ge=1)
    decoder_num_heads: int = bounded(8, ge=1)

    def __post_init__(self) -> None:
        check_fields(self, "sam.")
        outside = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        if outside:
            raise ValueError(f"sam.encoder_global_attn_indexes {outside} are not blocks of a {self.encoder_depth}-block encoder")


@dataclass
class ProposalConfig:
    """How SAM's automatic mask generator is run and how its masks are kept.

    The defaults are SamAutomaticMaskGenerator's as LLM-Seg runs it (a dense 32x32 grid).
    `sampling="refine"` is the one setting that changes which masks come out: a coarse
    `points_per_side` grid, then prompts only where SAM saw something it did not keep (see
    modeling/mask_generator.py; recall measured in docs/benchmark.md). `engine` changes only how
    fast the same masks are computed.
    """

    max_side: int = bounded(1024, ge=1)  # images are downscaled so their long side is at most this before SAM
    top_k: int = bounded(50, ge=1)  # proposals kept, largest area first; fewer are padded
    points_per_side: int = bounded(32, ge=1)  # the point grid (with sampling="refine": the coarse first grid)
    points_per_batch: int = bounded(64, ge=1)
    pred_iou_thresh: float = bounded(0.88, ge=0.0, le=1.0)
    stability_score_thresh: float = bounded(0.95, ge=0.0, le=1.0)
    box_nms_thresh: float = bounded(0.7, ge=0.0, le=1.0)
    min_mask_region_area: int = bounded(0, ge=0)
    # Side of the low-resolution copy used for mask pooling (published: 256, pooled against the
    # DINOv2 features upsampled to 256; the proposal cache stores it, ~0.3-0.6 MB an image at 256).
    lowres_size: int = bounded(256, ge=1)
    # How that copy is laid out. "pad": zero-pad bottom/right to a square, then bilinear with
    # antialias (the published pooling maps, utils/sam_mask_reader.py + reason_seg_dataset.py),
    # matching a letterboxed DINOv2 input. "stretch": area-resize the unpadded mask to a square
    # (what the tiny preset was trained with, beside its squashed DINOv2 input).
    lowres_layout: str = one_of("pad", LOWRES_LAYOUTS)
    # "grid": the published point grid. "refine": the grid, then `refine_rounds` rounds of one
    # prompt per rejected prompt whose best predicted IoU is >= refine_iou_thresh, at the centre of
    # that mask's part no kept mask covers (masks over refine_max_area of the image are not
    # followed; points closer than refine_min_distance x the long side to an earlier one are
    # dropped); then, if fill_points_per_side > 0, that grid's points no kept mask covers.
    sampling: str = one_of("grid", PROPOSAL_SAMPLINGS)
    refine_rounds: int = bounded(2, ge=0)
    refine_iou_thresh: float = bounded(0.05, ge=0.0, le=1.0)
    refine_max_area: float = bounded(0.5, gt=0.0, le=1.0)
    refine_min_distance: float = bounded(0.03125, ge=0.0)
    fill_points_per_side: int = bounded(0, ge=0)
    # "lean": modeling/mask_generator.py, the stock generator's masks without its discarded work
    # (identical output, tested); "segment_anything": the stock SamAutomaticMaskGenerator class.
    engine: str = one_of("lean", PROPOSAL_ENGINES)
    # "sam": segment-anything's TwoWayTransformer forward, once per prompt on its own copy of the
    # image embedding. "fused": modeling/fused_decoder.py, the same function with the image-side work
    # done once per image (3-4x less decoder time; equal up to float rounding, masks measured in
    # docs/benchmark.md).
    decoder: str = one_of("sam", PROPOSAL_DECODERS)

    def __post_init__(self) -> None:
        check_fields(self, "proposals.")
        if self.sampling != "grid" and self.engine != "lean":
            raise ValueError(f"proposals.sampling {self.sampling!r} needs proposals.engine: lean")
        if self.decoder != "sam" and self.engine != "lean":
            raise ValueError(f"proposals.decoder {self.decoder!r} needs proposals.engine: lean")
        if self.engine == "lean" and self.min_mask_region_area > 0:
            raise ValueError("proposals.min_mask_region_area > 0 needs proposals.engine: segment_anything")


@dataclass
class FeatureConfig:
    """DINOv2 patch features and the trainable projection used for mask pooling."""

    image_size: int = bounded(896, ge=1)  # DINOv2 input side (a multiple of its patch size): 896 -> a 64x64 grid
    embed_dim: int = bounded(256, ge=1)  # output of the trainable 1x1 conv
    # "letterbox": resize the long side to image_size and zero-pad bottom/right after normalising
    # (published: ResizeLongestSide + preprocess of utils/reason_seg_dataset.py). "stretch": resize
    # to image_size x image_size whatever the aspect ratio (the tiny preset's trained input).
    layout: str = one_of("letterbox", LAYOUTS)
    # Side of the map pooling runs on. 0: pool on the patch grid, masks area-resized to it.
    # N > 0: features bilinearly upsampled to N x N and masks resized to N (published: 256,
    # model/LISA.py model_forward).
    pool_size: int = bounded(256, ge=0)
    # Position-embedding interpolation for inputs larger than the pretraining grid. "hub": the
    # torch.hub DINOv2 rule the published model ran (bicubic with scale factor (grid + 0.1) / 37);
    # "hf": transformers' Dinov2Model rule (bicubic to the exact grid).
    pos_embed: str = one_of("hub", POS_EMBEDS)
    # DINOv2's weight dtype: "auto" is bfloat16 on CUDA (the published model ran the whole
    # network in bf16) and float32 on the CPU.
    dtype: str = one_of("auto", DTYPES)

    def __post_init__(self) -> None:
        check_fields(self, "features.")


# The published LLM-Seg conversation (LLaVA's llava_v1 template) and its question / answer
# templates (utils/utils.py, utils/dataset.py). {text} is the sentence or phrase.
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
PUBLISHED_SENTENCE_QUESTIONS = (
    "{text} Please respond with segmentation mask.",
    "{text} Please output segmentation mask.",
)
PUBLISHED_PHRASE_QUESTIONS = (
    "Can you segment the {text} in this image?",
    "Please segment the {text} in this image.",
    "What is {text} in this image? Please respond with segmentation mask.",
    "What is {text} in this image? Please output segmentation mask.",
)
PUBLISHED_ANSWERS = (
    "It is [SEG].",
    "Sure, [SEG].",
    "Sure, it is [SEG].",
    "Sure, the segmentation result is [SEG].",
    "[SEG].",
)


@dataclass
class VlmConfig:
    """LLaVA with a `<SEG>` token, LoRA on the language model, and the conversation format."""

    seg_token: str = "[SEG]"
    lora_r: int = bounded(8, ge=1)
    lora_alpha: int = bounded(16, ge=1)
    lora_dropout: float = bounded(0.05, ge=0.0, lt=1.0)
    # Regex so peft only wraps the language model's attention, never the vision tower.
    lora_target_regex: str = r".*language_model.*\.(q_proj|v_proj)"
    # Modules trained in full beside LoRA (LISA / LLM-Seg train the token embeddings and lm head so
    # the new <SEG> token gets a real embedding).
    trainable_modules: tuple[str, ...] = ("embed_tokens", "lm_head")
    # The conversation: {system} and {question} are filled in, <image> becomes the image tokens.
    system_prompt: str = LLAVA_V1_SYSTEM
    prompt_template: str = "{system} USER: <im_start><image><im_end>\n{question} ASSISTANT:"
    # Questions and answers at inference (the published validation's): a sentence, or a phrase
    # such as "the red cup" (SegSample.phrase). The answer follows " ASSISTANT:" after a space.
    sentence_question: str = "{text} Please output segmentation mask."
    phrase_question: str = "What is {text} in this image? Please output segmentation mask."
    answer: str = "[SEG]."
    # Training draws a question and an answer uniformly from these (phrases are lower-cased first).
    train_sentence_questions: tuple[str, ...] = PUBLISHED_SENTENCE_QUESTIONS
    train_phrase_questions: tuple[str, ...] = PUBLISHED_PHRASE_QUESTIONS
    train_answers: tuple[str, ...] = PUBLISHED_ANSWERS
    # Tokenise as the published (transformers 4.29 slow Llama) tokenizer did: the text is cut at
    # added tokens, whitespace next to them is stripped, each piece is encoded on its own.
    strip_around_special: bool = True
    # Which last-layer hidden state becomes the <SEG> embedding: "before_seg" is the state whose
    # LM head predicts <SEG> (published, model/LISA.py), "at_seg" the state at <SEG> itself.
    seg_state: str = one_of("before_seg", SEG_STATES)
    # "given": the answer is fed after the prompt and never checked (the published evaluation);
    # "verified": the answer is fed, checked against greedy decoding, generated where it differs;
    # "generate": greedy generation.
    answer_mode: str = one_of("given", ANSWER_MODES)
    # How an instruction's tokens attend to the frame's cached prompt: "shared" reads the prefix's
    # one copy for every row of a batch (modeling/prefix_attention.py); "copy" is transformers'
    # cache, which copies the prefix into every row; "auto" is "shared" on the CPU, where it was
    # measured faster, and "copy" on a GPU, where its extra kernels would cost more than the copy
    # (it saves the copies' memory there). Equal up to float rounding.
    prefix_attention: str = one_of("auto", PREFIX_ATTENTIONS)
    max_new_tokens: int = bounded(32, ge=1)
    max_instruction_chars: int = bounded(1000, ge=1)
    seg_embed_dim: int = bounded(256, ge=1)
    seg_batch_norm: bool = False  # BatchNorm1d inside the <SEG> projection (Linear-BN-ReLU-Linear)
    # LLaVA's weight dtype: "auto" is bfloat16 on CUDA (as LISA / LLM-Seg train) and float32 on the
    # CPU; "float32", "bfloat16" or "float16" force one.
    dtype: str = one_of("auto", DTYPES)

    def __post_init__(self) -> None:
        check_fields(self, "vlm.")


@dataclass
class FusionConfig:
    """The fusion transformer between the K proposal tokens and the <SEG> token, and its heads."""

    # "published": LLM-Seg's blocks (model/LISA.py, model/transformer.py LISA_TwoWayAttentionBlock):
    # self-attention over proposals, proposals <- SEG, MLP on proposals, SEG <- proposals; an IoP
    # head dim-128-1 and an embedding head dim-2048-dim compared by cosine with the un-fused <SEG>
    # embedding. "joint": the tiny preset's trained variant: input projections, SEG joins the
    # self-attention and the MLP, cross-attentions in the other order, 3-layer heads, cosine
    # against a projection of the fused SEG.
    variant: str = one_of("published", FUSION_VARIANTS)
    dim: int = bounded(256, ge=1)
    depth: int = bounded(2, ge=1)
    num_heads: int = bounded(8, ge=1)
    mlp_dim: int = bounded(2048, ge=1)
    dropout: float = bounded(0.0, ge=0.0, lt=1.0)
    iop_hidden: int = bounded(128, ge=1)  # published IoP head: Linear(dim, 128)-ReLU-Linear(128, 1)-Sigmoid
    embedding_hidden: int = bounded(2048, ge=1)  # published embedding head: Linear(dim, 2048)-ReLU-Linear(2048, dim)

    def __post_init__(self) -> None:
        check_fields(self, "fusion.")


@dataclass
class SelectionConfig:
    """Threshold rule that turns per-proposal scores into the answer mask."""

    iop_threshold: float = bounded(0.5, ge=0.0, lt=1.0)  # a proposal is kept when its IoP is above this
    # If nothing passes the threshold, fall back to the best IoU-head proposal when its IoP is at
    # least this (set > 1 to always report an empty result instead).
    fallback_min_iop: float = bounded(1.01, ge=0.0)
    max_instances: int = bounded(50, ge=1)

    def __post_init__(self) -> None:
        check_fields(self, "selection.")


@dataclass
class InstanceConfig:
    """When two selected proposals count as one object (llmseg_model/modeling/instances.py).

    Chosen with the shipped tiny preset on 60 procedural val scenes (240 instructions, 310 target
    objects): 876 selected proposals became 325 instances, and in 96.7% of the answers the instance
    count equals the number of scene objects the selected proposals lie on. Containment does nearly
    all the work, with a flat optimum at 0.5-0.6 (0.8 leaves 3 objects split in two, 0.4 joins one
    more pair of objects); the IoU rule matters little there but catches shifted near-duplicates
    that neither contains. Checked on 40 held-out test scenes (160 instructions, 214 targets): 591
    selected proposals -> 222 instances; count equal to the targets in 23% -> 81% of the answers,
    to the objects hit in 26% -> 94%. What stays joined (9 instances there) is a single SAM
    proposal spanning two objects, which no overlap rule can split.
    """

    # Near-duplicates: SAM's multi-scale and multi-point outputs of one object.
    iou_threshold: float = bounded(0.5, gt=0.0, le=1.0)
    # A part inside a whole: |a & b| / min(|a|, |b|) at or above this joins them.
    containment_threshold: float = bounded(0.6, gt=0.0, le=1.0)

    def __post_init__(self) -> None:
        check_fields(self, "instances.")


@dataclass
class LossConfig:
    """Weights of the LLM-Seg training losses."""

    ce_weight: float = bounded(1.0, ge=0.0)
    align_weight: float = bounded(1.0, ge=0.0)
    iop_weight: float = bounded(50.0, ge=0.0)
    temperature: float = bounded(0.05, gt=0.0)
    # How the IoP regression is averaged. "row": 50 x the mean over each instruction row's
    # proposals, then the mean over rows (published model/loss.py iou_regression_loss, per round
    # and image). "pooled": 50 x the mean over every valid proposal of the batch (rows with many
    # proposals weigh more; the tiny preset was trained so).
    iop_reduction: str = one_of("row", IOP_REDUCTIONS)

    def __post_init__(self) -> None:
        check_fields(self, "loss.")


@dataclass
class WeightPaths:
    """Where every pretrained part comes from. Empty strings mean "not given"."""

    sam_checkpoint: str = ""  # a .pth / .safetensors state dict of SAM
    dinov2_path: str = ""  # a folder loadable with Dinov2Model.from_pretrained
    llava_path: str = ""  # a folder loadable with LlavaForConditionalGeneration.from_pretrained
    llmseg_weights: str = ""  # a folder with LLM-Seg's own trained weights (heads, LoRA)

    def __post_init__(self) -> None:
        check_fields(self, "weights.")

    KINDS = {"sam_checkpoint": "SAM checkpoint file", "dinov2_path": "DINOv2 model folder",
             "llava_path": "LLaVA model folder", "llmseg_weights": "LLM-Seg trained weights folder"}

    def require(self, name: str, prefix: str = "weights.") -> Path:
        """The weight path `name` holds; FileNotFoundError naming the setting when it is unset or
        missing (nothing is ever downloaded)."""
        value, kind = getattr(self, name), self.KINDS[name]
        if not value:
            raise FileNotFoundError(f"{prefix}{name} is not set: give the local path of the {kind}")
        path = Path(value).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{prefix}{name} = {value!r} does not exist ({kind}); nothing is downloaded")
        return path

    def check_exist(self, trained: bool = True, prefix: str = "weights.") -> None:
        """Raise FileNotFoundError naming the first weight path that is unset or missing, before
        anything loads (`trained=False`: a new training run, llmseg_weights not needed)."""
        for name in self.KINDS:
            if name == "llmseg_weights" and not (trained or getattr(self, name)):
                continue
            self.require(name, prefix)


@dataclass
class LLMSegConfig:
    """Everything needed to build an LLMSeg model, minus the weights."""

    preset: str = one_of("paper", PRESET_NAMES)  # the preset these settings started from
    sam: SamConfig = field(default_factory=SamConfig)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    vlm: VlmConfig = field(default_factory=VlmConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    instances: InstanceConfig = field(default_factory=InstanceConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    weights: WeightPaths = field(default_factory=WeightPaths)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every part again (they may have been changed since they were built) and what the
        parts must agree on; raise ValueError naming the setting."""
        check_fields(self)
        for f in dataclasses.fields(self):
            part = getattr(self, f.name)
            if dataclasses.is_dataclass(part):
                part.__post_init__()
        dims = (self.features.embed_dim, self.vlm.seg_embed_dim, self.fusion.dim)
        if self.fusion.variant == "published" and len(set(dims)) > 1:
            raise ValueError(
                f"the published fusion has no input projections: features.embed_dim ({dims[0]}), "
                f"vlm.seg_embed_dim ({dims[1]}) and fusion.dim ({dims[2]}) must be equal"
            )
        wanted = MATCHING_LAYOUTS[self.features.layout]
        if self.proposals.lowres_layout != wanted:
            raise ValueError(
                f"features.layout {self.features.layout!r} needs proposals.lowres_layout {wanted!r}, "
                f"got {self.proposals.lowres_layout!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LLMSegConfig":
        """Build from a (possibly partial) nested dict; unknown keys, wrong types and values out of
        range are a ValueError naming the setting."""
        return from_mapping(cls, data)

    def save(self, path: str | Path) -> None:
        """Write as JSON. Weight paths under the folder above the file's own (a weights folder
        holding llava/, dinov2/, sam.safetensors and the file's folder llmseg/) are stored relative
        to the file's folder, so a weights folder copied elsewhere still loads (`load` resolves them)."""
        path = Path(path)
        data = self.to_dict()
        home = path.parent.resolve()
        for key, value in data["weights"].items():
            if value and Path(value).expanduser().resolve().is_relative_to(home.parent):
                data["weights"][key] = os.path.relpath(Path(value).expanduser().resolve(), home)
        path.write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "LLMSegConfig":
        """Read what `save` wrote; relative weight paths are taken from the file's folder."""
        path = Path(path)
        config = cls.from_dict(json.loads(path.read_text()))
        for key, value in dataclasses.asdict(config.weights).items():
            if value and not Path(value).expanduser().is_absolute():
                setattr(config.weights, key, os.path.normpath(path.parent.resolve() / value))
        return config


def paper_config(**weights: str) -> LLMSegConfig:
    """LLM-Seg as published (wangjunchi/LLMSeg): SAM ViT-H, DINOv2 ViT-L/14 at 896 letterboxed,
    LLaVA-Lightning-7B-v1-1 in transformers' Llava classes (converted by convert_official), the
    published fusion and heads; weights from local paths."""
    return LLMSegConfig(preset="paper", weights=WeightPaths(**weights))


def paper_llava15_config(**weights: str) -> LLMSegConfig:
    """The paper preset on a llava-hf LLaVA-1.5 base (e.g. llava-1.5-7b-hf, CLIP-336, 576 image
    tokens) for training from scratch: llava-hf's "USER: <image>\n... ASSISTANT:" conversation,
    without LLaVA-v1's system prompt and <im_start>/<im_end>. No released LLM-Seg weights fit it."""
    config = paper_config(**weights)
    config.preset = "paper_llava15"
    config.vlm.system_prompt = ""
    config.vlm.prompt_template = "USER: <image>\n{question} ASSISTANT:"
    return config


def tiny_config() -> LLMSegConfig:
    """The small preset trained in this repository on procedural scenes; runs on a CPU."""
    question = "{text} Please output the segmentation mask."
    # The tiny Llama starts with nearly the same <SEG> state for every instruction (cosine 0.99);
    # restating the request in the answer and batch-normalising the projection is what let the
    # fusion learn from it (the plain answer collapsed to one vector).
    answer = "Sure, {text} It is <SEG>."
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
        # Refine sampling from a 5x5 grid, two rounds, follow-ups not held apart from earlier prompts,
        # instead of the dense 16x16 grid: ~31 prompts instead of 256, and on 200 held-out val / test
        # scenes best-proposal IoU 0.858 / 0.859 vs 0.862 / 0.859 and recall@0.5 0.940 / 0.944 vs
        # 0.931 / 0.924; sampling="grid", points_per_side=16 is the dense grid (docs/benchmark.md).
        # The fused decoder gave the same masks as SAM's on 100 held-out scenes (scores within
        # 6e-7) in 60% of the proposal time.
        proposals=ProposalConfig(
            max_side=256,
            top_k=16,
            points_per_side=5,
            points_per_batch=256,
            pred_iou_thresh=0.7,
            stability_score_thresh=0.8,
            box_nms_thresh=0.7,
            lowres_size=64,
            lowres_layout="stretch",
            sampling="refine",
            refine_min_distance=0.0,
            decoder="fused",
        ),
        # Trained on square procedural scenes with a squashed input, pooled on the patch grid.
        features=FeatureConfig(image_size=224, embed_dim=128, layout="stretch", pool_size=0, pos_embed="hf", dtype="float32"),
        vlm=VlmConfig(
            seg_token="<SEG>",
            system_prompt="",
            prompt_template="USER: <image>\n{question} ASSISTANT:",
            sentence_question=question,
            phrase_question=question,
            answer=answer,
            train_sentence_questions=(question,),
            train_phrase_questions=(question,),
            train_answers=(answer,),
            strip_around_special=False,
            seg_state="at_seg",
            # Its answer is checked against greedy decoding in the same forward (generation takes
            # over where they differ), so results equal free generation at one forward's cost.
            answer_mode="verified",
            seg_embed_dim=128,
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
        # LLM-Seg's published blocks and heads at width 128 (heads halved with it). They replaced the
        # tiny preset's own "joint" variant by measurement: held-out test gIoU 83.8 against 74.4
        # (llmseg_model/weights/tiny/REPORT.md).
        fusion=FusionConfig(variant="published", dim=128, depth=2, num_heads=8, mlp_dim=512, iop_hidden=64, embedding_hidden=1024),
        # Every procedural instruction has a target; when no proposal passes the IoP threshold the
        # best IoU-head proposal is still the better answer if its IoP is not negligible (held-out
        # val gIoU 0.692 -> 0.697). Below 0.2 the result stays explicitly empty.
        selection=SelectionConfig(fallback_min_iop=0.2),
        loss=LossConfig(iop_reduction="pooled"),
        weights=WeightPaths(
            sam_checkpoint=str(TINY_WEIGHTS_DIR / "sam.safetensors"),
            dinov2_path=str(TINY_WEIGHTS_DIR / "dinov2"),
            llava_path=str(TINY_WEIGHTS_DIR / "llava"),
            llmseg_weights=str(TINY_WEIGHTS_DIR / "llmseg"),
        ),
    )


PRESETS = {"paper": paper_config, "paper_llava15": paper_llava15_config, "tiny": tiny_config}


def merge_nested(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` applied key by key, recursing into nested mappings."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge_nested(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def model_settings(preset: str | LLMSegConfig, overrides: dict[str, Any], key: str = "model") -> LLMSegConfig:
    """A preset (by name, or a config) with the nested overrides of a job config's `key` field (as
    training and benchmark YAML files give them): errors in them name the setting as the job's YAML and command line do
    (model.vlm.answer_mode)."""
    base = preset if isinstance(preset, LLMSegConfig) else preset_config(preset)
    try:
        if not isinstance(overrides, Mapping):
            raise ValueError(f"expected a mapping of LLMSegConfig settings, got {type(overrides).__name__}")
        return LLMSegConfig.from_dict(merge_nested(base.to_dict(), dict(overrides)))
    except ValueError as err:
        raise ValueError(prefixed(str(err), f"{key}.", LLMSegConfig)) from None


def preset_config(name: str) -> LLMSegConfig:
    """The named preset, or the settings saved in an llmseg_config.json (`LLMSegConfig.save`, as
    convert_official and training write them); anything else is an error listing the presets."""
    if name in PRESETS:
        return PRESETS[name]()
    if name.endswith(".json"):
        if not Path(name).expanduser().is_file():
            raise FileNotFoundError(f"preset {name!r}: no such llmseg_config.json file")
        return LLMSegConfig.load(Path(name).expanduser())
    raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} or give an llmseg_config.json")
