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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from llmseg_model.cli import Command
from llmseg_model.config import LLMSegConfig, ProposalConfig, bounded, check_fields, from_mapping, merge_nested, model_settings, one_of
from llmseg_model.evaluation.latency_report import latency_quantities, markdown_report, write_report
from llmseg_model.evaluation.random_models import build_random_model, llava_shape, random_backbones, synthetic_proposals
from llmseg_model.evaluation.stats import platform_info
from llmseg_model.evaluation.timing import (
    Clock,
    GpuMemory,
    batch_seconds,
    dinov2_seconds,
    llm_seconds,
    lower_bound_seconds,
    plain_instruction_seconds,
    prepare_seconds,
    proposal_seconds,
    sam_encoder_seconds,
)

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

    from llmseg_model.modeling.features import MaskFeatureExtractor
    from llmseg_model.modeling.model import LLMSeg

logger = logging.getLogger(__name__)

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
    from llmseg_model.modeling.features import MaskFeatureExtractor, load_dinov2
    from llmseg_model.modeling.model import vlm_dtype
    from llmseg_model.modeling.proposals import build_sam

    model_config = config.model_config()
    dtype = vlm_dtype(model_config.features.dtype, config.device.startswith("cuda"), "features.dtype")
    if config.random_weights:
        sam, dinov2 = random_backbones(model_config, config.dinov2, config.device, config.seed, dtype)
    else:
        if not model_config.weights.sam_checkpoint or not model_config.weights.dinov2_path:
            raise ValueError("no SAM / DINOv2 weights configured: set model.weights.* or pass --random-weights")
        sam = build_sam(model_config.sam, model_config.weights.sam_checkpoint)
        dinov2 = load_dinov2(model_config.weights.dinov2_path, model_config.features, dtype)
    features = MaskFeatureExtractor(dinov2, model_config.features)
    return sam.to(config.device).eval(), features.to(config.device).eval()


def build_prepare_models(config: LatencyConfig, modes: dict[str, ProposalConfig], parts: tuple[Any, Any]) -> dict[str, Any]:
    """One LLMSeg per proposal mode (the whole `prepare`). With random weights only the preset
    mode's, on a random LLaVA around `parts` (random_model), since that takes one LLaVA."""
    if not config.prepare:
        return {}
    if config.random_weights:
        return {"preset": random_model(config, parts, modes["preset"])} if "preset" in modes else {}
    from llmseg_model.modeling.model import LLMSeg

    models = {}
    for name, proposals in modes.items():
        model_config = config.model_config()
        model_config.proposals = proposals
        models[name] = LLMSeg.from_config(model_config, device=config.device)
    return models


def build_query_model(config: LatencyConfig, prepare_models: dict[str, Any], parts: tuple[Any, Any]) -> Any:
    """The LLMSeg whose instructions are timed: the preset-mode model when there is one, else the
    preset's model from its weights, or one of random parts (random_model)."""
    if "preset" in prepare_models:
        return prepare_models["preset"]
    if not config.random_weights:
        from llmseg_model.modeling.model import LLMSeg

        return LLMSeg.from_config(config.model_config(), device=config.device)
    return random_model(config, parts, config.model_config().proposals)


def random_model(config: LatencyConfig, parts: tuple[Any, Any], proposals: ProposalConfig) -> LLMSeg:
    """The preset's LLMSeg with `proposals`, random weights and the configured LLaVA shape
    (`random_models.llava_shape`), around `parts` (build_parts)."""
    model_config = config.model_config()
    model_config.proposals = proposals
    shape = llava_shape(config.preset, config.llava_full, config.llava)
    return build_random_model(model_config, parts, shape, config.device, config.seed)


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
    answering = None
    if config.instructions:
        query_model = build_query_model(config, models, (sam, features))
        instruction_samples(config, query_model, images, clock, samples)
        memory.mark("instructions")
        vlm = query_model.vlm
        answering = {
            "answer_mode": vlm.config.answer_mode,
            "prefix_attention": vlm.config.prefix_attention,
            "shares_prefix": vlm.shares_prefix(query_model.device),
        }
    report = latency_report(config, samples, prompts, stages)
    if answering:
        report["answering"] = answering
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


def latency_report(
    config: LatencyConfig,
    samples: dict[str, list[float]],
    prompts: dict[str, list[tuple[int, int]]],
    stages: dict[str, dict[str, list[float]]],
) -> dict[str, Any]:
    """The run's report: its settings, the machine, the modes and every quantity's statistics
    (`latency_quantities`)."""
    model_config = config.model_config()
    return {
        "config": dataclasses.asdict(config),
        "preset": model_config.preset,
        "frame_size": list(config.frame_size()),
        "platform": platform_info(config.device),
        "modes": {name: dataclasses.asdict(p) for name, p in config.mode_configs().items()},
        "quantities": latency_quantities(samples, prompts, stages),
    }


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
