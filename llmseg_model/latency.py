"""Per-frame latency of LLM-Seg, as ratios to SAM's image encoder measured in the same run.

    python -m llmseg_model.latency --threads 1 --clock process       # the shipped tiny preset
    python -m llmseg_model.latency --preset paper --random-weights \
        --frames 1 --iterations 1 --warmup 0                         # paper shapes, random weights
    python -m llmseg_model.latency --mode dense:sampling=grid,points_per_side=16 \
        --mode refine5:points_per_side=5 --recall-scenes 200           # chosen proposal modes

Per frame, interleaved (every quantity is measured once on a frame before the next frame), so a
busy machine slows them alike and the ratios stay comparable:

  sam_encoder         SAM's image encoder on the preprocessed frame: the unit of every ratio
  proposals/<mode>    everything mode + top-K + RLE + low-res copies (ProposalGenerator), for each
                      proposal mode (ProposalConfig overrides), with the prompts it decoded
  dinov2              DINOv2 patch features of the frame
  prepare/<mode>      the whole LLMSeg.prepare with that proposal mode (with --random-weights the
                      preset mode only, on a random LLaVA; --no-prepare leaves it out)

Per instruction (`instructions` > 0), on frames prepared with the preset's proposal mode, each
frame's instructions answered every way, interleaved:

  instruction/plain         one instruction with no cached prompt, its answer generated (the
                            path before the prompt cache: the whole prompt, then decoding)
  instruction/lower_bound   one forward of the instruction and the preset's answer tokens on the
                            frame's cached prompt (language model only): what one answer must cost
  instruction/llm           the language-model stage of one instruction as query runs it (the
                            preset's answer mode on the cached prompt, <SEG> projection included)
  instruction/batch_N       LLMSeg.query_batch with N instructions, per instruction (N from
                            `batch_sizes`; the preset's answer mode, fusion and selection included)
  instruction/fusion        batch_1's fusion stage and its selection stage (the threshold rule,
  instruction/selection     the instances, the label image and the union; wall clock, the
                            result's own timings): what one instruction costs beyond the forward

with ratios to the lower bound, and batch_N's whole time to batch_1's. With --random-weights the
LLaVA is random too, of the `llava` shape (TinyLlavaConfig fields; the paper default is a small
Llama with the 7B's head width and vocabulary and a CLIP giving 256 image tokens; --llava-full
builds the 7B itself, on the device, for a GPU), and the instruction half's frames get synthetic
proposals instead of a SAM pass (random SAM weights keep almost none). On CUDA the report adds the
GPU memory allocated and its peak after building, after the frame half and after the instructions.

With --recall-scenes N, each proposal mode's best-proposal IoU per object and recall@0.5 on N
held-out procedural scenes (meaningful with trained SAM weights only). Shapes of random models come
from --model.* (e.g. --model.sam.encoder_depth 2) and --dinov2 '{num_hidden_layers: 2}'.
Writes latency.json and latency.md into --output-dir. Absolute times depend on the machine and
its load; compare ratios, and only numbers from one run. torch and the models are imported when
the run starts, after its settings are checked.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from llmseg_model.cli import Command
from llmseg_model.config import LLMSegConfig, ProposalConfig, bounded, check_fields, from_mapping, merge_nested, model_settings, one_of

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

    from llmseg_model.modeling.features import MaskFeatureExtractor
    from llmseg_model.modeling.proposals import ProposalGenerator

logger = logging.getLogger(__name__)

# DINOv2 ViT-L/14 as torch.hub ships it (518 px pretraining grid), the paper preset's backbone,
# for random-weight runs without a model folder.
DINOV2_VITL14 = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "patch_size": 14, "image_size": 518}
# Proposal modes measured by default, as overrides of the preset's ProposalConfig: the preset's
# own (tiny: refine sampling, fused decoder; paper: the dense grid, lean engine, SAM's decoder), the
# tiny preset's sampling through SAM's own decoder, and the dense grid through the lean engine and
# the stock class (identical masks).
DEFAULT_MODES = {
    "tiny": {
        "preset": {},
        "sam_decoder": {"decoder": "sam"},
        "dense_grid": {"sampling": "grid", "points_per_side": 16},
        "dense_grid_stock": {"sampling": "grid", "points_per_side": 16, "engine": "segment_anything", "decoder": "sam"},
    },
    "paper": {
        "preset": {},
        "dense_grid_stock": {"sampling": "grid", "points_per_side": 32, "engine": "segment_anything"},
    },
}
DEFAULT_FRAME = {"tiny": (256, 256), "paper": (768, 1024), "paper_llava15": (768, 1024)}
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
# `llava_full`: the 7B itself (a Vicuna / LLaMA-7B of 32 layers of width 4096, all of CLIP ViT-L/14's
# 24 layers) at the preset's image size: about 7 billion parameters, for a GPU.
LLAVA_7B = {
    "vision_layers": 24, "text_hidden": 4096, "text_layers": 32, "text_heads": 32, "text_intermediate": 11008,
    "max_positions": 4096,
}
CLOCKS = ("wall", "process")
RECALL_SPLITS = ("val", "test")  # held out: never the train split


@dataclass
class LatencyConfig:
    """One latency run."""

    preset: str = "tiny"  # tiny | paper | paper_llava15, or a saved llmseg_config.json
    model: dict = field(default_factory=dict)  # nested overrides of LLMSegConfig, on the preset's values
    random_weights: bool = False  # random SAM, DINOv2 and LLaVA of the configured shapes, no weights read
    dinov2: dict = field(default_factory=dict)  # Dinov2Config overrides for random weights, e.g. {num_hidden_layers: 2}
    modes: dict = field(default_factory=dict)  # proposal mode name -> ProposalConfig overrides; empty: the preset's DEFAULT_MODES
    # Proposal modes in the short form NAME[:key=value,...] (e.g. refine5:points_per_side=5); given,
    # they replace `modes`.
    mode: list[str] = field(default_factory=list)
    frames: int = bounded(8, ge=1)  # distinct procedural test-split frames
    frame_height: int = bounded(0, ge=0)  # 0: the preset's default frame (tiny 256x256, paper 768x1024)
    frame_width: int = bounded(0, ge=0)  # 0: the preset's default frame
    iterations: int = bounded(2, ge=1)  # passes over the frames
    warmup: int = bounded(1, ge=0)  # first measurements (frames of the first pass) left out
    recall_scenes: int = bounded(0, ge=0)  # held-out scenes for each mode's proposal recall (0: skip)
    instructions: int = bounded(8, ge=0)  # instructions per frame for the per-instruction half (0: skip it)
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 8])  # query_batch sizes measured (<= instructions)
    llava: dict = field(default_factory=dict)  # TinyLlavaConfig overrides of RANDOM_LLAVA's shape, for random weights
    llava_full: bool = False  # random weights: the LLaVA at the 7B's full shape (LLAVA_7B), not RANDOM_LLAVA's CPU cut
    # Time the whole LLMSeg.prepare per mode (with random weights: the preset mode only, on the random
    # LLaVA, with SAM's own proposals); off, only its parts are timed.
    prepare: bool = True
    recall_split: str = one_of("val", RECALL_SPLITS)  # the held-out split of the recall scenes
    device: str = "cpu"  # torch device, e.g. cuda
    clock: str = one_of("wall", CLOCKS)  # wall, or process: this process's CPU time (steadier on a shared CPU)
    threads: int = bounded(0, ge=0)  # torch threads; 0 leaves torch's default
    seed: int = 0  # random weights and frame choice
    output_dir: str = "outputs/latency"  # latency.json and latency.md
    progress: bool = True  # a progress bar over the frames

    def __post_init__(self) -> None:
        if self.mode:  # the short form replaces the mapping
            self.modes, self.mode = parse_modes(self.mode), []
        check_fields(self)
        if self.warmup >= self.frames * self.iterations:
            raise ValueError(f"warmup ({self.warmup}) leaves no measured frame of {self.frames} x {self.iterations}")
        if self.instructions and (not self.batch_sizes or min(self.batch_sizes) < 1 or max(self.batch_sizes) > self.instructions):
            raise ValueError(f"batch_sizes {self.batch_sizes} must lie in [1, instructions={self.instructions}]")
        if self.clock == "process" and self.device.startswith("cuda"):
            raise ValueError("clock 'process' measures CPU time: use the wall clock on a GPU")
        self.mode_configs()  # the preset exists and every override is a valid setting

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LatencyConfig":
        """Build from a (possibly partial) mapping, as a YAML file gives it."""
        return from_mapping(cls, data)

    def model_config(self) -> LLMSegConfig:
        return model_settings(self.preset, self.model)

    def mode_configs(self) -> dict[str, ProposalConfig]:
        """Every proposal mode as a full ProposalConfig (the preset's, overridden)."""
        base = dataclasses.asdict(self.model_config().proposals)
        modes = self.modes or DEFAULT_MODES.get(self.preset, {"preset": {}})
        out = {}
        for name, overrides in modes.items():
            if not isinstance(overrides, dict):
                raise ValueError(f"modes.{name}: expected a mapping of ProposalConfig settings, got {overrides!r}")
            try:
                out[name] = from_mapping(ProposalConfig, merge_nested(base, overrides))
            except ValueError as err:
                raise ValueError(f"modes.{name}: {err}") from None
        return out

    def frame_size(self) -> tuple[int, int]:
        default = DEFAULT_FRAME.get(self.preset, (256, 256))
        return (self.frame_height or default[0], self.frame_width or default[1])


def parse_modes(texts: list[str]) -> dict[str, dict[str, Any]]:
    """Proposal modes from their short form NAME[:key=value,...] (values read as YAML)."""
    import yaml

    modes: dict[str, dict[str, Any]] = {}
    for i, text in enumerate(texts):
        name, _, rest = text.partition(":")
        overrides = {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"mode[{i}] {text!r}: expected key=value, got {item!r}")
            overrides[key.strip()] = yaml.safe_load(value)
        if not name:
            raise ValueError(f"mode[{i}] {text!r}: give the mode a name")
        modes[name] = overrides
    return modes


# ---------------------------------------------------------------------------------- building


def build_parts(config: LatencyConfig) -> tuple[Sam, MaskFeatureExtractor]:
    """SAM and DINOv2 (+ the pooling projection) of the configured shapes, on the device, built as
    `LLMSeg.from_config` builds them (DINOv2's dtype and position-embedding rule included)."""
    import torch
    from transformers import Dinov2Model

    from llmseg_model.modeling.features import HubInterpolationEmbeddings, MaskFeatureExtractor, load_dinov2
    from llmseg_model.modeling.model import vlm_dtype
    from llmseg_model.modeling.proposals import build_sam

    model_config = config.model_config()
    dtype = vlm_dtype(model_config.features.dtype, config.device.startswith("cuda"), "features.dtype")
    if config.random_weights:
        torch.manual_seed(config.seed)
        with building_on(config.device):  # initialised where they run: ViT-H alone is 2.5 GB
            sam = build_sam(model_config.sam)
            dinov2 = Dinov2Model(_random_dinov2_config(config, model_config))
            if model_config.features.pos_embed == "hub":  # as load_dinov2 sets it up
                hub = HubInterpolationEmbeddings(dinov2.config)
                hub.load_state_dict(dinov2.embeddings.state_dict())
                dinov2.embeddings = hub
        dinov2 = dinov2.to(dtype)
    else:
        if not model_config.weights.sam_checkpoint or not model_config.weights.dinov2_path:
            raise ValueError("no SAM / DINOv2 weights configured: set model.weights.* or pass --random-weights")
        sam = build_sam(model_config.sam, model_config.weights.sam_checkpoint)
        dinov2 = load_dinov2(model_config.weights.dinov2_path, model_config.features, dtype)
    features = MaskFeatureExtractor(dinov2, model_config.features)
    return sam.to(config.device).eval(), features.to(config.device).eval()


def _random_dinov2_config(config: LatencyConfig, model_config: LLMSegConfig) -> Any:
    """The DINOv2 architecture of the preset's weight folder when it has one, else ViT-L/14 (at
    the hub checkpoint's 518 px grid; larger inputs interpolate its position embeddings);
    `config.dinov2` overrides either."""
    from transformers import Dinov2Config

    folder = Path(model_config.weights.dinov2_path) if model_config.weights.dinov2_path else None
    if folder is not None and (folder / "config.json").is_file():
        dinov2 = Dinov2Config.from_pretrained(str(folder), local_files_only=True)
    else:
        dinov2 = Dinov2Config(**DINOV2_VITL14)
    for key, value in config.dinov2.items():
        if not hasattr(dinov2, key):
            raise ValueError(f"dinov2: unknown Dinov2Config setting {key!r}")
        setattr(dinov2, key, value)
    return dinov2


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


def build_prepare_models(config: LatencyConfig, modes: dict[str, ProposalConfig], parts: tuple[Any, Any]) -> dict[str, Any]:
    """One LLMSeg per proposal mode (the whole `prepare`). With random weights only the preset
    mode's, on a random LLaVA around `parts` (build_random_model), since that takes one LLaVA."""
    if not config.prepare:
        return {}
    if config.random_weights:
        return {"preset": build_random_model(config, parts, modes["preset"])} if "preset" in modes else {}
    from llmseg_model.modeling.model import LLMSeg

    models = {}
    for name, proposals in modes.items():
        model_config = config.model_config()
        model_config.proposals = proposals
        models[name] = LLMSeg.from_config(model_config, device=config.device)
    return models


def build_query_model(config: LatencyConfig, prepare_models: dict[str, Any], parts: tuple[Any, Any]) -> Any:
    """The LLMSeg whose instructions are timed: the preset-mode model when there is one, else the
    preset's model from its weights, or one of random parts (build_random_model)."""
    if "preset" in prepare_models:
        return prepare_models["preset"]
    if not config.random_weights:
        from llmseg_model.modeling.model import LLMSeg

        return LLMSeg.from_config(config.model_config(), device=config.device)
    return build_random_model(config, parts, config.model_config().proposals)


def build_random_model(config: LatencyConfig, parts: tuple[Any, Any], proposals: ProposalConfig) -> Any:
    """An LLMSeg of random weights around the frame half's SAM and DINOv2 (`parts`, from
    build_parts): a random LLaVA of the preset's RANDOM_LLAVA shape (LLAVA_7B with `llava_full`)
    built on the device in its run-time dtype, a word-level tokenizer, random fusion heads."""
    import torch

    from llmseg_model.data.procedural import vocabulary_texts
    from llmseg_model.modeling.model import LLMSeg, vlm_dtype
    from llmseg_model.modeling.proposals import ProposalGenerator
    from llmseg_model.modeling.vlm import SegVLM
    from llmseg_model.tiny.llava import TinyLlavaConfig, build_tiny_llava, train_tokenizer

    model_config = config.model_config()
    model_config.proposals = proposals
    sam, features = parts
    shape = {**RANDOM_LLAVA.get(config.preset, {}), **(LLAVA_7B if config.llava_full else {}), **config.llava}
    torch.manual_seed(config.seed)
    tokenizer = train_tokenizer(vocabulary_texts(), model_config.vlm)
    with building_on(config.device, vlm_dtype(model_config.vlm.dtype, config.device.startswith("cuda"))):
        llava, processor = build_tiny_llava(tokenizer, TinyLlavaConfig(**shape))
    vlm = SegVLM(llava, tokenizer, processor, model_config.vlm)
    model = LLMSeg(model_config, ProposalGenerator(sam, model_config.proposals), features, vlm)
    return model.to(config.device).eval()


def synthetic_proposals(image: np.ndarray, count: int, lowres: Any) -> Any:
    """`count` disc and box masks laid over the frame, for timing without a SAM pass."""
    from llmseg_model.modeling.proposals import Proposals

    height, width = image.shape[:2]
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:height, :width]
    masks = []
    for _ in range(count):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.05, 0.3) * min(height, width)
        masks.append((rows - cy) ** 2 + (cols - cx) ** 2 <= r * r if rng.random() < 0.5 else (np.abs(rows - cy) <= r) & (np.abs(cols - cx) <= r))
    return Proposals.from_masks(np.stack(masks), lowres.lowres_size, lowres_layout=lowres.lowres_layout)


