"""The latency report: each measured quantity's statistics and ratios, and its markdown tables
(latency.json and latency.md)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from llmseg_model.evaluation.stats import describe_platform, latency_stats

logger = logging.getLogger(__name__)


def latency_quantities(
    samples: dict[str, list[float]],
    prompts: dict[str, list[tuple[int, int]]],
    stages: dict[str, dict[str, list[float]]],
) -> dict[str, dict[str, Any]]:
    """Statistics of every measured quantity (seconds per sample, keyed `sam_encoder`,
    `proposals/<mode>`, `prepare/<mode>`, `instruction/...`), with its ratio to the SAM encoder's
    median, an instruction's to the lower bound's, a batch's whole time to one instruction's, and
    each proposal mode's prompts and proposals per frame (`prompts`) and prepare stages (`stages`)."""
    unit = float(np.median(samples["sam_encoder"]))
    bound = float(np.median(samples["instruction/lower_bound"])) if "instruction/lower_bound" in samples else None
    quantities = {}
    for key, values in samples.items():
        stats: dict[str, Any] = latency_stats(values)
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
    return quantities


def answering_note(answering: dict[str, Any] | None) -> list[str]:
    """How the instructions were answered, as a line and a blank line (none for older reports)."""
    if not answering:
        return []
    prefix = "read from its one copy by every row" if answering["shares_prefix"] else "copied into every row"
    return [
        f"Answer mode `{answering['answer_mode']}`; the frame's prompt prefix {prefix} "
        f"(`vlm.prefix_attention: {answering['prefix_attention']}`).",
        "",
    ]


def markdown_report(report: dict[str, Any]) -> str:
    """The quantities (and recall, when measured) as markdown tables."""
    where = describe_platform(report["platform"])
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
            *answering_note(report.get("answering")),
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
    """latency.json (the whole report) and latency.md (its tables) into `output_dir`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "latency.json").write_text(json.dumps(report, indent=1) + "\n")
    (output_dir / "latency.md").write_text(markdown_report(report))
    logger.info("latency report written to %s", output_dir)
