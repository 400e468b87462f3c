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
Writes results.json, results.md and benchmark.png into `output_dir`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pycocotools import mask as mask_utils
from tqdm import tqdm

from llmseg_model.cli import exit_on_bad_input
from llmseg_model.config import LLMSegConfig, preset_with_overrides
from llmseg_model.data.mixing import DatasetSpec, build_dataset
from llmseg_model.data.sample import SegSample
from llmseg_model.metrics import SCORINGS, IoUAccumulator, iou_from_counts, proposal_overlaps, scored_counts
from llmseg_model.modeling.proposals import Proposals

logger = logging.getLogger(__name__)

METHODS = ("llmseg", "oracle_iop", "oracle_iou", "random")
MODES = ("first", "all")
PREPARE_STAGES = ("proposals", "features", "vision", "prompt_prefix")
QUERY_STAGES = ("llm", "fusion", "selection")


@dataclass
class BenchmarkConfig:
    """One benchmark run; loadable from YAML (see config/benchmark_*.yaml)."""

    preset: str = "tiny"
    model: dict = field(default_factory=dict)  # nested overrides of LLMSegConfig, e.g. {weights: {llava_path: ...}}
    datasets: list[DatasetSpec] = field(
        default_factory=lambda: [DatasetSpec(kind="procedural", split="test", size=25)]
    )
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    modes: list[str] = field(default_factory=lambda: list(MODES))
    cache_dir: str = ""  # proposal cache for the baselines; empty: use the model's own proposals
    output_dir: str = "outputs/benchmark"
    device: str = "cpu"
    warmup: int = 1  # images whose timings are left out of the latency statistics
    seed: int = 0
    oracle_iop: float = 0.5
    random_prob: float = 0.5
    scoring: str = "native"  # native | resize1024 (the published ReasonSeg evaluation)
    progress: bool = True

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"unknown or no methods {bad}; choose from {METHODS}")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ValueError(f"unknown or no modes {bad}; choose from {MODES}")
        if not self.datasets:
            raise ValueError("benchmark needs at least one data set")
        if "llmseg" not in self.methods and not self.cache_dir:
            raise ValueError("the baselines need proposals: set cache_dir, or include the llmseg method")
        if not 0.0 < self.oracle_iop <= 1.0:
            raise ValueError(f"oracle_iop must be in (0, 1], got {self.oracle_iop}")
        if not 0.0 <= self.random_prob <= 1.0:
            raise ValueError(f"random_prob must be in [0, 1], got {self.random_prob}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BenchmarkConfig":
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"benchmark config: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        if "datasets" in data:
            data["datasets"] = [d if isinstance(d, DatasetSpec) else DatasetSpec.from_dict(d) for d in data["datasets"]]
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "BenchmarkConfig":
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})

    def model_config(self) -> LLMSegConfig:
        return preset_with_overrides(self.preset, self.model)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------- baselines


def oracle_iop_selection(proposals: Proposals, gt: np.ndarray, threshold: float) -> list[int]:
    """Indices of the proposals lying mostly inside the target (IoP >= threshold, ignore excluded)."""
    inter, areas, _ = proposal_overlaps(proposals.rles, gt)
    iop = np.divide(inter, areas, out=np.zeros(len(areas)), where=areas > 0)
    return [int(i) for i in np.flatnonzero((areas > 0) & (iop >= threshold))]


def oracle_iou_selection(proposals: Proposals, gt: np.ndarray) -> list[int]:
    """The single proposal with the best IoU, or nothing when no proposal touches the target."""
    inter, areas, target = proposal_overlaps(proposals.rles, gt)
    if not len(inter) or inter.max() == 0:
        return []
    union = areas + target - inter
    iou = inter / np.maximum(union, 1)
    return [int(np.argmax(iou))]


def random_selection(proposals: Proposals, rng: np.random.Generator, prob: float) -> list[int]:
    return [int(i) for i in np.flatnonzero(rng.random(proposals.count) < prob)]


def union_mask(proposals: Proposals, indices: Sequence[int]) -> np.ndarray:
    """(H, W) bool union of some proposals, merged as RLE so only one full mask is decoded."""
    if not len(indices):
        return np.zeros(proposals.image_size, bool)
    rles = [{"size": proposals.rles[i]["size"], "counts": proposals.rles[i]["counts"].encode("ascii")} for i in indices]
    return mask_utils.decode(mask_utils.merge(rles, intersect=False)).astype(bool)


# ---------------------------------------------------------------------------------- statistics


def latency_stats(values: Sequence[float]) -> dict[str, float | int]:
    """Median, 95th percentile and mean in milliseconds."""
    arr = np.asarray(values, dtype=np.float64) * 1000.0
    if not len(arr):
        return {"count": 0, "median_ms": None, "p95_ms": None, "mean_ms": None}
    return {
        "count": int(len(arr)),
        "median_ms": float(np.median(arr)),
        "p95_ms": float(np.percentile(arr, 95)),
        "mean_ms": float(arr.mean()),
    }


@dataclass
class _Scores:
    """Accumulators per (data set, group, mode, method)."""

    accumulators: dict[tuple[str, str, str, str], IoUAccumulator] = field(default_factory=dict)

    def add(self, dataset: str, group: str, mode: str, method: str, intersection: int, union: int) -> None:
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
        "platform": _platform(config.device),
        "datasets": dataset_info,
        "scores": scores.rows(),
        "latency": {
            "warmup_images": config.warmup,
            "stages": {stage: latency_stats(v) for stage, v in _ordered(stage_times).items()},
            "totals": {name: latency_stats(v) for name, v in totals.items()},
        },
        "samples": records,
    }
    write_report(report, output_dir)
    return report


