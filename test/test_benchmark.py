"""Benchmark: baselines on hand-built proposals, report writing, and end-to-end runs of the
real tiny model (untrained weights always; the shipped weights once they are in the package)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llmseg_model import benchmark
from llmseg_model.benchmark import BenchmarkConfig, run_benchmark
from llmseg_model.evaluation import benchmark_report
from llmseg_model.config import TINY_WEIGHTS_DIR, tiny_config
from llmseg_model.data.mixing import DatasetSpec
from llmseg_model.data.proposal_cache import ProposalCache
from llmseg_model.data.reasonseg import ReasonSegDataset
from llmseg_model.metrics import image_iou
from llmseg_model.modeling.proposals import Proposals, ProposalGenerator, build_sam

REPO = Path(__file__).resolve().parents[1]
LOW_THRESHOLDS = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "points_per_side": 4}


def rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def write_reasonseg(folder: Path) -> None:
    """Two images in LISA's format: a short query with a target and an ignore region, and a long
    query whose target is absent (only a deprecated "flag" shape)."""
    folder.mkdir(parents=True)
    entries = {
        "a": (["cup", "mug"], False, [("target", rect(10, 10, 29, 19)), ("ignore", rect(40, 0, 49, 9))]),
        "b": (["Something that is not there.", "Nothing here."], True, [("flag", rect(0, 0, 5, 5))]),
    }
    for name, (texts, is_sentence, shapes) in entries.items():
        Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(folder / f"{name}.jpg")
        anno = {
            "text": texts,
            "is_sentence": is_sentence,
            "shapes": [{"label": label, "points": points, "shape_type": "polygon"} for label, points in shapes],
        }
        (folder / f"{name}.json").write_text(json.dumps(anno))


def region(y0, y1, x0, x1, shape=(40, 60)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.fixture
def cached_reasonseg(tmp_path):
    """A ReasonSeg folder and a proposal cache holding hand-built proposals for it."""
    write_reasonseg(tmp_path / "ReasonSeg" / "val")
    config = tiny_config()
    config.proposals = dataclasses.replace(config.proposals, **LOW_THRESHOLDS)
    torch.manual_seed(0)
    generator = ProposalGenerator(build_sam(config.sam), config.proposals)
    cache = ProposalCache(tmp_path / "cache", config.sam, config.proposals, generator=generator)
    data = ReasonSegDataset(tmp_path / "ReasonSeg" / "val")
    proposals_a = [
        region(10, 20, 10, 20),  # left half of the target: IoP 1, IoU 0.5
        region(10, 20, 20, 30),  # right half: IoP 1, IoU 0.5
        region(0, 40, 0, 40),  # covers the target and much more: IoP 0.125
        region(0, 10, 40, 50),  # entirely in the ignore region
        region(30, 40, 0, 60),  # background
    ]
    proposals_b = [region(0, 20, 0, 30), region(20, 40, 30, 60)]
    for sample, masks in zip((data[0], data[1]), (proposals_a, proposals_b)):
        cache.put(sample.source, sample.image_id, Proposals.from_masks(np.stack(masks), 64, lowres_layout=config.proposals.lowres_layout), sample.load_image())
    return tmp_path, config, data


def score(report, method, mode, group="all"):
    rows = [r for r in report["scores"] if (r["method"], r["mode"], r["group"]) == (method, mode, group)]
    assert len(rows) == 1
    return rows[0]


def test_baselines_from_cache(cached_reasonseg):
    root, config, data = cached_reasonseg
    bench = BenchmarkConfig(
        model={"proposals": LOW_THRESHOLDS},
        datasets=[DatasetSpec(kind="reasonseg", path=str(root / "ReasonSeg" / "val"))],
        methods=["oracle_iop", "oracle_iou", "random"],
        cache_dir=str(root / "cache"),
        output_dir=str(root / "out"),
        progress=False,
    )
    report = run_benchmark(bench)
    # Image a: the two halves make the target exactly; the best single proposal is a half.
    # Image b: no target and no overlapping proposal, so both oracles answer empty: IoU 1.
    for mode, count in (("first", 2), ("all", 4)):
        row = score(report, "oracle_iop", mode)
        assert (row["giou"], row["ciou"], row["count"]) == (1.0, 1.0, count)
        assert score(report, "oracle_iou", mode)["giou"] == pytest.approx(0.75)
        assert score(report, "oracle_iou", mode)["ciou"] == pytest.approx(0.5)
    assert score(report, "oracle_iou", "first", "short")["giou"] == pytest.approx(0.5)
    assert score(report, "oracle_iou", "first", "long")["giou"] == 1.0
    # Random: a seeded subset per sample; recompute it the plain way.
    for index in range(2):
        sample = data[index]
        proposals = ProposalCache(root / "cache", config.sam, config.proposals).get(sample)
        keep = np.random.default_rng([0, 0, index]).random(proposals.count) < 0.5
        masks = proposals.masks()
        pred = masks[keep].any(0) if keep.any() else np.zeros(proposals.image_size, bool)
        entry = next(s for s in report["samples"] if s["index"] == index and s["text_index"] == 0)
        assert entry["random"]["iou"] == pytest.approx(image_iou(pred, sample.load_mask()))
    # gIoU / cIoU rows agree with the per-sample records.
    for method in ("oracle_iop", "oracle_iou", "random"):
        entries = [s[method] for s in report["samples"]]
        assert score(report, method, "all")["giou"] == pytest.approx(np.mean([e["iou"] for e in entries]))
        total_u = sum(e["union"] for e in entries)
        assert score(report, method, "all")["ciou"] == pytest.approx(sum(e["intersection"] for e in entries) / total_u)
    # Report files.
    out = root / "out"
    assert json.loads((out / "results.json").read_text())["scores"] == report["scores"]
    table = (out / "results.md").read_text()
    # Two texts per image: first and all differ in n, so each mode gets its columns.
    assert "| group | method | gIoU first | gIoU all | cIoU first | cIoU all | n first | n all |" in table
    assert "| all | oracle_iop | 100.00 | 100.00 | 100.00 | 100.00 | 2 | 4 |" in table
    assert not (out / "examples").exists()  # no model, no answers to draw
    with Image.open(out / "benchmark.png") as image:
        assert image.size[0] > 300


def test_missing_cache_entry_names_the_fix(cached_reasonseg):
    root, _, data = cached_reasonseg
    next((root / "cache" / "proposals").rglob("*.npz")).unlink()
    bench = BenchmarkConfig(
        model={"proposals": LOW_THRESHOLDS},
        datasets=[DatasetSpec(kind="reasonseg", path=str(root / "ReasonSeg" / "val"))],
        methods=["oracle_iou"],
        cache_dir=str(root / "cache"),
        output_dir=str(root / "out"),
        progress=False,
    )
    with pytest.raises(KeyError, match="llmseg_model.data.proposal_cache"):
        run_benchmark(bench)
    # A cache made with other proposal settings is refused.
    with pytest.raises(ValueError, match="other settings"):
        run_benchmark(dataclasses.replace(bench, model={}))


def test_config_validation():
    with pytest.raises(ValueError, match="methods"):
        BenchmarkConfig(methods=["llmseg", "magic"])
    with pytest.raises(ValueError, match="modes"):
        BenchmarkConfig(modes=["some"])
    with pytest.raises(ValueError, match="cache_dir"):
        BenchmarkConfig(methods=["random"])
    with pytest.raises(ValueError, match="unknown setting"):
        BenchmarkConfig.from_dict({"metods": ["llmseg"]})
    with pytest.raises(ValueError, match="examples"):
        BenchmarkConfig(examples=-1)
    config = BenchmarkConfig.from_yaml(REPO / "config" / "benchmark_tiny.yaml")
    assert config.preset == "tiny" and config.datasets[0].split == "test"
    for name in ("benchmark_reasonseg.yaml", "benchmark_llmseg40k.yaml"):
        assert BenchmarkConfig.from_yaml(REPO / "config" / name).model_config().preset == "paper"


def test_end_to_end_untrained_tiny_model(tmp_path, untrained_tiny_model):
    """The real tiny pipeline (random weights): every stage timed, masks at native size."""
    model = untrained_tiny_model
    spec = DatasetSpec(kind="procedural", split="test", size=1, limit=3, procedural={"height": 96, "width": 128})
    bench = BenchmarkConfig(datasets=[spec], output_dir=str(tmp_path), warmup=0, progress=False)
    report = run_benchmark(bench, model=model)
    stages = report["latency"]["stages"]
    assert {"proposals", "features", "vision", "llm", "fusion", "selection"} <= set(stages)
    assert stages["proposals"]["count"] == 1 and stages["llm"]["count"] == 3  # one image, three questions
    assert report["latency"]["totals"]["first_answer"]["count"] == 1
    from llmseg_model.data.mixing import build_dataset

    # 4 methods x 2 modes, for "all" and for each reasoning kind (the procedural set's groups).
    kinds = {build_dataset(spec).group(i) for i in range(3)}
    assert {s["group"] for s in report["samples"]} == kinds
    assert len(report["scores"]) == 4 * 2 * (1 + len(kinds)) and len(report["samples"]) == 3
    # The model's answer is scored as it is, and the oracle is the best proposal of its frame.
    sample = build_dataset(spec)[0]
    image, gt = sample.load_image(), sample.load_mask()
    result = model.segment(image, sample.texts[0])
    entry = report["samples"][0]
    assert entry["llmseg"]["iou"] == pytest.approx(image_iou(result.mask, gt))
    frame_masks = model.prepare(image).proposals.masks()
    best = max((image_iou(m, gt) for m in frame_masks), default=0.0)
    assert entry["oracle_iou"]["iou"] == pytest.approx(best)
    assert "| llm |" in (tmp_path / "results.md").read_text()
    # One picture per answer, up to `examples`: the 96 x 128 image enlarged 6 times (short side
    # >= 512) with a caption band below.
    pictures = sorted((tmp_path / "examples").glob("*.png"))
    assert len(pictures) == 3
    with Image.open(pictures[0]) as picture:
        assert picture.size[0] == 6 * 128 and picture.size[1] > 6 * 96


def score_row(dataset, group, mode, method, giou, ciou, count):
    return {"dataset": dataset, "group": group, "mode": mode, "method": method, "giou": giou, "ciou": ciou, "count": count}


def synthetic_report(scores, modes=("first", "all"), methods=("llmseg", "random")):
    stats = {"count": 3, "median_ms": 12.0, "p95_ms": 20.0, "mean_ms": 13.0}
    fast = {"count": 3, "median_ms": 0.4, "p95_ms": 0.9, "mean_ms": 0.5}
    return {
        "preset": "tiny",
        "platform": {"device": "cpu"},
        "config": {"modes": list(modes), "methods": list(methods)},
        "datasets": [],
        "scores": scores,
        "latency": {"warmup_images": 1, "stages": {"proposals": stats, "selection": fast}, "totals": {"prepare": stats}},
        "samples": [{"text_index": 0, "llmseg": {"iou": 0.4}, "random": {"iou": 0.1}}],
    }


def test_report_rows_collapse_where_modes_agree(tmp_path):
    scores = []
    for mode in ("first", "all"):
        for group in ("all", "superlative", "attribute"):
            for method, giou in (("llmseg", 0.5), ("random", 0.2)):
                # procedural: one text per sample, so both modes score the same
                scores.append(score_row("procedural/test", group, mode, method, giou, giou - 0.1, 8))
                # reasonseg: `all` scores more texts and differs on the long queries
                better = 0.1 if mode == "all" and group == "attribute" else 0.0
                count = 4 if mode == "first" else 9
                scores.append(score_row("reasonseg/val", group, mode, method, giou + better, giou, count))
    table = benchmark_report.markdown_report(synthetic_report(scores))
    procedural = table[table.index("## procedural/test") : table.index("## reasonseg/val")]
    reasonseg = table[table.index("## reasonseg/val") : table.index("## Latency")]
    # Identical modes: one row per group x method, one set of columns, "all" first, groups by name.
    rows = [line for line in procedural.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0] == "| group | method | gIoU | cIoU | n |"
    assert rows[1:] == [
        "| all | llmseg | 50.00 | 40.00 | 8 |",
        "| all | random | 20.00 | 10.00 | 8 |",
        "| attribute | llmseg | 50.00 | 40.00 | 8 |",
        "| attribute | random | 20.00 | 10.00 | 8 |",
        "| superlative | llmseg | 50.00 | 40.00 | 8 |",
        "| superlative | random | 20.00 | 10.00 | 8 |",
    ]
    assert "identical" in procedural
    # Modes that differ become columns; still one row per group x method.
    rows = [line for line in reasonseg.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0] == "| group | method | gIoU first | gIoU all | cIoU first | cIoU all | n first | n all |"
    assert "| attribute | llmseg | 50.00 | 60.00 | 50.00 | 50.00 | 4 | 9 |" in rows and len(rows) == 1 + 6
    # A single mode is named once, not repeated per row.
    single = benchmark_report.markdown_report(synthetic_report([r for r in scores if r["mode"] == "all"], modes=["all"]))
    assert "Mode `all`." in single and "| all | llmseg | 50.00 | 40.00 | 8 |" in single
    # The plot: latency on a log axis, the per-sample spread, gIoU per group.
    benchmark_report.plot_report(synthetic_report(scores), tmp_path / "plot.png")
    with Image.open(tmp_path / "plot.png") as image:
        assert image.size == (1200, 850)


SHIPPED = TINY_WEIGHTS_DIR / "llmseg" / "llmseg.safetensors"


@pytest.mark.skipif(not SHIPPED.is_file(), reason=f"shipped tiny weights not in the package yet ({SHIPPED})")
def test_cli_on_shipped_tiny_preset(tmp_path):
    report = benchmark.run_cli(
        [
            "--config", str(REPO / "config" / "benchmark_tiny.yaml"),
            "--data", "procedural:test,size=5",
            "--modes", "first",
            "--output-dir", str(tmp_path),
            "--warmup", "1",
            "--no-progress",
        ]
    )
    assert (tmp_path / "results.json").is_file() and (tmp_path / "benchmark.png").is_file()
    assert report["preset"] == "tiny" and len(report["samples"]) == 20
    assert report["latency"]["stages"]["proposals"]["count"] == 4  # five images, one warm-up
    trained = score(report, "llmseg", "first")
    assert trained["count"] == 20
    # A trained model picks proposals far better than a random subset of the same proposals.
    assert trained["giou"] > score(report, "random", "first")["giou"] + 0.1
