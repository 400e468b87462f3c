"""ReasonSeg-style benchmark: gIoU / cIoU at native resolution and per-stage latency.

    python -m llmseg_model.benchmark --config config/benchmark_tiny.yaml

Methods:
  llmseg      the model: `prepare` once per image, `query` once per instruction.
  oracle_iop  union of the proposals whose IoP against the ground truth is >= `oracle_iop`
              (what a perfect IoP head with LLM-Seg's selection rule would return).
  oracle_iou  the single proposal with the best IoU (empty when none overlaps the target).
  random      every proposal kept with probability `random_prob` (a uniformly random subset at 0.5).
The baselines need only proposals: from the proposal cache when `cache_dir` is set, otherwise from
the frame the model prepared, so they show how much of the score the proposals allow.

Modes: `first` scores the first instruction of every sample (LISA's ReasonSeg evaluation),
`all` scores every instruction. Per-image IoU treats both-empty as 1.0; ignore pixels (255) are
excluded. `scoring: native` scores at the image's resolution (LISA, the published LLM-Seg40K
script); `scoring: resize1024` resizes prediction and ground truth to 1024x1024 first, as the
published ReasonSeg evaluation does (llmseg_model/metrics.py).
Writes results.json, results.md, benchmark.png and examples/ (pictures of answers) into `output_dir`.
torch and the model are imported when the benchmark starts, after its settings are checked.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from tqdm import tqdm

from llmseg_model.cli import Command, check_data_paths, data_specs, require_existing
from llmseg_model.config import SCORINGS, LLMSegConfig, bounded, check_fields, from_mapping, model_settings, one_of
from llmseg_model.data.mixing import DatasetSpec, build_dataset
from llmseg_model.data.sample import SegSample
from llmseg_model.evaluation.baselines import oracle_iop_selection, oracle_iou_selection, random_selection, union_mask
from llmseg_model.evaluation.benchmark_report import markdown_report, ordered_stages, save_example, write_report
from llmseg_model.evaluation.stats import latency_stats, platform_info

if TYPE_CHECKING:
    from llmseg_model.metrics import IoUAccumulator

logger = logging.getLogger(__name__)

METHODS = ("llmseg", "oracle_iop", "oracle_iou", "random")
MODES = ("first", "all")


@dataclass
class BenchmarkConfig:
    """One benchmark run; loadable from YAML (see config/benchmark_*.yaml)."""

    preset: str = "tiny"  # tiny | paper | paper_llava15, or a saved llmseg_config.json
    model: dict = field(default_factory=dict)  # nested overrides of LLMSegConfig, e.g. {weights: {llava_path: ...}}
    datasets: list[DatasetSpec] = field(
        default_factory=lambda: [DatasetSpec(kind="procedural", split="test", size=25)]
    )
    # Data sets in the short form kind:target[,key=value...] (e.g. procedural:test,size=5 or
    # reasonseg:data/ReasonSeg/val); given, they replace `datasets`.
    data: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=lambda: list(METHODS), metadata={"choices": METHODS})
    # first: the first instruction of every sample (LISA's ReasonSeg evaluation); all: every one.
    modes: list[str] = field(default_factory=lambda: list(MODES), metadata={"choices": MODES})
    cache_dir: str = ""  # proposal cache for the baselines; empty: use the model's own proposals
    output_dir: str = "outputs/benchmark"  # results.json, results.md, benchmark.png, examples/
    device: str = "cpu"  # torch device, e.g. cuda
    warmup: int = bounded(1, ge=0)  # images whose timings are left out of the latency statistics
    seed: int = 0
    oracle_iop: float = bounded(0.5, gt=0.0, le=1.0)  # IoP a proposal needs to join the oracle_iop answer
    random_prob: float = bounded(0.5, ge=0.0, le=1.0)  # chance each proposal joins the random answer
    scoring: str = one_of("native", SCORINGS)  # native | resize1024 (the published ReasonSeg evaluation)
    progress: bool = True  # a progress bar per data set
    examples: int = bounded(8, ge=0)  # pictures of the model's first answers, in output_dir/examples (0: none)

    def __post_init__(self) -> None:
        if self.data:  # the short form replaces the list of mappings
            self.datasets, self.data = data_specs(self.data), []
        check_fields(self)
        if not self.methods or not self.modes:
            raise ValueError("give at least one method and one mode")
        if not self.datasets:
            raise ValueError("benchmark needs at least one data set")
        if "llmseg" not in self.methods and not self.cache_dir:
            raise ValueError("the baselines need proposals: set cache_dir, or include the llmseg method")
        self.model_config()  # the preset exists and the model overrides are valid

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BenchmarkConfig":
        """Build from a (possibly partial) mapping, as a YAML file gives it."""
        return from_mapping(cls, data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "BenchmarkConfig":
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})

    def model_config(self) -> LLMSegConfig:
        return model_settings(self.preset, self.model)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Scores:
    """Accumulators per (data set, group, mode, method)."""

    accumulators: dict[tuple[str, str, str, str], IoUAccumulator] = field(default_factory=dict)

    def add(self, dataset: str, group: str, mode: str, method: str, intersection: int, union: int) -> None:
        from llmseg_model.metrics import IoUAccumulator

        for g in ("all", group) if group else ("all",):
            self.accumulators.setdefault((dataset, g, mode, method), IoUAccumulator()).add_counts(intersection, union)

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"dataset": d, "group": g, "mode": mode, "method": m, **acc.summary()}
            for (d, g, mode, m), acc in self.accumulators.items()
        ]


# ---------------------------------------------------------------------------------- running


def run_benchmark(config: BenchmarkConfig, model: Any = None) -> dict[str, Any]:
    """Score every method on every data set; write and return the report.

    `model`: an LLMSeg to use instead of building one from the config (tests pass a ready one).
    """
    from llmseg_model.metrics import iou_from_counts, scored_counts

    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model_config = config.model_config()
    if "llmseg" in config.methods and model is None:
        from llmseg_model.modeling.model import LLMSeg

        model = LLMSeg.from_config(model_config, device=config.device)
    if "llmseg" in config.methods:
        model_config = model.config
    cache = None
    baselines = [m for m in config.methods if m != "llmseg"]
    if config.cache_dir and baselines:
        from llmseg_model.data.proposal_cache import ProposalCache

        cache = ProposalCache(config.cache_dir, model_config.sam, model_config.proposals)

    scores = _Scores()
    records: list[dict[str, Any]] = []
    stage_times: dict[str, list[float]] = {}
    totals: dict[str, list[float]] = {"prepare": [], "query": [], "first_answer": []}
    dataset_info = []
    warm: set[tuple[str, str, str]] = set()  # images whose timings are left out
    examples = 0  # example pictures written
    for d, spec in enumerate(config.datasets):
        dataset = build_dataset(spec)
        name = spec.name
        group_of = getattr(dataset, "group", None)
        images: set[str] = set()
        frame_key, frame = None, None
        for index in tqdm(range(len(dataset)), desc=f"benchmark {name}", unit="sample", disable=not config.progress):
            sample: SegSample = dataset[index]
            image = sample.load_image()
            gt = sample.load_mask()
            if gt.shape != image.shape[:2]:
                raise ValueError(f"{name} {sample.image_id}: mask {gt.shape} and image {image.shape[:2]} differ in size")
            group = group_of(index) if group_of else ""
            texts = sample.texts if "all" in config.modes else sample.texts[:1]
            if not texts:
                raise ValueError(f"{name} {sample.image_id}: sample has no instruction")
            key = (sample.source, sample.image_id)
            if key not in images and len(warm) < config.warmup:
                warm.add((name, *key))
            images.add(key)
            timed = (name, *key) not in warm
            entries = [
                {"dataset": name, "index": index, "image_id": sample.image_id, "text_index": t, "text": text, "group": group}
                for t, text in enumerate(texts)
            ]

            if "llmseg" in config.methods:
                if key != frame_key:
                    start = time.perf_counter()
                    frame = model.prepare(image)
                    prepare_s = time.perf_counter() - start
                    frame_key = key
                    if timed:
                        totals["prepare"].append(prepare_s)
                        for stage, seconds in frame.timings.items():
                            stage_times.setdefault(stage, []).append(seconds)
                else:
                    prepare_s = None
                for t, entry in enumerate(entries):
                    start = time.perf_counter()
                    result = model.query(frame, entry["text"], phrase=sample.phrase)
                    query_s = time.perf_counter() - start
                    if result.mask.shape != gt.shape:
                        raise ValueError(
                            f"{name} {sample.image_id}: model mask {result.mask.shape} is not at the image's "
                            f"native size {gt.shape}"
                        )
                    if timed:
                        totals["query"].append(query_s)
                        for stage, seconds in result.timings.items():
                            if stage not in frame.timings:
                                stage_times.setdefault(stage, []).append(seconds)
                        if t == 0 and prepare_s is not None:
                            totals["first_answer"].append(prepare_s + query_s)
                    inter, union = scored_counts(result.mask, gt, config.scoring)
                    entry["llmseg"] = {"intersection": inter, "union": union, "iou": iou_from_counts(inter, union)}
                    entry["answer"] = result.answer
                    entry["selected"] = [int(i) for i in result.proposal_indices]
                    if examples < config.examples:
                        examples += 1
                        save_example(output_dir / "examples" / f"{examples:03d}.png", image, result, entry)

            if baselines:
                if cache is not None:
                    proposals = cache.get(sample, image)
                else:
                    proposals = frame.proposals
                if proposals.image_size != gt.shape:
                    raise ValueError(
                        f"{name} {sample.image_id}: proposals are {proposals.image_size}, ground truth {gt.shape}"
                    )
                rng = np.random.default_rng([config.seed, d, index])
                chosen = {
                    "oracle_iop": lambda: oracle_iop_selection(proposals, gt, config.oracle_iop),
                    "oracle_iou": lambda: oracle_iou_selection(proposals, gt),
                    "random": lambda: random_selection(proposals, rng, config.random_prob),
                }
                for method in baselines:
                    indices = chosen[method]()
                    inter, union = scored_counts(union_mask(proposals, indices), gt, config.scoring)
                    # Baselines ignore the text: every instruction of the sample gets the same answer.
                    for entry in entries:
                        entry[method] = {"intersection": inter, "union": union, "iou": iou_from_counts(inter, union)}

            for entry in entries:
                for mode in config.modes:
                    if mode == "first" and entry["text_index"] != 0:
                        continue
                    for method in config.methods:
                        scores.add(name, group, mode, method, entry[method]["intersection"], entry[method]["union"])
            records += entries
        dataset_info.append({"name": name, "spec": dataclasses.asdict(spec), "samples": len(dataset), "images": len(images)})

    report = {
        "config": config.to_dict(),
        "preset": model_config.preset,
        "platform": platform_info(config.device),
        "datasets": dataset_info,
        "scores": scores.rows(),
        "latency": {
            "warmup_images": config.warmup,
            "stages": {stage: latency_stats(v) for stage, v in ordered_stages(stage_times).items()},
            "totals": {name: latency_stats(v) for name, v in totals.items()},
        },
        "samples": records,
    }
    write_report(report, output_dir)
    return report


# ---------------------------------------------------------------------------------- CLI


def check_paths(config: BenchmarkConfig) -> None:
    """What must exist before the benchmark loads anything: the model's weights (for the llmseg
    method), the proposal cache and the data sets."""
    if "llmseg" in config.methods:
        config.model_config().weights.check_exist(trained=True, prefix="model.weights.")
    if config.cache_dir:
        require_existing("cache_dir", config.cache_dir, "proposal cache folder", folder=True)
    check_data_paths(config.datasets, "datasets")


def run(config: BenchmarkConfig) -> dict[str, Any]:
    """The command's work: the benchmark, its report logged."""
    report = run_benchmark(config)
    logger.info("\n%s", markdown_report(report))
    return report


COMMAND = Command(
    name="llmseg-benchmark",
    module="llmseg_model.benchmark",
    config=BenchmarkConfig,
    run=run,
    description="gIoU / cIoU and per-stage latency of LLM-Seg and proposal baselines (config/benchmark_*.yaml).",
    model_field="model",
    check=check_paths,
    outputs=lambda config: [config.output_dir],
    uses_transformers=True,
)


run_cli = COMMAND.run_cli
main = COMMAND.main


if __name__ == "__main__":
    main()
