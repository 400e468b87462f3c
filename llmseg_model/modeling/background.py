"""One background thread a model owns, for work that can run beside its caller.

`LLMSeg.prepare` uses it to compute a frame's image branch (DINOv2 patches, LLaVA image tokens,
prompt prefix) while SAM proposes on the calling thread: the two branches share nothing until mask
pooling, and torch releases the GIL inside its operations, so on a CPU they run on separate cores.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable


class BackgroundWorker:
    """A single worker thread, started on first use. A copy or an unpickled worker starts without
    one (a thread cannot be copied), so `copy.deepcopy(model)` still works."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
            return self._pool.submit(function, *args)

    def shutdown(self) -> None:
        """Stop the thread once queued work is done (a later `submit` starts a new one)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"])

    def __deepcopy__(self, memo: dict) -> "BackgroundWorker":
        return BackgroundWorker(self.name)
