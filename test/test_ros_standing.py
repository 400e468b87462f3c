"""Which standing instructions are due on a frame (slots of the rate, one job in flight, sharing),
and the level and reasons /diagnostics reports; plain unit tests with a fake clock."""

from __future__ import annotations

import pytest

from ros_helpers import requires_interfaces, skip_module_without_interfaces

pytestmark = requires_interfaces
skip_module_without_interfaces()  # the imports below need the built interfaces

from llmseg_interfaces.msg import SegmentationResult  # noqa: E402
from llmseg_ros import diagnostics  # noqa: E402
from llmseg_ros.standing import StandingTask, StandingTasks  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def task(name: str, rate: float = 0.0) -> StandingTask:
    return StandingTask(name, "the red ball", False, rate, deliver=lambda result: None)


def ok() -> SegmentationResult:
    return SegmentationResult(status=SegmentationResult.OK)


def test_one_job_in_flight_and_only_newer_frames():
    tasks = StandingTasks(Clock())
    a = task("a")
    tasks.add(a)
    assert tasks.due(1) == [a]
    assert tasks.due(2) == []  # in flight: the frame is skipped, nothing queues up
    assert tasks.finished(a, ok()) and a.answered == 1
    assert tasks.due(2) == [a] and tasks.finished(a, ok())
    assert tasks.due(2) == []  # that frame was answered already


def test_tasks_of_one_rate_fall_due_together():
    clock = Clock()
    tasks = StandingTasks(clock)
    a, b = task("a", rate=2.0), task("b", rate=2.0)
    tasks.add(a)
    clock.now = 100.1
    assert tasks.due(1) == [a]
    tasks.add(b)  # started later, in the same 0.5 s slot
    clock.now = 100.2
    assert tasks.due(2) == [b]
    tasks.finished(a, ok()), tasks.finished(b, ok())
    clock.now = 100.45
    assert tasks.due(3) == []  # still the slot both were answered in
    clock.now = 100.55
    assert tasks.due(4) == [a, b]  # the next slot: together, so one proposal pass and one batch


def test_at_least_half_a_slot_between_answers():
    clock = Clock()
    tasks = StandingTasks(clock)
    a = task("a", rate=1.0)
    tasks.add(a)
    clock.now = 100.9
    assert tasks.due(1) == [a]
    tasks.finished(a, ok())
    clock.now = 101.1  # a new slot, but only 0.2 s later
    assert tasks.due(2) == []
    clock.now = 101.45
    assert tasks.due(3) == [a]


def test_preemption_and_removal_drop_what_is_in_flight():
    tasks = StandingTasks(Clock())
    old = task("arm")
    tasks.add(old)
    assert tasks.due(1) == [old]
    new = task("arm")
    assert tasks.add(new) == [old]  # same id: the old one is handed back to be ended
    assert not tasks.finished(old, ok()) and old.answered == 0  # its late answer is not delivered
    assert tasks.tasks() == [new]
    other = StandingTask("arm", "x", False, 0.0, deliver=lambda r: None, origin="parameter")
    assert tasks.add(other) == [] and len(tasks.tasks()) == 2  # ids are per origin


def health(**changes) -> diagnostics.Health:
    values = dict(name="llmseg: /llmseg", state="active", model="loaded", model_error="", device="cpu", preset="tiny",
                  queue=0, max_queue=16, frame_age=0.05, frame_stamp_ns=None, depth_enabled=False, depth_age=None,
                  camera_info=False, standing=0, goals=0, stale_after=2.0, frames_lost_recently=0, stats={})
    values.update(changes)
    return diagnostics.Health(**values)


@pytest.mark.parametrize("changes, level, reason", [
    ({}, b"\x00", "ok"),
    ({"state": "inactive"}, b"\x01", "answered NOT_ACTIVE"),
    ({"frame_age": None}, b"\x01", "no image received yet"),
    ({"frame_age": 5.0}, b"\x01", "no image for 5.0 s"),
    ({"depth_enabled": True, "depth_age": None, "camera_info": True}, b"\x01", "no depth image"),
    ({"depth_enabled": True, "depth_age": 0.1}, b"\x01", "no camera info"),
    ({"frames_lost_recently": 7}, b"\x01", "7 image frames lost"),
    ({"stats": {"since": {"QUEUE_FULL": 3}}}, b"\x01", "3 instructions rejected"),
    ({"queue": 16}, b"\x01", "queue full"),
    ({"model_error": "weights.sam_checkpoint missing"}, b"\x02", "weights.sam_checkpoint"),
    ({"stats": {"since": {"MODEL_ERROR": 2}}}, b"\x02", "2 instructions failed in the model"),
])
def test_levels_and_reasons(changes, level, reason):
    array = diagnostics.diagnostic_array(health(**changes), stamp=SegmentationResult().header.stamp)
    status = array.status[0]
    assert status.level == level and reason in status.message


def test_counts_and_percentiles():
    stats = diagnostics.Stats()
    for seconds in (0.1, 0.2, 0.3, 0.4):
        result = ok()
        result.timings = [diagnostics_timing("llm", seconds)]
        stats.result(result)
    stats.result(SegmentationResult(status=SegmentationResult.QUEUE_FULL))
    stats.batch(4, prepared=True)
    first = stats.snapshot()
    assert first["since"] == {"OK": 4, "QUEUE_FULL": 1} and first["prepares"] == 1 and first["batched"] == 4
    assert first["percentiles"]["llm"][0] == pytest.approx(0.25)
    assert stats.snapshot()["since"] == {}  # only what is new since the last message


def diagnostics_timing(stage: str, seconds: float):
    from llmseg_interfaces.msg import StageTiming

    return StageTiming(stage=stage, seconds=seconds)
