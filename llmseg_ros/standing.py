"""Standing instructions: answered again on new frames, at most at a rate, until stopped.

They come from the Track action (one task per goal, results as feedback) and from the
`standing_instructions` parameter (results on the `result` topic). The node asks which tasks are
due on a frame when the frame arrives while the worker is idle, and after each batch for the
newest frame; a due task gets one job, and never a second while one is in flight, so a slow model
skips frames instead of growing a queue, and tasks that are due together are answered with one
proposal pass and one batched query. A task answers at most once in each 1/rate slot of one clock
(and at least half a slot after its last answer), so tasks with the same rate fall due together.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from llmseg_interfaces.msg import SegmentationResult


@dataclass(eq=False)
class StandingTask:
    """One standing instruction and what it has produced so far."""

    id: str
    text: str
    phrase: bool
    rate: float  # answers per second at most; 0 = every new frame
    deliver: Callable[[SegmentationResult], None]  # feedback, or the result topic
    origin: str = "action"  # "action" | "parameter"
    in_flight: bool = False
    last_slot: int = -1
    last_start: float = -math.inf  # clock time of the last job made
    last_seq: int = -1  # newest frame (FrameStore sequence number) a job was made on
    closed: bool = False  # ended: what is still in flight is not delivered
    ended: threading.Event = field(default_factory=threading.Event)
    end_reason: str = ""
    end_status: int = SegmentationResult.OK
    answered: int = 0
    ok: int = 0
    empty: int = 0
    failed: int = 0
    latency_sum: float = 0.0
    last_result: SegmentationResult | None = None

    def end(self, reason: str, status: int = SegmentationResult.OK) -> None:
        """Ask the task to stop (the first reason wins)."""
        if not self.ended.is_set():
            self.end_reason, self.end_status = reason, status
            self.ended.set()

    def record(self, result: SegmentationResult) -> None:
        self.answered += 1
        if result.status == SegmentationResult.OK:
            self.ok += 1
        elif result.status == SegmentationResult.EMPTY:
            self.empty += 1
        else:
            self.failed += 1
        self.latency_sum += next((t.seconds for t in result.timings if t.stage == "total"), 0.0)
        self.last_result = result


class StandingTasks:
    """The running standing tasks (thread-safe: executor threads add, the image callback asks,
    the worker reports)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._tasks: dict[int, StandingTask] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def add(self, task: StandingTask) -> list[StandingTask]:
        """Start a task; running tasks with its id (and origin) are removed and returned, to be
        ended as preempted."""
        with self._lock:
            preempted = [t for t in self._tasks.values() if t.id == task.id and t.origin == task.origin]
            for old in preempted:
                self._close(old)
            self._tasks[id(task)] = task
        return preempted

    def remove(self, task: StandingTask) -> None:
        """Stop scheduling a task; a result still in flight for it is dropped."""
        with self._lock:
            self._close(task)

    def _close(self, task: StandingTask) -> None:
        task.closed = True
        self._tasks.pop(id(task), None)

    def tasks(self, origin: str | None = None) -> list[StandingTask]:
        with self._lock:
            return [t for t in self._tasks.values() if origin is None or t.origin == origin]

    def due(self, frame_seq: int) -> list[StandingTask]:
        """The tasks to answer on a frame that just arrived; they are marked in flight."""
        now = self._clock()
        due = []
        with self._lock:
            for task in self._tasks.values():
                if task.in_flight or frame_seq <= task.last_seq:
                    continue
                slot = math.floor(now * task.rate) if task.rate > 0 else frame_seq
                if slot <= task.last_slot or (task.rate > 0 and now - task.last_start < 0.5 / task.rate):
                    continue
                task.in_flight, task.last_slot, task.last_seq, task.last_start = True, slot, frame_seq, now
                due.append(task)
        return due

    def finished(self, task: StandingTask, result: SegmentationResult) -> bool:
        """A job of the task was answered; True when the result is to be delivered."""
        with self._lock:
            task.in_flight = False
            if task.closed:
                return False
            task.record(result)
            return True

    def in_flight(self) -> int:
        with self._lock:
            return sum(t.in_flight for t in self._tasks.values())
