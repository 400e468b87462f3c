"""What the node reports on /diagnostics: counts, per-stage latency percentiles, and a level.

No diagnostic_updater wheel exists for Kilted, so the node builds its own DiagnosticArray: one
DiagnosticStatus named after the node, with key/value pairs (model state, device, queue depth,
frame and depth age, latency percentiles, dropped and rejected counts) and OK / WARN / ERROR with
the reasons in its message.
"""

from __future__ import annotations

import collections
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from llmseg_interfaces.msg import SegmentationResult
from llmseg_ros.frames import NS
from llmseg_ros.results import status_name

WINDOW = 200  # results whose stage timings make the percentiles
BAD_INPUT = {SegmentationResult.BAD_IMAGE, SegmentationResult.BAD_INSTRUCTION}


class Stats:
    """Counts since start and stage timings of the recent results (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_status: collections.Counter[str] = collections.Counter()
        self.stages: dict[str, collections.deque[float]] = collections.defaultdict(
            lambda: collections.deque(maxlen=WINDOW))
        self.prepares = 0  # proposal passes (LLMSeg.prepare calls)
        self.batches = 0  # LLMSeg.query_batch calls
        self.batched = 0  # instructions answered in them
        self.frames_lost = 0  # best-effort frames lost in transport (from sequence gaps)
        self._reported: collections.Counter[str] = collections.Counter()

    def result(self, result: SegmentationResult) -> None:
        with self._lock:
            self.by_status[status_name(result.status)] += 1
            if result.status in (SegmentationResult.OK, SegmentationResult.EMPTY):
                for timing in result.timings:
                    self.stages[timing.stage].append(timing.seconds)

    def batch(self, size: int, prepared: bool) -> None:
        with self._lock:
            self.batches += 1
            self.batched += size
            self.prepares += int(prepared)

    def lost(self, count: int) -> None:
        with self._lock:
            self.frames_lost += count

    def snapshot(self) -> dict[str, Any]:
        """Totals, the change of each status count since the last snapshot, and percentiles."""
        with self._lock:
            since = self.by_status - self._reported
            self._reported = collections.Counter(self.by_status)
            percentiles = {stage: (float(np.percentile(list(values), 50)), float(np.percentile(list(values), 95)))
                           for stage, values in self.stages.items() if values}
            return {"by_status": dict(self.by_status), "since": dict(since), "percentiles": percentiles,
                    "prepares": self.prepares, "batches": self.batches, "batched": self.batched,
                    "frames_lost": self.frames_lost}


@dataclass
class Health:
    """The node's state as the diagnostics timer sees it."""

    name: str
    state: str  # lifecycle state label
    model: str  # "loaded", "not loaded", "deferred", or the load error
    model_error: str
    device: str
    preset: str
    queue: int
    max_queue: int
    frame_age: float | None  # seconds since the newest colour frame arrived (None: none yet)
    frame_stamp_ns: int | None  # that frame's header stamp (None: none yet)
    depth_enabled: bool
    depth_age: float | None
    camera_info: bool
    standing: int
    goals: int
    stale_after: float  # frame age that counts as stale
    frames_lost_recently: int
    stats: dict[str, Any] = field(default_factory=dict)


def level_and_reasons(health: Health) -> tuple[bytes, list[str]]:
    """ERROR for a model that cannot run; WARN for what makes answers fail or degrade."""
    errors, warnings = [], []
    since = health.stats.get("since", {})
    if health.model_error:
        errors.append(f"model: {health.model_error}")
    if since.get("MODEL_ERROR"):
        errors.append(f"{since['MODEL_ERROR']} instructions failed in the model")
    if health.state != "active":
        warnings.append(f"{health.state}: instructions are answered NOT_ACTIVE")
    else:
        if health.frame_age is None:
            warnings.append("no image received yet")
        elif health.frame_age > health.stale_after:
            warnings.append(f"no image for {health.frame_age:.1f} s")
        if health.depth_enabled:
            if health.depth_age is None:
                warnings.append("use_depth is set but no depth image was received")
            elif health.depth_age > health.stale_after:
                warnings.append(f"no depth image for {health.depth_age:.1f} s")
            if not health.camera_info:
                warnings.append("use_depth is set but no camera info was received")
    if health.frames_lost_recently:
        warnings.append(f"{health.frames_lost_recently} image frames lost in transport recently")
    if since.get("QUEUE_FULL"):
        warnings.append(f"{since['QUEUE_FULL']} instructions rejected (QUEUE_FULL)")
    if health.queue >= health.max_queue:
        warnings.append(f"queue full ({health.queue} of {health.max_queue})")
    if errors:
        return DiagnosticStatus.ERROR, errors + warnings
    return (DiagnosticStatus.WARN, warnings) if warnings else (DiagnosticStatus.OK, ["ok"])


def diagnostic_array(health: Health, stamp: Any) -> DiagnosticArray:
    level, reasons = level_and_reasons(health)
    stats = health.stats
    values = {
        "lifecycle state": health.state,
        "model": health.model,
        "preset": health.preset,
        "device": health.device,
        "queue depth": health.queue,
        "max_queue": health.max_queue,
        "standing instructions": health.standing,
        "track goals": health.goals,
        "frame age (s)": _age(health.frame_age),
        "newest frame stamp (s)": "none yet" if health.frame_stamp_ns is None else _stamp(health.frame_stamp_ns),
        "depth": "on" if health.depth_enabled else "off",
        "depth age (s)": _age(health.depth_age) if health.depth_enabled else "off",
        "camera info": ("received" if health.camera_info else "none") if health.depth_enabled else "off",
        "proposal passes": stats.get("prepares", 0),
        "batches": stats.get("batches", 0),
        "instructions batched": stats.get("batched", 0),
        "frames lost in transport": stats.get("frames_lost", 0),
        "interpreter switch interval (s)": f"{sys.getswitchinterval():g}",  # gil_switch_interval, as applied
        "rejected (QUEUE_FULL)": stats.get("by_status", {}).get("QUEUE_FULL", 0),
        "bad input (BAD_IMAGE, BAD_INSTRUCTION)": sum(stats.get("by_status", {}).get(status_name(s), 0) for s in BAD_INPUT),
    }
    for name, count in sorted(stats.get("by_status", {}).items()):
        values[f"results {name}"] = count
    for stage, (p50, p95) in sorted(stats.get("percentiles", {}).items()):
        values[f"{stage} p50 (s)"] = f"{p50:.4f}"
        values[f"{stage} p95 (s)"] = f"{p95:.4f}"
    status = DiagnosticStatus(level=level, name=health.name, message="; ".join(reasons), hardware_id=health.device,
                              values=[KeyValue(key=key, value=str(value)) for key, value in values.items()])
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array


def _stamp(ns: int) -> str:
    """A stamp as seconds with all nine decimals, exactly (a float would round the nanoseconds)."""
    return f"{ns // NS}.{ns % NS:09d}"


def _age(age: float | None) -> str:
    return "none yet" if age is None else f"{age:.3f}"
