"""The statistics and machine facts that the benchmark and latency reports share."""

from __future__ import annotations

import pytest

from llmseg_model.evaluation.stats import latency_stats, platform_info


def test_latency_stats_are_milliseconds_of_seconds():
    stats = latency_stats([0.001 * v for v in range(1, 101)])
    assert stats["count"] == 100 and stats["median_ms"] == pytest.approx(50.5) and stats["p95_ms"] == pytest.approx(95.05)
    assert stats["mean_ms"] == pytest.approx(50.5)
    assert latency_stats([]) == {"count": 0, "median_ms": None, "p95_ms": None, "mean_ms": None}


def test_platform_info_names_the_machine_and_its_threads():
    import torch

    info = platform_info("cpu")
    assert info["device"] == "cpu" and info["torch"] == torch.__version__ and info["cpu"]
    assert info["torch_threads"] == torch.get_num_threads() and "gpu" not in info
