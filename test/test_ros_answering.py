"""The worker's batches, in process: the shipped tiny model, a real frame store and queue, no node.

Every queued instruction on one frame is answered in one batch, each exactly once; an exception
inside a batch answers each member MODEL_ERROR once and the next batch runs; a delivery that fails
keeps nobody else from their result; a standing instruction's result is dropped once its task has
ended.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from ros_helpers import requires_interfaces, rgb_image, skip_module_without_interfaces

pytestmark = requires_interfaces
skip_module_without_interfaces()  # the imports below need the built interfaces

from rclpy.logging import get_logger  # noqa: E402

from llmseg_interfaces.msg import SegmentationResult  # noqa: E402
from llmseg_model.config import preset_config  # noqa: E402
from llmseg_model.data.procedural import ProceduralDataset  # noqa: E402
from llmseg_ros import diagnostics  # noqa: E402
from llmseg_ros.answering import BatchRunner, Replies  # noqa: E402
from llmseg_ros.batching import Job  # noqa: E402
from llmseg_ros.frames import FrameStore, make_frame  # noqa: E402
from llmseg_ros.parameters import RUNTIME, SPECS, preset_value  # noqa: E402
from llmseg_ros.standing import StandingTask, StandingTasks  # noqa: E402
from llmseg_ros.worker import Worker  # noqa: E402


@pytest.fixture(scope="module")
def model():
    from llmseg_model.modeling.model import LLMSeg

    model = LLMSeg.from_config(preset_config("tiny"))
    yield model
    model.release()


@pytest.fixture(scope="module")
def scene():
    return ProceduralDataset("test", 1).scene(0)


class Bench:
    """A BatchRunner wired the way the node wires it, around a queue whose thread is held on a
    first job, so the test decides what is queued when a batch starts."""

    def __init__(self, model, load_model=None) -> None:
        tiny = preset_config("tiny")
        self.runtime = {spec.name: preset_value(tiny, spec.name) if spec.preset_key else spec.default
                        for spec in SPECS if spec.phase == RUNTIME}
        self.frames = FrameStore(4, 10.0, 1)
        self.stats = diagnostics.Stats()
        self.standing = StandingTasks()
        self.replies = Replies(get_logger("test_ros_answering"), self.stats, self.standing)
        self.results: list[SegmentationResult] = []
        self.extras: list[str] = []
        self.runner = BatchRunner(
            frames=self.frames, runtime=lambda: dict(self.runtime), replies=self.replies,
            extras=lambda result, *rest: self.extras.append(result.instruction_id),
            stats=self.stats, logger=get_logger("test_ros_answering"), use_depth=False,
            now_ns=time.time_ns, load_model=load_model or (lambda: (model, "")),
            queue=lambda: self.queue, schedule_standing=lambda frame: None,
        )
        self.gate = threading.Event()
        self.queue: Worker[Job] = Worker(lambda job: self.gate.wait(30), max_queue=16)
        self.queue.submit(Job(id="gate", text="", image_stamp_ns=0, received=0.0, reply=lambda r: None))
        deadline = time.monotonic() + 10.0
        while self.queue.queued() and time.monotonic() < deadline:  # until the thread holds the gate job
            time.sleep(0.01)
        assert not self.queue.queued(), "the queue's thread never took its first job"

    def add_frame(self, rgb):
        frame = make_frame(rgb_image(rgb), self.frames.arrived(None), 4096, 64 << 20, time.time_ns())
        self.frames.add_colour(frame, 0)
        return frame

    def job(self, name: str, text: str, frame, reply=None) -> Job:
        """An instruction bound to `frame` on arrival (frame_binding: arrival)."""
        return Job(id=name, text=text, image_stamp_ns=0, received=time.monotonic(),
                   reply=reply or self.results.append, bound=frame, bound_ns=time.time_ns())

    def close(self) -> None:
        self.gate.set()
        self.queue.stop(timeout=10)


@pytest.fixture
def bench(model):
    bench = Bench(model)
    yield bench
    bench.close()


def test_every_queued_instruction_on_the_frame_is_answered_once_in_one_batch(bench, scene):
    frame = bench.add_frame(scene.image)
    texts = [instruction.text for instruction in scene.instructions][:3]
    jobs = [bench.job(f"q{k}", text, frame) for k, text in enumerate(texts)]
    for job in jobs[1:]:
        assert bench.queue.submit(job)
    bench.runner.process(jobs[0])
    assert Counter(r.instruction_id for r in bench.results) == {job.id: 1 for job in jobs}
    assert {r.status_name for r in bench.results} <= {"OK", "EMPTY"}
    assert {r.batch_size for r in bench.results} == {len(jobs)}
    assert bench.queue.queued() == 0  # the companions were taken out of the queue
    assert sorted(bench.extras) == sorted(job.id for job in jobs)
    # a second instruction on the same frame is answered from the cached features
    bench.runner.process(bench.job("again", texts[0], frame))
    again = bench.results[-1]
    assert again.instruction_id == "again" and again.frame_cached
    first = next(r for r in bench.results if r.instruction_id == "q0")
    assert again.mask == first.mask


def test_an_exception_inside_a_batch_answers_each_member_model_error_once(bench, scene, model, monkeypatch):
    frame = bench.add_frame(scene.image)
    text = scene.instructions[0].text
    jobs = [bench.job(f"q{k}", text, frame) for k in range(3)]
    for job in jobs[1:]:
        bench.queue.submit(job)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model, "query_batch", broken)
    bench.runner.process(jobs[0])
    assert Counter(r.instruction_id for r in bench.results) == {job.id: 1 for job in jobs}
    assert all(r.status == SegmentationResult.MODEL_ERROR and "out of memory" in r.error for r in bench.results)
    monkeypatch.undo()
    bench.runner.process(bench.job("after", text, frame))  # the next batch runs as usual
    assert bench.results[-1].instruction_id == "after" and bench.results[-1].status_name in ("OK", "EMPTY")


def test_a_failing_delivery_keeps_nobody_else_from_their_result(bench, scene):
    frame = bench.add_frame(scene.image)
    text = scene.instructions[0].text

    def gone(result: SegmentationResult) -> None:
        raise RuntimeError("the context is shut down")

    jobs = [bench.job("first", text, frame), bench.job("gone", text, frame, reply=gone), bench.job("last", text, frame)]
    for job in jobs[1:]:
        bench.queue.submit(job)
    bench.runner.process(jobs[0])
    assert [r.instruction_id for r in bench.results] == ["first", "last"]
    counts = bench.stats.snapshot()["by_status"]
    assert counts.get("OK", 0) + counts.get("EMPTY", 0) == 3  # the undelivered answer is still counted


def test_a_model_that_cannot_load_answers_the_whole_batch_with_the_reason(model, scene):
    bench = Bench(model, load_model=lambda: (None, "cannot load the tiny model: no such file"))
    try:
        frame = bench.add_frame(scene.image)
        jobs = [bench.job(f"q{k}", scene.instructions[0].text, frame) for k in range(2)]
        bench.queue.submit(jobs[1])
        bench.runner.process(jobs[0])
        assert [(r.instruction_id, r.status_name, r.error) for r in bench.results] == [
            (job.id, "MODEL_ERROR", "cannot load the tiny model: no such file") for job in jobs
        ]
    finally:
        bench.close()


def test_a_standing_result_is_dropped_once_its_task_ended(bench, scene):
    frame = bench.add_frame(scene.image)
    delivered: list[SegmentationResult] = []
    task = StandingTask("track-1", scene.instructions[0].text, False, 0.0, delivered.append)
    bench.standing.add(task)
    job = bench.job("track-1", task.text, frame, reply=task.deliver)
    job.standing = task
    bench.standing.remove(task)  # the goal was cancelled while its job was queued
    bench.runner.process(job)
    assert delivered == []
