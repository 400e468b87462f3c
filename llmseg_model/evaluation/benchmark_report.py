"""The benchmark's report: score tables (gIoU / cIoU per data set, group, mode and method), the
latency table, the figure (benchmark.png), pictures of answers, and the files results.json and
results.md."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from llmseg_model.evaluation.stats import describe_platform

logger = logging.getLogger(__name__)

PREPARE_STAGES = ("proposals", "features", "vision", "prompt_prefix")
QUERY_STAGES = ("llm", "fusion", "selection")


def ordered_stages(stage_times: dict[str, list[float]]) -> dict[str, list[float]]:
    """Stage timings in pipeline order (prepare's stages, then a query's, then any other)."""
    order = [*PREPARE_STAGES, *QUERY_STAGES]
    keys = sorted(stage_times, key=lambda s: (order.index(s) if s in order else len(order), s))
    return {k: stage_times[k] for k in keys}


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
    device = describe_platform(report["platform"])
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
    """results.json (the whole report), results.md (its tables) and benchmark.png into `output_dir`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    (output_dir / "results.md").write_text(markdown_report(report))
    plot_report(report, output_dir / "benchmark.png")
    logger.info("benchmark report written to %s", output_dir)
