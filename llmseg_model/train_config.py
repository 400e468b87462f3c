"""The training job's configuration (config/train_*.yaml), apart from the job itself so that the
proposal precompute can read a training config without importing the trainer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmseg_model.config import SCORINGS, LLMSegConfig, bounded, check_fields, from_mapping, model_settings, one_of
from llmseg_model.data.mixing import DatasetSpec

LR_SCHEDULES = ("linear", "cosine", "constant")
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")


@dataclass
class TrainConfig:
    """Everything a training run needs; loadable from YAML (see config/train_*.yaml).

    Sizes: a micro-batch holds `batch_size` images per process, each asking up to
    `queries_per_image` questions (one row each); an optimizer step accumulates `grad_accum`
    micro-batches on every process. `global_batch` (images per optimizer step over all processes)
    sets `grad_accum` for whatever number of processes runs, so one config keeps the published
    20 images a step on 2 GPUs (accumulation 10) or 4 (accumulation 5).
    """

    preset: str = "tiny"  # tiny | paper | paper_llava15, or a saved llmseg_config.json
    model: dict = field(default_factory=dict)  # overrides of LLMSegConfig fields (nested), on the preset's values
    output_dir: str = "runs/llmseg"
    cache_dir: str = "cache/proposals"
    data_root: str = ""  # relative paths of datasets / val_datasets (path, image_root) are taken under it
    datasets: list[DatasetSpec] = field(default_factory=lambda: [DatasetSpec(kind="procedural", size=1000)])
    queries_per_image: int = bounded(1, ge=1)  # questions asked about each drawn image (published: 3)
    target_max_side: int = bounded(1024, ge=0)  # IoU/IoP targets at SAM's input size, as published (0: native size)
    samples_per_epoch: int = bounded(0, ge=0)  # images drawn per epoch over all processes (0: the mixed data sets' total)
    steps: int = bounded(1000, ge=1)  # optimizer steps
    batch_size: int = bounded(8, ge=1)  # images per process per micro-batch
    grad_accum: int = bounded(1, ge=1)
    global_batch: int = bounded(0, ge=0)  # images per optimizer step over all processes; > 0 derives grad_accum
    lr: float = bounded(3e-4, gt=0.0)
    weight_decay: float = bounded(0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    # After warmup_steps of linear warm-up: linear to 0, cosine to min_lr_ratio, or constant.
    lr_schedule: str = one_of("cosine", LR_SCHEDULES)
    warmup_steps: int = bounded(50, ge=0)
    min_lr_ratio: float = bounded(0.05, ge=0.0, le=1.0)  # cosine decay floor
    max_grad_norm: float = bounded(1.0, gt=0.0)
    mixed_precision: str = one_of("auto", MIXED_PRECISIONS)  # auto: bf16 on GPU, fp32 on CPU
    seed: int = 0
    num_workers: int = bounded(0, ge=0)  # DataLoader worker processes
    log_every: int = bounded(10, ge=1)  # optimizer steps between metrics.jsonl records
    log_samples: bool = False  # metrics.jsonl also lists each process's "image|question" rows (audits sharding)
    save_every: int = bounded(500, ge=1)  # optimizer steps between resumable checkpoints
    keep_checkpoints: int = bounded(2, ge=1)  # newest checkpoints kept
    resume: bool = True  # continue from the newest checkpoint in output_dir
    init_from: str = ""  # a trained llmseg_weights folder to start from (fine-tuning)
    export_merged: bool = False  # also write output_dir/merged: LoRA merged into a llava-hf folder
    cpu_threads: int = bounded(0, ge=0)  # torch CPU threads (0: torch's default); 1 avoids OpenMP thrashing on busy small machines
    memo_images: int = bounded(20000, ge=0)  # images whose frozen-backbone outputs and targets stay in RAM (0: off)
    # Worker processes that fill that memo before the first step (0: the first epoch fills it, at
    # several times a later epoch's cost); needs a filled proposal cache.
    prefill_workers: int = bounded(0, ge=0)
    # Validation and best-checkpoint selection: the first text of every sample, IoP selection as
    # the model's config says, gIoU/cIoU; the best gIoU so far is kept in output_dir/best.
    val_datasets: list[DatasetSpec] = field(default_factory=list)
    eval_every: int = bounded(0, ge=0)  # optimizer steps between validations; 0: at the end of every epoch
    # resize1024: prediction and truth to 1024x1024 first (published ReasonSeg); native: at the image's size.
    val_scoring: str = one_of("resize1024", SCORINGS)

    def __post_init__(self) -> None:
        check_fields(self)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.memo_images and self.num_workers:
            raise ValueError("memo_images keeps its memo in the main process: set num_workers: 0 (or memo_images: 0)")
        for key in ("datasets", "val_datasets"):
            if not all(isinstance(spec, DatasetSpec) for spec in getattr(self, key)):
                raise ValueError(f"{key} must be a list of data set specs")
        if not self.datasets:
            raise ValueError("datasets is empty: list at least one data set to train on")
        self.model_config()  # the preset exists and the model overrides are valid

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config not found: {path}")
        return cls.from_dict(yaml.safe_load(path.read_text()) or {})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Build from a (possibly partial) mapping, as a YAML file gives it; relative data set paths
        are taken under `data_root`."""
        config = from_mapping(cls, data)
        config.datasets = [config.under_root(spec) for spec in config.datasets]
        config.val_datasets = [config.under_root(spec) for spec in config.val_datasets]
        return config

    def under_root(self, spec: DatasetSpec) -> DatasetSpec:
        """`spec` with its relative path and image_root taken under `data_root`."""
        if not self.data_root:
            return spec
        root = Path(self.data_root)
        moved = {}
        for name in ("path", "image_root"):
            value = getattr(spec, name)
            if value and not Path(value).is_absolute():
                moved[name] = str(root / value)
        return dataclasses.replace(spec, **moved) if moved else spec

    def model_config(self) -> LLMSegConfig:
        return model_settings(self.preset, self.model)

    def accumulation(self, num_processes: int) -> int:
        """Micro-batches per optimizer step on `num_processes` processes."""
        if not self.global_batch:
            return self.grad_accum
        per_micro = self.batch_size * num_processes
        if self.global_batch % per_micro:
            raise ValueError(
                f"global_batch {self.global_batch} is not a multiple of batch_size {self.batch_size} x "
                f"{num_processes} processes; change batch_size or the process count"
            )
        return self.global_batch // per_micro
