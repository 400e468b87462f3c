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
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from llmseg_model.cli import Command, check_data_paths, data_specs, require_existing
from llmseg_model.config import SCORINGS, LLMSegConfig, bounded, check_fields, from_mapping, model_settings, one_of
from llmseg_model.data.mixing import DatasetSpec, build_dataset
from llmseg_model.data.sample import SegSample
from llmseg_model.evaluation.stats import latency_stats, platform_info

if TYPE_CHECKING:
    from llmseg_model.metrics import IoUAccumulator
    from llmseg_model.modeling.proposals import Proposals

logger = logging.getLogger(__name__)

METHODS = ("llmseg", "oracle_iop", "oracle_iou", "random")
MODES = ("first", "all")
PREPARE_STAGES = ("proposals", "features", "vision", "prompt_prefix")
QUERY_STAGES = ("llm", "fusion", "selection")


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


# ---------------------------------------------------------------------------------- baselines


def oracle_iop_selection(proposals: Proposals, gt: np.ndarray, threshold: float) -> list[int]:
    """Indices of the proposals lying mostly inside the target (IoP >= threshold, ignore excluded)."""
    from llmseg_model.metrics import proposal_overlaps

    inter, areas, _ = proposal_overlaps(proposals.rles, gt)
    iop = np.divide(inter, areas, out=np.zeros(len(areas)), where=areas > 0)
    return [int(i) for i in np.flatnonzero((areas > 0) & (iop >= threshold))]


def oracle_iou_selection(proposals: Proposals, gt: np.ndarray) -> list[int]:
    """The single proposal with the best IoU, or nothing when no proposal touches the target."""
    from llmseg_model.metrics import proposal_overlaps

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


# ---------------------------------------------------------------------------------- reports


SCORE_FIELDS = ("giou", "ciou", "count")  # what a score row measures; its other fields say what it is


