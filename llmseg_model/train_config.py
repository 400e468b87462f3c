"""The training job's configuration (config/train_*.yaml), apart from the job itself so that the
proposal precompute can read a training config without importing the trainer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmseg_model.config import LLMSegConfig, _from_dict, preset_with_overrides
from llmseg_model.data.mixing import DatasetSpec

LR_SCHEDULES = ("linear", "cosine", "constant")
VAL_SCORINGS = ("resize1024", "native")


@dataclass
class TrainConfig:
    """Everything a training run needs; loadable from YAML (see config/train_*.yaml).

    Sizes: a micro-batch holds `batch_size` images per process, each asking up to
    `queries_per_image` questions (one row each); an optimizer step accumulates `grad_accum`
    micro-batches on every process. `global_batch` (images per optimizer step over all processes)
    sets `grad_accum` for whatever number of processes runs, so one config keeps the published
    20 images a step on 2 GPUs (accumulation 10) or 4 (accumulation 5).
    """

    preset: str = "tiny"
    model: dict = field(default_factory=dict)  # overrides of LLMSegConfig fields (nested)
    output_dir: str = "runs/llmseg"
    cache_dir: str = "cache/proposals"
    data_root: str = ""  # relative paths of datasets / val_datasets (path, image_root) are taken under it
    datasets: list[DatasetSpec] = field(default_factory=lambda: [DatasetSpec(kind="procedural", size=1000)])
    queries_per_image: int = 1  # questions asked about each drawn image (published: 3)
    target_max_side: int = 1024  # IoU/IoP targets at SAM's input size, as published (0: native size)
    samples_per_epoch: int = 0  # images drawn per epoch over all processes (0: the mixed data sets' total)
    steps: int = 1000  # optimizer steps
    batch_size: int = 8  # images per process per micro-batch
    grad_accum: int = 1
    global_batch: int = 0  # images per optimizer step over all processes; > 0 derives grad_accum
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    lr_schedule: str = "cosine"  # after warmup_steps of linear warm-up: linear to 0, cosine to min_lr_ratio, or constant
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05  # cosine decay floor
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    log_samples: bool = False  # metrics.jsonl also lists each process's "image|question" rows (audits sharding)
    save_every: int = 500
    keep_checkpoints: int = 2
    resume: bool = True
    init_from: str = ""  # a trained llmseg_weights folder to start from (fine-tuning)
    export_merged: bool = False  # also write output_dir/merged: LoRA merged into a llava-hf folder
    cpu_threads: int = 0  # torch CPU threads (0: torch's default); 1 avoids OpenMP thrashing on busy small machines
    memo_images: int = 20000  # images whose frozen-backbone outputs and targets stay in RAM (0: off)
    # Worker processes that fill that memo before the first step (0: the first epoch fills it, at
    # several times a later epoch's cost); needs a filled proposal cache.
    prefill_workers: int = 0
    # Validation and best-checkpoint selection: the first text of every sample, IoP selection as
    # the model's config says, gIoU/cIoU; the best gIoU so far is kept in output_dir/best.
    val_datasets: list[DatasetSpec] = field(default_factory=list)
    eval_every: int = 0  # optimizer steps between validations; 0: at the end of every epoch
    val_scoring: str = "resize1024"  # resize1024: prediction and truth to 1024x1024 first (published ReasonSeg); native

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.val_scoring not in VAL_SCORINGS:
            raise ValueError(f"val_scoring must be one of {VAL_SCORINGS}, got {self.val_scoring!r}")
        for name in ("queries_per_image", "steps", "batch_size", "grad_accum", "log_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("global_batch", "eval_every", "samples_per_epoch", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers, got {self.betas!r}")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        specs = {key: data.pop(key) for key in ("datasets", "val_datasets") if key in data}
        config = _from_dict(cls, data)
        for key, value in specs.items():
            if not isinstance(value, list):
                raise ValueError(f"{key} must be a list of data set specs")
            setattr(config, key, [config.under_root(DatasetSpec.from_dict(d)) for d in value])
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
        return preset_with_overrides(self.preset, self.model)

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
