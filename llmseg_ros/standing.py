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
from typing import Any, Callable

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node

from llmseg_interfaces.action import Track
from llmseg_interfaces.msg import SegmentationResult
from llmseg_ros.results import status_name


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


CANCEL_POLL = 0.02  # seconds between a running goal's looks at its cancel request


class TrackServer:
    """The Track action: one StandingTask per goal, each answer sent as feedback, and a summary
    for every goal, including one that cannot run (it ends at once with the status saying why)."""

    def __init__(self, node: Node, tasks: StandingTasks, problem: Callable[[Any], tuple[int, str] | None],
                 new_id: Callable[[], str]) -> None:
        self._node, self._tasks, self._problem, self._new_id = node, tasks, problem, new_id
        # Each running goal waits in its execute callback, on an executor thread of its own.
        self._server = ActionServer(
            node, Track, "track", execute_callback=self._execute, goal_callback=lambda goal: GoalResponse.ACCEPT,
            cancel_callback=self._cancel, callback_group=ReentrantCallbackGroup(), result_timeout=60,
        )

    def end_all(self, reason: str) -> None:
        """End every running goal (the node stops being active)."""
        for task in self._tasks.tasks("action"):
            task.end(reason, SegmentationResult.NOT_ACTIVE)

    def _execute(self, goal_handle: Any) -> Any:
        """Run one standing instruction until it is cancelled, preempted, its duration is over or
        the node stops being active."""
        goal = goal_handle.request
        task_id = goal.id or self._new_id()

        def feedback(result: SegmentationResult) -> None:
            goal_handle.publish_feedback(Track.Feedback(result=result))

        task = StandingTask(task_id, goal.text, goal.phrase, goal.rate, feedback)
        logger = self._node.get_logger()
        problem = self._problem(goal)
        if problem is not None:
            task.end(problem[1], problem[0])
            logger.warning(f"Track goal {task_id!r} not run: {problem[1]}")
        else:
            for old in self._tasks.add(task):
                old.end(f"preempted by a new goal with id {task_id!r}")
            logger.info(f"tracking {task_id!r}: {goal.text!r} at {goal.rate or 'every frame'} Hz")
            deadline = time.monotonic() + goal.duration if goal.duration > 0 else math.inf
            # This thread watches for a cancel request: rclpy marks the goal as cancelling only
            # after the cancel callback has returned, so a goal ended from that callback could be
            # finished before it was marked, and be aborted instead of cancelled.
            while not task.ended.is_set():
                if goal_handle.is_cancel_requested:
                    task.end("cancelled")
                elif time.monotonic() >= deadline:
                    task.end("duration reached")
                else:
                    task.ended.wait(min(CANCEL_POLL, max(0.0, deadline - time.monotonic())))
            self._tasks.remove(task)
        summary = Track.Result(
            id=task_id, status=task.end_status, status_name=status_name(task.end_status), reason=task.end_reason,
            answered=task.answered, ok=task.ok, empty=task.empty, failed=task.failed,
            mean_latency=task.latency_sum / task.answered if task.answered else 0.0,
        )
        if task.last_result is not None:
            summary.last_result = task.last_result
        if goal_handle.is_cancel_requested:
            goal_handle.canceled()
        elif task.end_status == SegmentationResult.OK and task.end_reason == "duration reached":
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return summary

    def _cancel(self, goal_handle: Any) -> CancelResponse:
        """Every cancel request is accepted; the goal's own thread ends it (see _execute)."""
        return CancelResponse.ACCEPT
