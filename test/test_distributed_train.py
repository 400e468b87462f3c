"""Two CPU processes (torchrun, gloo) train the tiny preset: the learning rate per step is the
single-process schedule, the processes train on different samples that together cover each
epoch, they end with identical weights, only one process writes the output folder, and a run
resumed from the step-4 checkpoint (mid-epoch) repeats steps 5-8 exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmseg_model.data.mixing import DatasetSpec, build_dataset
from llmseg_model.data.proposal_cache import run_cli

pytestmark = pytest.mark.timeout(600)

STEPS, WARMUP, LR = 8, 4, 1e-3


def torchrun(config_path: Path, log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("ACCELERATE_USE_CPU", None)  # the trainer must choose gloo on its own
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "llmseg_model.train", "--config", str(config_path)]
    with log.open("w") as out:
        done = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=500)
    assert done.returncode == 0, log.read_text()[-4000:]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_process_training_and_resume(untrained_tiny_config, tmp_path):
    weights = untrained_tiny_config.weights
    proposals = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "points_per_side": 4}
    train_data = {"kind": "procedural", "split": "train", "size": 6, "procedural": {"height": 96, "width": 96}}
    config = {
        "preset": "tiny",
        "model": {"weights": {k: getattr(weights, k) for k in ("sam_checkpoint", "dinov2_path", "llava_path")},
                  "proposals": proposals},
        "output_dir": str(tmp_path / "run"),
        "cache_dir": str(tmp_path / "cache"),
        "datasets": [train_data],
        "val_datasets": [{"kind": "procedural", "split": "val", "size": 1, "procedural": {"height": 96, "width": 96}}],
        "steps": STEPS, "batch_size": 2, "grad_accum": 2, "lr": LR, "lr_schedule": "linear", "warmup_steps": WARMUP,
        "log_every": 1, "log_samples": True, "save_every": 4, "memo_images": 0, "cpu_threads": 1, "seed": 3,
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    run_cli(["--train-config", str(path), "--no-progress"])  # proposals first, as documented
    run = tmp_path / "run"

    torchrun(path, tmp_path / "first.log")
    first = records(run)
    steps = [r for r in first if "total" in r]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))  # one writer: every step once
    expected = [LR * min(s / WARMUP, (STEPS - s) / (STEPS - WARMUP)) for s in range(STEPS)]
    assert [r["lr"] for r in steps] == pytest.approx(expected)  # peak at step 5, as on one process

    # 24 samples / (2 images x 2 processes) = 6 micro-batches a process, 3 steps an epoch
    assert [r["epoch"] for r in steps] == [0, 0, 0, 1, 1, 1, 2, 2]
    everything = {f"{s.image_id}|{s.texts[0]}" for s in (lambda d: [d[i] for i in range(len(d))])(build_dataset(DatasetSpec(**train_data)))}
    for epoch in (0, 1):
        rank0 = [row for r in steps if r["epoch"] == epoch for row in r["samples"][0]]
        rank1 = [row for r in steps if r["epoch"] == epoch for row in r["samples"][1]]
        assert len(rank0) == len(rank1) == 12 and not set(rank0) & set(rank1)
        assert set(rank0) | set(rank1) == everything  # together the processes walk the whole epoch

    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and len(set(summary["weights_sha256"])) == 1
    validations = [r for r in first if "val_giou" in r]
    assert [r["step"] for r in validations] == [3, 6, 8] and all(r["val_samples"] == 4 for r in validations)
    best = json.loads((run / "best.json").read_text())
    assert best["giou"] == max(r["val_giou"] for r in validations) and (run / "best" / "llmseg.safetensors").is_file()
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-4"]

    torchrun(path, tmp_path / "resumed.log")  # resumes from checkpoint-4: epoch 1, one step in
    assert "resumed from" in (tmp_path / "resumed.log").read_text()
    again = [r for r in records(run)[len(first):] if "total" in r]
    assert [r["step"] for r in again] == [5, 6, 7, 8]
    for before, after in zip(steps[4:], again):
        assert after["samples"] == before["samples"] and after["epoch"] == before["epoch"]
        assert after["lr"] == pytest.approx(before["lr"]) and after["total"] == pytest.approx(before["total"], rel=1e-4)
    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["weights_sha256"] == summary["weights_sha256"]  # the same weights as the uninterrupted run
