"""Timing statistics and the facts about the machine that every report states beside them."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from typing import Any

import numpy as np


def latency_stats(values: Sequence[float]) -> dict[str, float | int | None]:
    """Seconds -> count, median, 95th percentile and mean in milliseconds (None when empty)."""
    arr = np.asarray(values, dtype=np.float64) * 1000.0
    if not len(arr):
        return {"count": 0, "median_ms": None, "p95_ms": None, "mean_ms": None}
    return {
        "count": int(len(arr)),
        "median_ms": float(np.median(arr)),
        "p95_ms": float(np.percentile(arr, 95)),
        "mean_ms": float(arr.mean()),
    }


def platform_info(device: str) -> dict[str, Any]:
    """Python, torch, the device, the CPU, torch's thread count and the GPU's name when there is
    one: times mean little without them."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
