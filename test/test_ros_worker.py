"""The inference worker: FIFO order, the queue bound, draining, surviving a failing job."""

from __future__ import annotations

import threading

import pytest

from llmseg_ros.worker import Worker


def test_runs_jobs_in_order_and_bounds_the_queue():
    release = threading.Event()
    started = threading.Event()
    done: list[int] = []

    def handle(job: int) -> None:
        started.set()
        release.wait(10)
        done.append(job)

    worker = Worker(handle, max_queue=2)
    assert worker.submit(0)
    assert started.wait(5)  # job 0 is running, the queue is empty again
    assert worker.submit(1) and worker.submit(2)
    assert not worker.submit(3)  # full: the caller must answer this one itself
    assert worker.pending() == 3
    assert worker.stop(timeout=0) == [1, 2]  # queued jobs are handed back; the running one finishes
    release.set()
    worker._thread.join(5)
    assert done == [0]
    assert not worker._thread.is_alive()


def test_drain_and_order():
    gate = threading.Event()
    done: list[int] = []
    finished = threading.Event()

    def handle(job: int) -> None:
        gate.wait(10)
        done.append(job)
        if job == 4:
            finished.set()

    worker = Worker(handle, max_queue=10)
    for job in range(3):
        worker.submit(job)
    drained = worker.drain()
    assert drained in ([1, 2], [0, 1, 2])  # job 0 may already be running
    for job in (3, 4):
        worker.submit(job)
    gate.set()
    assert finished.wait(5)
    assert done == [j for j in (0, 3, 4) if j not in drained]
    assert worker.stop(5) == []


def test_a_failing_job_does_not_kill_the_thread():
    done = threading.Event()

    def handle(job: str) -> None:
        if job == "bad":
            raise RuntimeError("boom")
        done.set()

    worker = Worker(handle, max_queue=4)
    worker.submit("bad")
    worker.submit("good")
    assert done.wait(5)
    worker.stop(5)
    assert not worker.submit("late")


def test_bad_queue_size():
    with pytest.raises(ValueError, match="max_queue"):
        Worker(lambda job: None, max_queue=0)


def test_cancel_takes_a_queued_job_out():
    release = threading.Event()
    started = threading.Event()
    done: list[str] = []

    def handle(job: str) -> None:
        started.set()
        release.wait(10)
        done.append(job)

    worker = Worker(handle, max_queue=4)
    first, second = "first", "second"
    worker.submit(first)
    assert started.wait(5)
    worker.submit(second)
    assert not worker.cancel(first)  # running: cannot be taken back
    assert worker.cancel(second) and not worker.cancel(second)
    release.set()
    worker.stop(5)
    assert done == ["first"]


def test_take_hands_the_handler_the_queued_jobs_it_asks_for():
    release = threading.Event()
    started = threading.Event()
    both = threading.Event()
    taken: list[list[int]] = []

    def handle(job: int) -> None:
        started.set()
        release.wait(10)
        taken.append([job, *worker.take(lambda other: other % 2 == job % 2, limit=2)])
        if len(taken) == 2:
            both.set()

    worker = Worker(handle, max_queue=2)
    assert worker.submit(0) and started.wait(5)
    assert worker.submit(1) and worker.submit(2) and not worker.submit(3)
    assert worker.submit(4, bounded=False)  # bounded elsewhere: not refused by the queue bound
    assert worker.queued() == 3
    release.set()
    assert both.wait(5)
    assert taken == [[0, 2, 4], [1]]  # 2 and 4 answered with 0; 1 on its own
    worker.stop(5)
