"""Received frames: safe stamps, a buffer bounded by time and count, and transport-drop accounting.

The image callback only validates a frame's header (cheap, no copy) and stores it here; decoding
waits until an instruction needs the frame. Instructions may name a frame by stamp, so the buffer
keeps the recent past (`frame_buffer_seconds`, at most `frame_buffer_size` frames), and an
instruction naming a frame that has not arrived yet can wait for it.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any

NS = 1_000_000_000


def stamp_to_ns(stamp: Any) -> int | None:
    """builtin_interfaces/Time as integer nanoseconds; None for a negative stamp (invalid in ROS).

    rclpy's Time.from_msg raises on negative seconds; a message must never be able to do that to a
    callback, so stamps are converted here with plain integers.
    """
    sec, nanosec = int(stamp.sec), int(stamp.nanosec)
    if sec < 0:
        return None
    return sec * NS + nanosec


@dataclass
class Frame:
    """One received image, kept undecoded until an instruction needs it."""

    seq: int | None  # None: a service request's own image (never buffered or cached)
    msg: Any  # sensor_msgs Image / CompressedImage; None when its data was refused (see error)
    header: Any  # std_msgs/Header
    stamp_ns: int  # header stamp, or the receive time when the header has none (or a bad one)
    received: float = field(default_factory=time.monotonic)
    error: str = ""  # why this frame cannot be used (BAD_IMAGE), found without decoding it


class FrameBuffer:
    """The newest frames, oldest first: those within `seconds` of the newest, at most `size`.

    Thread-safe: the image callback adds, the worker looks up and waits.
    """

    def __init__(self, size: int, seconds: float) -> None:
        self.size = size
        self.seconds = seconds
        self._frames: collections.deque[Frame] = collections.deque()
        self._cond = threading.Condition()

    def add(self, frame: Frame) -> None:
        with self._cond:
            self._frames.append(frame)
            while len(self._frames) > self.size or (
                len(self._frames) > 1 and frame.received - self._frames[0].received > self.seconds
            ):
                self._frames.popleft()
            self._cond.notify_all()

    def newest(self) -> Frame | None:
        with self._cond:
            return self._frames[-1] if self._frames else None

    def frames(self) -> list[Frame]:
        with self._cond:
            return list(self._frames)

    def clear(self) -> None:
        with self._cond:
            self._frames.clear()

    def find(self, stamp_ns: int, tolerance_ns: int) -> Frame | None:
        """The buffered frame closest to stamp_ns within the tolerance, if any."""
        with self._cond:
            matches = [f for f in self._frames if abs(f.stamp_ns - stamp_ns) <= tolerance_ns]
        return min(matches, key=lambda f: abs(f.stamp_ns - stamp_ns)) if matches else None

    def wait_for_stamp(self, stamp_ns: int, timeout: float) -> bool:
        """Wait until a frame stamped at or after stamp_ns arrives; False after timeout seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (self._frames and self._frames[-1].stamp_ns >= stamp_ns):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True


class DropCounter:
    """Counts frames lost between publisher and node, from the publishers' sequence numbers.

    Best-effort transport silently loses frames (Fast DDS's default shared-memory segments drop
    most camera-sized ones); a gap in a publisher's sequence numbers is what makes that visible.
    """

    def __init__(self) -> None:
        self._last: dict[bytes, int] = {}
        self._lock = threading.Lock()
        self.received = 0
        self.lost = 0

    def count(self, info: Any) -> int:
        """Account for one received message (rclpy MessageInfo); returns how many were lost before it."""
        sequence = info.get("publication_sequence_number") if isinstance(info, dict) else None
        gid = info.get("publisher_gid") if isinstance(info, dict) else None
        key = bytes(gid["data"]) if isinstance(gid, dict) and "data" in gid else b""
        with self._lock:
            self.received += 1
            if not sequence:  # the middleware does not report sequence numbers
                return 0
            previous = self._last.get(key)
            self._last[key] = sequence
            lost = sequence - previous - 1 if previous is not None and sequence > previous + 1 else 0
            self.lost += lost
            return lost

    def take(self) -> tuple[int, int]:
        """(received, lost) since the last take."""
        with self._lock:
            counts = (self.received, self.lost)
            self.received = self.lost = 0
            return counts
