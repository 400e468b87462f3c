"""Timing statistics and the facts about the machine that every report states beside them."""

from __future__ import annotations

import os
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


def cpu_description(cpuinfo: str | None = None) -> dict[str, str]:
    """The CPU's model name, and on x86 its family and model numbers (a cloud VM often reports only
    "AMD EPYC" or "Intel Xeon", which the numbers tell apart by generation), from /proc/cpuinfo
    (`cpuinfo`: its text, for tests); the architecture alone where that file is missing."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                cpuinfo = handle.read()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:
                break  # the first processor's block is enough
            continue
        fields.setdefault(key.strip(), value.strip())
    described = {"cpu": fields.get("model name") or platform.processor() or platform.machine()}
    if "cpu family" in fields and "model" in fields:
        described["cpu_id"] = f"family {fields['cpu family']} model {fields['model']}"
    return described


def usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity where the OS has one, as in a container
    or under taskset), not the host's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def platform_info(device: str) -> dict[str, Any]:
    """Python, torch, the device, the CPU (model, usable logical CPUs), torch's thread count and
    the GPU's name when there is one: times mean little without them."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        **cpu_description(),
        "cpus": usable_cpus(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def describe_platform(info: dict[str, Any]) -> str:
    """One line naming the machine of a report's `platform` (reports written before a field
    existed lack it, and the line leaves it out)."""
    parts = [info.get("cpu"), info.get("cpu_id"), f"{info['cpus']} CPUs" if info.get("cpus") else None]
    threads = info.get("torch_threads")
    if threads:
        parts.append(f"{threads} torch thread{'' if threads == 1 else 's'}")
    parts = [part for part in parts if part]
    host = ", ".join(parts)
    where = info.get("gpu") or info.get("device", "an unnamed device")
    return f"{where} ({host})" if host else where
