"""A single inference thread fed by a bounded FIFO queue.

The executor threads only enqueue; the model runs here, one job at a time, so a slow model never
blocks image callbacks or lifecycle services, and the queue bound keeps memory and latency bounded.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Callable, Generic, TypeVar

Job = TypeVar("Job")

logger = logging.getLogger(__name__)


class Worker(Generic[Job]):
    """Runs `handle(job)` for each submitted job on one background thread, in order."""

    def __init__(self, handle: Callable[[Job], None], max_queue: int, name: str = "llmseg-worker") -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.handle = handle
        self.max_queue = max_queue
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> bool:
        """Queue a job; False (and the job is not queued) when the queue is full or stopping."""
        with self._cond:
            if self._stopping or len(self._queue) >= self.max_queue:
                return False
            self._queue.append(job)
            self._cond.notify()
            return True

    def drain(self) -> list[Job]:
        """Remove and return every job still waiting (the one running is not interrupted)."""
        with self._cond:
            jobs = list(self._queue)
            self._queue.clear()
            return jobs

    def cancel(self, job: Job) -> bool:
        """Take a job out of the queue before it runs; False when it already ran or is running."""
        with self._cond:
            for queued in self._queue:
                if queued is job:
                    self._queue.remove(queued)
                    return True
            return False

    def pending(self) -> int:
        """Jobs waiting plus the one running."""
        with self._cond:
            return len(self._queue) + int(self._busy)

    def stop(self, timeout: float | None = None) -> list[Job]:
        """Stop after the running job; return the jobs that never ran."""
        with self._cond:
            self._stopping = True
            jobs = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return jobs

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._queue.popleft()
                self._busy = True
            try:
                self.handle(job)
            except Exception:  # the thread must outlive any bad job; the handler reports its own errors
                logger.exception("worker job failed")
            finally:
                with self._cond:
                    self._busy = False
