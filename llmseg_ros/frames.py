"""Received frames: safe stamps, a buffer bounded by time and count, the features cached per frame,
transport-drop accounting, and which frame an instruction is about.

The image callback only validates a frame's header (cheap, no copy) and stores it here; decoding
waits until an instruction needs the frame. Instructions may name a frame by stamp, so the buffer
keeps the recent past (`frame_buffer_seconds`, at most `frame_buffer_size` frames), frames whose
features are cached stay findable, and an instruction naming a frame that has not arrived yet can
wait for it.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sensor_msgs.msg import CompressedImage

from llmseg_interfaces.msg import SegmentationResult
from llmseg_ros import conversions

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

    def restart(self) -> None:
        """Forget the publishers' last numbers (frames sent while unsubscribed were never lost)."""
        with self._lock:
            self._last.clear()

    def take(self) -> tuple[int, int]:
        """(received, lost) since the last take."""
        with self._lock:
            counts = (self.received, self.lost)
            self.received = self.lost = 0
            return counts


def make_frame(msg: Any, seq: int | None, max_side: int, max_bytes: int, now_ns: int) -> Frame:
    """A Frame for a received Image / CompressedImage, checked from its header alone; a refused
    frame keeps its header (for the answer) but not its data."""
    stamp = stamp_to_ns(msg.header.stamp)
    error = ""
    if stamp is None:
        error = f"header stamp is negative ({msg.header.stamp.sec} s)"
    else:
        try:
            if isinstance(msg, CompressedImage):
                conversions.check_compressed(msg, max_bytes)
            else:
                conversions.check_image(msg, max_side, max_bytes)
        except ValueError as invalid:
            error = str(invalid)
    return Frame(seq, None if error else msg, msg.header, stamp or now_ns, error=error)


@dataclass
class CachedFrame:
    """A frame whose proposals and features are kept for further instructions."""

    frame: Frame
    features: Any  # llmseg_model FrameFeatures
    rgb: Any  # the decoded image, for the overlay


@dataclass
class Pick:
    """Which frame an instruction is about, or a status saying why there is none."""

    frame: Frame | None = None
    cached: CachedFrame | None = None
    status: int = 0
    error: str = ""
    late: str = ""  # set when the frame is much older than the stream's frame interval


class FrameStore:
    """The frame buffer and the feature cache of one configured node, and frame statistics."""

    def __init__(self, size: int, seconds: float, cache_size: int) -> None:
        self.buffer = FrameBuffer(size, seconds)
        self.cache: collections.OrderedDict[int, CachedFrame] = collections.OrderedDict()  # worker thread only
        self.cache_size = cache_size
        self.drops = DropCounter()
        self._gaps: collections.deque[float] = collections.deque(maxlen=15)
        self._last_arrival = 0.0
        self._seq = itertools.count()

    def arrived(self, info: Any) -> int:
        """Account for a received frame (rclpy MessageInfo); returns its sequence number here."""
        self.drops.count(info)
        now = time.monotonic()
        if self._last_arrival:
            self._gaps.append(now - self._last_arrival)
        self._last_arrival = now
        return next(self._seq)

    @property
    def interval(self) -> float:
        """Typical seconds between received frames: the median of the last gaps (0: unknown).
        A median, so one pause in the stream does not hide that frames stopped later."""
        gaps = sorted(self._gaps)
        return gaps[len(gaps) // 2] if len(gaps) >= 3 else 0.0

    def remember(self, frame: Frame, features: Any, rgb: Any) -> None:
        if frame.seq is None:  # a service request's own image
            return
        self.cache[frame.seq] = CachedFrame(frame, features, rgb)
        self.cache.move_to_end(frame.seq)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)

    def clear(self) -> None:
        self.cache.clear()
        self.buffer.clear()

    def pick(self, image_stamp_ns: int, runtime: dict[str, Any], now_ns: int) -> Pick:
        """The newest frame, or the one named by stamp. Validity is checked before staleness: a
        bad frame is BAD_IMAGE, whatever its age."""
        if image_stamp_ns:
            pick = self._find_stamp(image_stamp_ns, runtime)
        else:
            frame = self.buffer.newest()
            pick = Pick(frame, self.cache.get(frame.seq)) if frame is not None else Pick(
                status=SegmentationResult.NO_IMAGE, error="no image received yet")
        if pick.status:
            return pick
        frame = pick.frame
        if frame.error:
            return Pick(frame, status=SegmentationResult.BAD_IMAGE, error=frame.error)
        if image_stamp_ns:  # asked for by name: its age is the caller's business
            return pick
        age = (now_ns - frame.stamp_ns) / NS
        if runtime["max_image_age"] and age > runtime["max_image_age"]:
            return Pick(frame, status=SegmentationResult.STALE_IMAGE, error=(
                f"the latest frame is {age:.2f} s old; max_image_age is {runtime['max_image_age']} s"))
        if self.interval and age > 3 * self.interval + 0.1:
            pick.late = (f"the frame used is {age:.2f} s old while frames arrive every {self.interval:.3f} s: "
                         "newer frames are not arriving (lost in transport?)")
        return pick

    def _lookup(self, stamp_ns: int, tolerance: int) -> Pick | None:
        for entry in list(self.cache.values()):
            if abs(entry.frame.stamp_ns - stamp_ns) <= tolerance:
                return Pick(entry.frame, entry)
        frame = self.buffer.find(stamp_ns, tolerance)
        return Pick(frame, self.cache.get(frame.seq)) if frame is not None else None

    def _find_stamp(self, stamp_ns: int, runtime: dict[str, Any]) -> Pick:
        """Among cached features, then buffered frames, waiting briefly for one newer than every
        frame received so far."""
        tolerance = int(runtime["image_stamp_tolerance"] * NS)
        found = self._lookup(stamp_ns, tolerance)
        if found is None and runtime["image_stamp_wait"]:
            if self.buffer.wait_for_stamp(stamp_ns - tolerance, runtime["image_stamp_wait"]):
                found = self._lookup(stamp_ns, tolerance)
        if found is not None:
            return found
        known = [f.stamp_ns for f in self.buffer.frames()] + [e.frame.stamp_ns for e in list(self.cache.values())]
        if not known:
            return Pick(status=SegmentationResult.NO_IMAGE, error="no image received yet")
        if stamp_ns < min(known):
            return Pick(status=SegmentationResult.STALE_IMAGE, error=(
                f"frame {stamp_ns / NS:.3f} is no longer buffered (oldest {min(known) / NS:.3f}; "
                "frame_buffer_seconds / frame_buffer_size keep more)"))
        return Pick(status=SegmentationResult.NO_IMAGE, error=(
            f"no frame with stamp {stamp_ns / NS:.3f} was received (buffered {min(known) / NS:.3f} .. "
            f"{max(known) / NS:.3f}; lost in transport?)"))
