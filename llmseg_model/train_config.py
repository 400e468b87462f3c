"""The training job's configuration (config/train_*.yaml), apart from the job itself so that the
proposal precompute can read a training config without importing the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmseg_model.config import LLMSegConfig, _from_dict, preset_with_overrides
from llmseg_model.data.mixing import DatasetSpec


@dataclass
class TrainConfig:
    """Everything a training run needs; loadable from YAML (see config/train_*.yaml)."""

    preset: str = "tiny"
    model: dict = field(default_factory=dict)  # overrides of LLMSegConfig fields (nested)
    output_dir: str = "runs/llmseg"
    cache_dir: str = "cache/proposals"
    datasets: list[DatasetSpec] = field(default_factory=lambda: [DatasetSpec(kind="procedural", size=1000)])
    samples_per_epoch: int = 0  # 0: the total size of the mixed data sets
    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05  # cosine decay floor
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
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

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        specs = data.pop("datasets", None)
        config = _from_dict(cls, data)
        if specs is not None:
            config.datasets = [DatasetSpec.from_dict(d) for d in specs]
        return config

    def model_config(self) -> LLMSegConfig:
        return preset_with_overrides(self.preset, self.model)