def score_table(rows: list[dict[str, Any]], modes: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """One data set's score rows as (header, cells): one row per group x method (x any other field
    a score row carries), with one gIoU / cIoU / n column per mode when the modes differ on some
    row, and a single set of columns when they agree everywhere (e.g. one instruction per sample)."""
    keys = [k for k in _field_order(rows) if k not in (*SCORE_FIELDS, "mode", "dataset")]
    table: dict[tuple, dict[str, dict[str, Any]]] = {}
    for row in rows:
        table.setdefault(tuple(row[k] for k in keys), {})[row["mode"]] = row
    modes = [m for m in modes if any(m in by_mode for by_mode in table.values())]
    order = _row_order(list(table), keys)
    if _modes_agree(table.values()):
        header = [*(k.replace("_", " ") for k in keys), "gIoU", "cIoU", "n"]
        cells = [[*map(str, ident), *_score_cells(next(iter(table[ident].values())))] for ident in order]
        return header, cells
    header = [k.replace("_", " ") for k in keys]
    for name in ("gIoU", "cIoU", "n"):
        header += [f"{name} {mode}" for mode in modes]
    cells = []
    for ident in order:
        per_mode = [_score_cells(table[ident][m]) if m in table[ident] else ["-", "-", "-"] for m in modes]
        cells.append([*map(str, ident), *(per_mode[j][i] for i in range(3) for j in range(len(modes)))])
    return header, cells


def _field_order(rows: list[dict[str, Any]]) -> list[str]:
    order: list[str] = []
    for row in rows:
        order += [k for k in row if k not in order]
    return order


def _row_order(identities: list[tuple], keys: list[str]) -> list[tuple]:
    """Group "all" first and the other groups by name; any other field (method, data set) in the
    order it first appears (the config's order)."""
    first_seen: list[dict[Any, int]] = [{} for _ in keys]
    for ident in identities:
        for seen, value in zip(first_seen, ident):
            seen.setdefault(value, len(seen))

    def rank(ident: tuple) -> tuple:
        return tuple(
            (value != "all", str(value)) if key == "group" else (False, seen[value])
            for key, value, seen in zip(keys, ident, first_seen)
        )

    return sorted(identities, key=rank)


def _modes_agree(tables: Iterable[dict[str, dict[str, Any]]]) -> bool:
    """True when, on every row, all modes give the same gIoU, cIoU and count."""
    return all(len({tuple(row[f] for f in SCORE_FIELDS) for row in by_mode.values()}) == 1 for by_mode in tables)


def _score_cells(row: dict[str, Any]) -> list[str]:
    return [f"{100 * row['giou']:.2f}", f"{100 * row['ciou']:.2f}", str(row["count"])]


def markdown_report(report: dict[str, Any]) -> str:
    """Scores (one table per data set) and latency as markdown."""
    lines = ["# Benchmark", ""]
    device = report["platform"].get("gpu", report["platform"]["device"])
    scoring = report["config"].get("scoring", "native")
    how = "resized to 1024x1024 before scoring" if scoring == "resize1024" else "scored at each image's own resolution"
    lines.append(f"Preset `{report['preset']}` on {device}; masks {how} (`scoring: {scoring}`).")
    modes = report["config"]["modes"]
    info = {d["name"]: d for d in report.get("datasets", [])}
    datasets: dict[str, list[dict[str, Any]]] = {}
    for row in report["scores"]:
        datasets.setdefault(row["dataset"], []).append(row)
    for name, rows in datasets.items():
        sizes = f": {info[name]['samples']} samples on {info[name]['images']} images" if name in info else ""
        lines += ["", f"## {name}{sizes}", ""]
        header, cells = score_table(rows, modes)
        if len(modes) > 1 and "gIoU" in header:
            shown = " and ".join(f"`{m}`" for m in modes)
            lines += [f"Modes {shown} give identical scores on this data set: each row stands for both.", ""]
        elif len(modes) == 1:
            lines += [f"Mode `{modes[0]}`.", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---:" if _numeric(h) else "---" for h in header) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in cells]
    latency = report["latency"]
    if any(s["count"] for s in latency["stages"].values()):
        lines += [
            "",
            "## Latency",
            "",
            f"First {latency['warmup_images']} image(s) left out as warm-up; per image: "
            f"{', '.join(s for s in latency['stages'] if s in PREPARE_STAGES)}; per instruction: the others.",
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


def _numeric(header: str) -> bool:
    return header.split(" ")[0] in ("gIoU", "cIoU", "n")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def plot_report(report: dict[str, Any], path: str | Path) -> None:
    """Three panels: per-stage latency (log axis: median bar, p95 whisker), per-sample IoU spread of
    each method, and gIoU per group (reasoning kind, query length) and method."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(12, 8.5))
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 1])
    _plot_latency(fig.add_subplot(grid[0, 0]), report)
    _plot_spread(fig.add_subplot(grid[0, 1]), report)
    _plot_groups(fig.add_subplot(grid[1, :]), report)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_mode(report: dict[str, Any]) -> str:
    return "first" if "first" in report["config"]["modes"] else "all"


def _plot_latency(ax, report: dict[str, Any]) -> None:
    """Horizontal bars on a log axis, so 1 ms and 1 s stages are both readable; totals below."""
    latency = report["latency"]
    bars = [(n, s, "per image" if n in PREPARE_STAGES else "per instruction") for n, s in latency["stages"].items()]
    bars += [(f"{n} (total)", s, "total") for n, s in latency["totals"].items()]
    bars = [(n, s, kind) for n, s, kind in bars if s["count"] and s["median_ms"] is not None]
    ax.set_title("latency per stage (log scale)")
    if not bars:
        ax.text(0.5, 0.5, "no model timings", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    colours = {"per image": "tab:blue", "per instruction": "tab:orange", "total": "tab:gray"}
    y = np.arange(len(bars))[::-1]
    median = np.array([max(s["median_ms"], 1e-3) for _, s, _ in bars])
    p95 = np.array([max(s["p95_ms"], 1e-3) for _, s, _ in bars])
    for kind, colour in colours.items():
        pick = np.array([k == kind for _, _, k in bars])
        if pick.any():
            ax.barh(y[pick], median[pick], color=colour, label=kind)
    ax.errorbar(median, y, xerr=[np.zeros_like(median), np.maximum(p95 - median, 0)], fmt="none", ecolor="black", capsize=3)
    for yi, m, p in zip(y, median, np.maximum(p95, median)):
        ax.text(p * 1.2, yi, f"{m:.3g}", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(min(median.min(), p95.min()) / 2, p95.max() * 8)
    ax.set_yticks(y, [n for n, _, _ in bars])
    ax.set_xlabel("median ms (whisker: p95)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, fontsize=8, frameon=False)


def _plot_spread(ax, report: dict[str, Any]) -> None:
    methods = report["config"]["methods"]
    mode = _plot_mode(report)
    ious = [
        [s[m]["iou"] for s in report["samples"] if m in s and (mode == "all" or s["text_index"] == 0)] for m in methods
    ]
    ax.boxplot(ious, showmeans=True)
    ax.set_xticks(range(1, len(methods) + 1), methods)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("per-image IoU")
    ax.set_title(f"IoU per sample ({mode} instruction{'s' if mode == 'all' else ''}; triangle: mean)")


def _plot_groups(ax, report: dict[str, Any]) -> None:
    """Grouped bars: gIoU of each method per (data set, group), "all" first."""
    mode = _plot_mode(report)
    rows = [r for r in report["scores"] if r["mode"] == mode]
    methods = [m for m in report["config"]["methods"] if any(r["method"] == m for r in rows)]
    several = len({r["dataset"] for r in rows}) > 1
    keys = _row_order(list(dict.fromkeys((r["dataset"], r["group"]) for r in rows)), ["dataset", "group"])
    ax.set_title(f"gIoU per group ({mode} instruction{'s' if mode == 'all' else ''})")
    if not keys:
        ax.set_axis_off()
        return
    score = {(r["dataset"], r["group"], r["method"]): r for r in rows}
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(keys))
    for j, method in enumerate(methods):
        values = [100 * score[(d, g, method)]["giou"] if (d, g, method) in score else np.nan for d, g in keys]
        ax.bar(x + (j - (len(methods) - 1) / 2) * width, values, width, label=method)
    counts = [next((score[(d, g, m)]["count"] for m in methods if (d, g, m) in score), 0) for d, g in keys]
    labels = [f"{d}\n{g} (n={n})" if several else f"{g} (n={n})" for (d, g), n in zip(keys, counts)]
    ax.set_xticks(x, labels, fontsize=9)
    ax.set_ylim(0, 112)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("gIoU (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncol=len(methods), fontsize=8, loc="upper center", frameon=False)


def save_example(path: Path, image: np.ndarray, result: Any, entry: dict[str, Any]) -> None:
    """A picture of one answer: its object instances (selected proposals merged) and a caption
    with the instruction, the IoU and where the sample comes from."""
    from llmseg_model.visualize import render_instances

    where = f"{entry['dataset']} {entry['image_id']}" + (f" ({entry['group']})" if entry.get("group") else "")
    caption = f"\"{entry['text']}\"\nIoU {entry['llmseg']['iou']:.2f}, {where}"
    picture = render_instances(image, result.instance_masks, result.instance_scores, caption)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(path)


def write_report(report: dict[str, Any], output_dir: str | Path) -> None:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    (output_dir / "results.md").write_text(markdown_report(report))
    plot_report(report, output_dir / "benchmark.png")
    logger.info("benchmark report written to %s", output_dir)


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
