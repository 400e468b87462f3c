"""The statistics and machine facts that the benchmark and latency reports share."""

from __future__ import annotations

import os
import platform

import pytest

from llmseg_model.evaluation.stats import cpu_description, describe_platform, latency_stats, platform_info


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
    if hasattr(os, "sched_getaffinity"):
        assert info["cpus"] == len(os.sched_getaffinity(0))


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu vme

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: Another name
"""


def test_the_cpu_is_named_with_its_family_and_model_from_the_first_processor():
    assert cpu_description(CPUINFO) == {"cpu": "AMD EPYC", "cpu_id": "family 25 model 17"}
    # An ARM board's cpuinfo has no model name line: the architecture stands in, without numbers.
    arm = cpu_description("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n")
    assert arm == {"cpu": platform.processor() or platform.machine()}
    assert cpu_description("") == {"cpu": platform.processor() or platform.machine()}


def test_a_reports_machine_line_names_the_cpu_and_the_gpu_and_reads_older_reports():
    cpu = {"device": "cpu", "cpu": "AMD EPYC", "cpu_id": "family 25 model 17", "cpus": 2, "torch_threads": 1}
    assert describe_platform(cpu) == "cpu (AMD EPYC, family 25 model 17, 2 CPUs, 1 torch thread)"
    gpu = {"device": "cuda", "gpu": "NVIDIA H200", "cpu": "x86_64", "torch_threads": 16}
    assert describe_platform(gpu) == "NVIDIA H200 (x86_64, 16 torch threads)"
    assert describe_platform({"device": "cpu"}) == "cpu"