def frame_instructions(config: LatencyConfig) -> list[list[str]]:
    """Each frame's instructions: its own scene's (the frames are these scenes' images), topped up
    with those of later held-out scenes when a frame needs more."""
    from llmseg_model.data.procedural import SPLITS, ProceduralConfig, generate_scene

    height, width = config.frame_size()
    scene_config = ProceduralConfig(height=height, width=width)

    def texts(index: int) -> list[str]:
        return [i.text for i in generate_scene(scene_config, (config.seed, SPLITS["test"], index)).instructions]

    out = []
    for f in range(config.frames):
        own, extra = texts(f), config.frames
        while len(own) < config.instructions:
            own += texts(extra)
            extra += 1
        out.append(own[: config.instructions])
    return out


def frames(config: LatencyConfig) -> list[np.ndarray]:
    """Procedural test-split scenes of the configured size (never seen in training)."""
    from llmseg_model.data.procedural import SPLITS, ProceduralConfig, render_scene

    height, width = config.frame_size()
    scene_config = ProceduralConfig(height=height, width=width)
    return [render_scene(scene_config, (config.seed, SPLITS["test"], i)).image for i in range(config.frames)]


# ---------------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Clock:
    """How one quantity is timed: wall time (CUDA synchronised around it), or this process's CPU
    time, which on a CPU shared with other jobs moves far less with their load (with one torch
    thread it is the work done; with several it adds up every thread's time)."""

    device: str = "cpu"
    kind: str = "wall"

    def seconds(self, run: Callable[[], Any]) -> tuple[float, Any]:
        now = time.perf_counter if self.kind == "wall" else time.process_time
        self._synchronise()
        start = now()
        out = run()
        self._synchronise()
        return now() - start, out

    def _synchronise(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()


def sam_encoder_seconds(sam: Sam, image: np.ndarray, clock: Clock) -> float:
    """SAM's image encoder alone, on the frame resized and padded as SamPredictor does."""
    import torch
    from segment_anything.utils.transforms import ResizeLongestSide

    with torch.inference_mode():
        resized = ResizeLongestSide(sam.image_encoder.img_size).apply_image(image)
        pixels = sam.preprocess(torch.as_tensor(resized, device=clock.device).permute(2, 0, 1).contiguous()[None])
        return clock.seconds(lambda: sam.image_encoder(pixels))[0]


def proposal_seconds(generator: ProposalGenerator, image: np.ndarray, clock: Clock) -> tuple[float, int, int]:
    """Everything mode as `prepare` runs it; returns the seconds, the prompts decoded and the
    proposals kept (random SAM weights keep few: post-processing then costs little)."""
    seconds, (proposals, prompts) = clock.seconds(lambda: generator.propose(image))
    return seconds, prompts, proposals.count


def dinov2_seconds(features: MaskFeatureExtractor, image: np.ndarray, clock: Clock) -> float:
    """DINOv2 patch features of one frame (preprocessing included, pooling not)."""
    import torch

    with torch.inference_mode():
        return clock.seconds(lambda: features.patch_features(features.preprocess(image).to(clock.device)))[0]


def prepare_seconds(model: Any, image: np.ndarray, clock: Clock, overlap: bool | None = None) -> tuple[float, dict[str, float]]:
    """The whole `LLMSeg.prepare` (its own choice of overlapping the image branch with SAM unless
    `overlap` says), and its own per-stage timings (always wall time)."""
    seconds, frame = clock.seconds(lambda: model.prepare(image, overlap=overlap))
    return seconds, dict(frame.timings)


def plain_instruction_seconds(model: Any, frame: Any, text: str, clock: Clock) -> float:
    """One instruction the way it ran before the prompt cache: the whole prompt from scratch, the
    answer generated, then fusion and selection."""
    from dataclasses import replace

    uncached = replace(frame, prefix=None)
    answer_mode = model.vlm.config.answer_mode
    model.vlm.config.answer_mode = "generate"
    try:
        return clock.seconds(lambda: model.query(uncached, text))[0]
    finally:
        model.vlm.config.answer_mode = answer_mode


def lower_bound_seconds(model: Any, frame: Any, text: str, clock: Clock) -> float:
    """One language-model forward of the instruction and the preset's answer tokens on the
    frame's cached prompt: no decoding, no LM head, no fusion."""
    import torch

    vlm = model.vlm
    prompt = vlm.prompts.prompt_ids(vlm.prompts.question(text), frame.image_features.shape[1])
    _, answer, _ = vlm._given(text)
    tail, prefix = vlm._tail(prompt + answer, frame.prefix)
    with torch.inference_mode():
        return clock.seconds(lambda: vlm._forward_rows([tail], frame.image_features, prefix))[0]


def llm_seconds(model: Any, frame: Any, text: str, clock: Clock) -> float:
    """The language-model stage of one instruction on the frame's cached prompt, in the preset's
    answer mode (tokenising, the forward, the answer check, the <SEG> projection)."""
    return clock.seconds(lambda: model.vlm.answer_batch(frame.image_features, [text], prefix=frame.prefix))[0]


def batch_seconds(model: Any, frame: Any, texts: list[str], clock: Clock) -> tuple[float, list[Any]]:
    """LLMSeg.query_batch for all of `texts` on the prepared frame (whole time), and its results."""
    return clock.seconds(lambda: model.query_batch(frame, texts))


def proposal_recall(sam: Sam, proposals: ProposalConfig, split: str, count: int, seed: int) -> dict[str, float]:
    """Best-proposal IoU per object and recall@0.5 / 0.75 on held-out procedural scenes."""
    from llmseg_model.tiny.pretrain import evaluate_proposals, validation_scenes

    result = evaluate_proposals(sam, proposals, validation_scenes(count, seed, split=split))
    result.pop("seconds_per_image")  # timings come from the interleaved measurement
    return result


def recall_per_mode(sam: Sam, modes: dict[str, ProposalConfig], config: LatencyConfig) -> dict[str, dict[str, float]]:
    """`proposal_recall` of every mode; modes that only differ in speed (the same cache identity,
    e.g. another engine) share one measurement."""
    from llmseg_model.data.proposal_cache import proposal_identity

    measured: dict[str, dict[str, float]] = {}
    out = {}
    for name, proposals in modes.items():
        key = json.dumps(proposal_identity(proposals), sort_keys=True)
        if key not in measured:
            measured[key] = proposal_recall(sam, proposals, config.recall_split, config.recall_scenes, config.seed)
        out[name] = measured[key]
    return out


# ---------------------------------------------------------------------------------- running


def run_latency(config: LatencyConfig) -> dict[str, Any]:
    """Measure every quantity frame by frame, write latency.json / latency.md, return the report."""
    import torch

    from llmseg_model.modeling.proposals import ProposalGenerator

    if config.threads > 0:
        torch.set_num_threads(config.threads)
    memory = GpuMemory(config.device)
    modes = config.mode_configs()
    sam, features = build_parts(config)
    generators = {name: ProposalGenerator(sam, proposals) for name, proposals in modes.items()}
    models = build_prepare_models(config, modes, (sam, features))
    memory.mark("models")
    images = frames(config)
    clock = Clock(config.device, config.clock)
    samples: dict[str, list[float]] = {}
    prompts: dict[str, list[tuple[int, int]]] = {}
    stages: dict[str, dict[str, list[float]]] = {}
    steps = [(i, image) for i in range(config.iterations) for image in images]
    for step, (_, image) in enumerate(tqdm(steps, desc="latency", unit="frame", disable=not config.progress)):
        measured: dict[str, float] = {"sam_encoder": sam_encoder_seconds(sam, image, clock)}
        for name, generator in generators.items():
            measured[f"proposals/{name}"], count, kept = proposal_seconds(generator, image, clock)
            prompts.setdefault(name, []).append((count, kept))
        measured["dinov2"] = dinov2_seconds(features, image, clock)
        for name, model in models.items():
            measured[f"prepare/{name}"], timings = prepare_seconds(model, image, clock)
            if step >= config.warmup:
                for stage, seconds in timings.items():
                    stages.setdefault(name, {}).setdefault(stage, []).append(seconds)
            if name == "preset" and model.device.type == "cpu":  # where prepare overlaps its branches
                measured["prepare_serial/preset"] = prepare_seconds(model, image, clock, overlap=False)[0]
        if step >= config.warmup:
            for key, seconds in measured.items():
                samples.setdefault(key, []).append(seconds)
    memory.mark("frames")
    if config.instructions:
        instruction_samples(config, build_query_model(config, models, (sam, features)), images, clock, samples)
        memory.mark("instructions")
    report = latency_report(config, samples, prompts, stages)
    if memory.marks:
        report["gpu_memory_gib"] = memory.marks
    if config.recall_scenes:
        report["recall"] = recall_per_mode(sam, modes, config)
    write_report(report, config.output_dir)
    return report


def instruction_samples(config: LatencyConfig, model: Any, images: list[np.ndarray], clock: Clock, samples: dict[str, list[float]]) -> None:
    """The per-instruction half: each frame prepared once (the prompt prefix included), then its
    instructions answered every way, interleaved frame by frame, on `model` (build_query_model)."""
    texts = frame_instructions(config)
    steps = [(i, f) for i in range(config.iterations) for f in range(len(images))]
    for step, (_, f) in enumerate(tqdm(steps, desc="latency (instructions)", unit="frame", disable=not config.progress)):
        proposals = synthetic_proposals(images[f], 24, model.config.proposals) if config.random_weights else None
        frame = model.prepare(images[f], proposals=proposals)
        measured = {f"frame/{stage}": seconds for stage, seconds in frame.timings.items()}  # proposals given: not timed
        measured |= {
            "instruction/plain": plain_instruction_seconds(model, frame, texts[f][0], clock),
            "instruction/lower_bound": lower_bound_seconds(model, frame, texts[f][0], clock),
            "instruction/llm": llm_seconds(model, frame, texts[f][0], clock),
        }
        for size in config.batch_sizes:
            seconds, results = batch_seconds(model, frame, texts[f][:size], clock)
            measured[f"instruction/batch_{size}"] = seconds / size
            if size == 1:
                measured |= {f"instruction/{stage}": results[0].timings[stage] for stage in ("fusion", "selection")}
        if step >= config.warmup:
            for key, seconds in measured.items():
                samples.setdefault(key, []).append(seconds)


class GpuMemory:
    """CUDA memory at the run's milestones: what is allocated there (weights and caches held) and
    the peak so far (the largest working set), in GiB; nothing on a CPU."""

    def __init__(self, device: str) -> None:
        import torch

        self.device = torch.device(device) if device.startswith("cuda") else None
        self.marks: dict[str, dict[str, float]] = {}
        if self.device is not None:
            torch.cuda.reset_peak_memory_stats(self.device)

    def mark(self, name: str) -> None:
        import torch

        if self.device is not None:
            gib = 1024.0**3
            self.marks[name] = {
                "allocated": torch.cuda.memory_allocated(self.device) / gib,
                "peak": torch.cuda.max_memory_allocated(self.device) / gib,
            }


def latency_report(
    config: LatencyConfig,
    samples: dict[str, list[float]],
    prompts: dict[str, list[tuple[int, int]]],
    stages: dict[str, dict[str, list[float]]],
) -> dict[str, Any]:
    """Statistics of every measured quantity and its ratio to the SAM encoder's median."""
    from llmseg_model.benchmark import latency_stats

    unit = float(np.median(samples["sam_encoder"]))
    bound = float(np.median(samples["instruction/lower_bound"])) if "instruction/lower_bound" in samples else None
    quantities = {}
    for key, values in samples.items():
        stats = latency_stats(values)
        stats["ratio_to_encoder"] = float(np.median(values)) / unit
        if key.startswith("instruction/") and bound:
            stats["ratio_to_lower_bound"] = float(np.median(values)) / bound
        mode = key.split("/", 1)[1] if "/" in key else None
        if key.startswith("proposals/"):
            stats["prompts_per_frame"] = float(np.mean([p for p, _ in prompts[mode]]))
            stats["proposals_per_frame"] = float(np.mean([k for _, k in prompts[mode]]))
        if key.startswith("prepare/"):
            stats["stages"] = {stage: latency_stats(v) for stage, v in stages.get(mode, {}).items()}
        quantities[key] = stats
    batches = {int(k.rsplit("_", 1)[1]): float(np.median(v)) * int(k.rsplit("_", 1)[1]) for k, v in samples.items() if k.startswith("instruction/batch_")}
    if 1 in batches:  # a batch's whole time over one instruction's
        for size, seconds in batches.items():
            quantities[f"instruction/batch_{size}"]["batch_over_one"] = seconds / batches[1]
    model_config = config.model_config()
    return {
        "config": dataclasses.asdict(config),
        "preset": model_config.preset,
        "frame_size": list(config.frame_size()),
        "platform": _platform(config.device),
        "modes": {name: dataclasses.asdict(p) for name, p in config.mode_configs().items()},
        "quantities": quantities,
    }


def _platform(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


# ---------------------------------------------------------------------------------- reports


def markdown_report(report: dict[str, Any]) -> str:
    """The quantities (and recall, when measured) as markdown tables."""
    platform_info = report["platform"]
    where = platform_info.get("gpu") or f"{platform_info['device']} ({platform_info['torch_threads']} torch threads)"
    height, width = report["frame_size"]
    lines = [
        "# Frame latency",
        "",
        f"Preset `{report['preset']}`, {width}x{height} frames, on {where}; {report['config']['clock']} clock, "
        "medians of interleaved runs.",
        "",
        "| quantity | median ms | p95 ms | x encoder | prompts | proposals | n |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, stats in report["quantities"].items():
        if key.startswith("instruction/"):
            continue
        prompts, kept = stats.get("prompts_per_frame"), stats.get("proposals_per_frame")
        lines.append(
            f"| {key} | {stats['median_ms']:.1f} | {stats['p95_ms']:.1f} | {stats['ratio_to_encoder']:.1f} | "
            f"{'-' if prompts is None else f'{prompts:.0f}'} | {'-' if kept is None else f'{kept:.1f}'} | {stats['count']} |"
        )
    if "prepare_serial/preset" in report["quantities"]:
        lines += [
            "",
            "`prepare/*` computes the image branch (DINOv2, LLaVA image tokens, prompt prefix) on a second thread "
            "while SAM proposes (the CPU default); `prepare_serial/preset` runs them one after the other. "
            + (
                "The process clock adds up both threads' CPU time, so only the wall clock shows what the overlap saves."
                if report["config"]["clock"] == "process"
                else "Both use the same cores: the overlap's gain is the wall time the branches spend side by side."
            ),
        ]
    instructions = {k: v for k, v in report["quantities"].items() if k.startswith("instruction/")}
    if instructions:
        lines += [
            "",
            f"Per instruction ({report['config']['instructions']} instructions a frame; batch_N is per instruction):",
            "",
            "| quantity | median ms | p95 ms | x lower bound | batch time x one |",
            "|---|---:|---:|---:|---:|",
        ]
        for key, stats in instructions.items():
            over_one = stats.get("batch_over_one")
            lines.append(
                f"| {key} | {stats['median_ms']:.1f} | {stats['p95_ms']:.1f} | {stats.get('ratio_to_lower_bound', float('nan')):.2f} | "
                f"{'-' if over_one is None else f'{over_one:.2f}'} |"
            )
    if report.get("gpu_memory_gib"):
        lines += ["", "GPU memory (GiB; allocated at each point, and the peak so far):", "", "| after | allocated | peak |", "|---|---:|---:|"]
        for name, gib in report["gpu_memory_gib"].items():
            lines.append(f"| {name} | {gib['allocated']:.2f} | {gib['peak']:.2f} |")
    if report.get("recall"):
        split = report["config"]["recall_split"]
        lines += [
            "",
            f"Proposal recall on {report['config']['recall_scenes']} held-out {split} scenes:",
            "",
            "| mode | best IoU per object | recall@0.5 | recall@0.75 | proposals |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, r in report["recall"].items():
            lines.append(
                f"| {name} | {r['mean_best_iou']:.4f} | {r['recall@0.5']:.4f} | {r['recall@0.75']:.4f} | "
                f"{r['proposals_per_image']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], output_dir: str | Path) -> None:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "latency.json").write_text(json.dumps(report, indent=1) + "\n")
    (output_dir / "latency.md").write_text(markdown_report(report))
    logger.info("latency report written to %s", output_dir)


# ---------------------------------------------------------------------------------- CLI


def check_paths(config: LatencyConfig) -> None:
    """What must exist before anything loads: the model's weights, unless they are random."""
    if not config.random_weights:
        config.model_config().weights.check_exist(trained=True, prefix="model.weights.")


def run(config: LatencyConfig) -> dict[str, Any]:
    """The command's work: the measurement, its report logged."""
    report = run_latency(config)
    logger.info("\n%s", markdown_report(report))
    return report


COMMAND = Command(
    name="llmseg-latency",
    module="llmseg_model.latency",
    config=LatencyConfig,
    run=run,
    description="Per-frame latency of SAM proposals (per mode), DINOv2 and prepare, as ratios to SAM's image encoder.",
    model_field="model",
    check=check_paths,
    outputs=lambda config: [config.output_dir],
    uses_transformers=True,
)


run_cli = COMMAND.run_cli
main = COMMAND.main


if __name__ == "__main__":
    main()