def _ordered(stage_times: dict[str, list[float]]) -> dict[str, list[float]]:
    order = [*PREPARE_STAGES, *QUERY_STAGES]
    keys = sorted(stage_times, key=lambda s: (order.index(s) if s in order else len(order), s))
    return {k: stage_times[k] for k in keys}


def _platform(device: str) -> dict[str, str]:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "device": device, "cpu": platform.processor()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


# ---------------------------------------------------------------------------------- reports


def markdown_report(report: dict[str, Any]) -> str:
    """The scores and latency as markdown tables."""
    lines = ["# Benchmark", ""]
    lines.append(f"Preset `{report['preset']}` on {report['platform'].get('gpu', report['platform']['device'])}.")
    lines += ["", "| data set | group | mode | method | gIoU | cIoU | n |", "|---|---|---|---|---:|---:|---:|"]
    for row in report["scores"]:
        lines.append(
            f"| {row['dataset']} | {row['group']} | {row['mode']} | {row['method']} | "
            f"{100 * row['giou']:.2f} | {100 * row['ciou']:.2f} | {row['count']} |"
        )
    latency = report["latency"]
    if any(s["count"] for s in latency["stages"].values()):
        lines += [
            "",
            f"Latency (first {latency['warmup_images']} image(s) left out as warm-up):",
            "",
            "| stage | median ms | p95 ms | mean ms | n |",
            "|---|---:|---:|---:|---:|",
        ]
        for group in ("stages", "totals"):
            for name, stats in latency[group].items():
                label = name if group == "stages" else f"**{name} (total)**"
                lines.append(
                    f"| {label} | {_ms(stats['median_ms'])} | {_ms(stats['p95_ms'])} | {_ms(stats['mean_ms'])} | {stats['count']} |"
                )
    return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def plot_report(report: dict[str, Any], path: str | Path) -> None:
    """Per-stage latency (median bar, p95 whisker) and the per-image IoU spread of each method."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    stages = {k: v for k, v in report["latency"]["stages"].items() if v["count"]}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    if stages:
        names = list(stages)
        median = np.array([stages[n]["median_ms"] for n in names])
        p95 = np.array([stages[n]["p95_ms"] for n in names])
        ax.bar(names, median, color="tab:blue", label="median")
        ax.errorbar(names, median, yerr=[np.zeros_like(median), p95 - median], fmt="none", ecolor="black", capsize=4, label="p95")
        ax.set_ylabel("ms")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no model timings", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("latency per stage")
    ax = axes[1]
    methods = report["config"]["methods"]
    mode = "first" if "first" in report["config"]["modes"] else "all"
    ious = [
        [s[m]["iou"] for s in report["samples"] if m in s and (mode == "all" or s["text_index"] == 0)] for m in methods
    ]
    ax.boxplot(ious, showmeans=True)
    ax.set_xticks(range(1, len(methods) + 1), methods)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("per-image IoU")
    ax.set_title(f"IoU per sample ({mode} instruction{'s' if mode == 'all' else ''})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(report: dict[str, Any], output_dir: str | Path) -> None:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    (output_dir / "results.md").write_text(markdown_report(report))
    plot_report(report, output_dir / "benchmark.png")
    logger.info("benchmark report written to %s", output_dir)


# ---------------------------------------------------------------------------------- CLI


def _set(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {dotted}: {key} is not a mapping")
    node[keys[-1]] = value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llmseg_model.benchmark",
        description="gIoU / cIoU (native resolution) and per-stage latency of LLM-Seg and proposal baselines.",
    )
    parser.add_argument("--config", help="benchmark YAML (see config/benchmark_tiny.yaml)")
    parser.add_argument("--data", action="append", default=[], metavar="SPEC", help="data set spec; replaces the config's")
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="methods to score")
    parser.add_argument("--modes", nargs="+", choices=MODES, help="first instruction only, and/or every instruction")
    parser.add_argument("--cache-dir", help="proposal cache for the baselines")
    parser.add_argument("--output-dir", help="where results.json / results.md / benchmark.png go")
    parser.add_argument("--device", help="torch device, e.g. cuda")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting by dotted key, e.g. model.weights.llava_path=/models/llava",
    )
    return parser


def run_cli(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the command line, run, return the report."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data: dict[str, Any] = (yaml.safe_load(Path(args.config).read_text()) or {}) if args.config else {}
    if args.data:
        data["datasets"] = [dataclasses.asdict(DatasetSpec.parse(text)) for text in args.data]
    for key, value in (("methods", args.methods), ("modes", args.modes), ("cache_dir", args.cache_dir),
                       ("output_dir", args.output_dir), ("device", args.device)):
        if value is not None:
            data[key] = value
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        _set(data, key, yaml.safe_load(value))
    config = BenchmarkConfig.from_dict(data)
    report = run_benchmark(config)
    logger.info("\n%s", markdown_report(report))
    return report


def main(argv: list[str] | None = None) -> None:
    """Console entry point: bad input ends with its message and exit status 2, not a traceback."""
    exit_on_bad_input(run_cli, argv)


if __name__ == "__main__":
    main()
