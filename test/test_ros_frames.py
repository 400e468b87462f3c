"""Frames: stamps that cannot raise, a buffer bounded by time and count, drop accounting from
publisher sequence numbers, and which frame an instruction gets (validity before staleness,
names found in the feature cache after they left the buffer)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ros_helpers import requires_interfaces, skip_module_without_interfaces, rgb_image

pytestmark = requires_interfaces
skip_module_without_interfaces()  # the imports below need the built interfaces

from builtin_interfaces.msg import Time  # noqa: E402

from llmseg_interfaces.msg import SegmentationResult  # noqa: E402
from llmseg_ros.frames import NS, DropCounter, Frame, FrameBuffer, FrameStore, make_frame, stamp_to_ns  # noqa: E402

RUNTIME = {"max_image_age": 2.0, "image_stamp_tolerance": 0.005, "image_stamp_wait": 0.0}


def frame(seq: int, stamp_s: float, received: float = 0.0, error: str = "") -> Frame:
    return Frame(seq, object(), None, int(stamp_s * NS), received=received, error=error)


def test_stamps_never_raise():
    assert stamp_to_ns(Time(sec=3, nanosec=5)) == 3 * NS + 5
    assert stamp_to_ns(Time(sec=-1, nanosec=0)) is None
    assert stamp_to_ns(Time(sec=1, nanosec=2**32 - 1)) == NS + 2**32 - 1


def test_make_frame_checks_the_header_and_keeps_no_refused_data():
    image = rgb_image(np.zeros((4, 6, 3), np.uint8), stamp=Time(sec=-2))
    refused = make_frame(image, 1, 0, 0, now_ns=123)
    assert refused.msg is None and "negative" in refused.error and refused.stamp_ns == 123
    image.header.stamp = Time(sec=0)
    assert make_frame(image, 2, 0, 0, now_ns=456).stamp_ns == 456  # no stamp: the arrival time
    image.header.stamp = Time(sec=7)
    good = make_frame(image, 3, 0, 0, now_ns=456)
    assert good.msg is image and not good.error and good.stamp_ns == 7 * NS
    big = make_frame(image, 4, 0, 10, now_ns=0)
    assert big.msg is None and "max_image_bytes=10" in big.error


def test_buffer_keeps_recent_frames_up_to_a_count():
    buffer = FrameBuffer(size=3, seconds=1.0)
    for seq, received in enumerate([0.0, 0.5, 0.9, 1.2]):
        buffer.add(frame(seq, 100 + seq, received))
    assert [f.seq for f in buffer.frames()] == [1, 2, 3]  # count bound (3); 0 was also over 1 s old
    buffer.add(frame(4, 104, received=5.0))
    assert [f.seq for f in buffer.frames()] == [4]  # time bound; the newest always stays
    assert buffer.find(104 * NS + 1000, 5000).seq == 4 and buffer.find(103 * NS, 5000) is None


def test_wait_for_a_named_frame_that_has_not_arrived():
    buffer = FrameBuffer(size=3, seconds=1.0)
    buffer.add(frame(0, 10.0))
    assert not buffer.wait_for_stamp(11 * NS, timeout=0.05)
    threading.Timer(0.1, lambda: buffer.add(frame(1, 11.0))).start()
    assert buffer.wait_for_stamp(11 * NS, timeout=10.0)


def test_drops_are_sequence_gaps_per_publisher():
    counter = DropCounter()

    def info(gid: bytes, sequence: int) -> dict:
        return {"publication_sequence_number": sequence, "publisher_gid": {"data": gid}}

    assert [counter.count(info(b"a", s)) for s in (1, 2, 5)] == [0, 0, 2]
    assert counter.count(info(b"b", 40)) == 0  # another publisher starts its own count
    assert counter.count({"publication_sequence_number": None}) == 0  # middleware without numbers
    assert counter.take() == (5, 2) and counter.take() == (0, 0)
    counter.restart()  # re-subscribed: what was sent meanwhile was not lost
    assert counter.count(info(b"a", 9)) == 0


def test_pick_checks_validity_before_staleness():
    store = FrameStore(size=4, seconds=10.0, cache_size=2)
    now = 1000 * NS
    assert store.pick(0, RUNTIME, now).status == SegmentationResult.NO_IMAGE
    store.buffer.add(frame(0, 990.0, error="unsupported image encoding 'x'"))  # bad and 10 s old
    assert store.pick(0, RUNTIME, now).status == SegmentationResult.BAD_IMAGE
    store.buffer.add(frame(1, 990.0))
    stale = store.pick(0, RUNTIME, now)
    assert stale.status == SegmentationResult.STALE_IMAGE and stale.frame.seq == 1
    assert store.pick(0, dict(RUNTIME, max_image_age=0.0), now).status == 0


def test_pick_names_frames_in_the_cache_after_they_left_the_buffer():
    store = FrameStore(size=1, seconds=10.0, cache_size=2)
    first = frame(0, 100.0)
    store.buffer.add(first)
    store.remember(first, "features-0", "rgb-0")
    store.buffer.add(frame(1, 101.0))  # pushes frame 0 out of the 1-frame buffer
    named = store.pick(100 * NS, RUNTIME, 102 * NS)
    assert named.status == 0 and named.frame is first and named.cached.features == "features-0"
    gone = store.pick(50 * NS, RUNTIME, 102 * NS)
    assert gone.status == SegmentationResult.STALE_IMAGE and "no longer buffered" in gone.error
    missing = store.pick(int(100.5 * NS), RUNTIME, 102 * NS)
    assert missing.status == SegmentationResult.NO_IMAGE and "was received" in missing.error
    for seq in (2, 3):
        store.remember(frame(seq, 100.0 + seq), f"features-{seq}", None)
    assert list(store.cache) == [2, 3]  # cache_size


def test_pick_reports_a_frame_much_older_than_the_stream():
    store = FrameStore(size=4, seconds=10.0, cache_size=2)
    for _ in range(4):
        store.arrived({})
        time.sleep(0.02)
    assert 0 < store.interval < 1.0
    store.buffer.add(frame(0, 100.0))
    assert store.pick(0, RUNTIME, int(100.01 * NS)).late == ""
    late = store.pick(0, RUNTIME, int(101.5 * NS))
    assert late.status == 0 and "not arriving" in late.late


@pytest.mark.parametrize("stamp_sec", [-1, -(2**31)])
def test_negative_stamps_make_refused_frames(stamp_sec):
    image = rgb_image(np.zeros((4, 6, 3), np.uint8), stamp=Time(sec=stamp_sec))
    assert make_frame(image, None, 0, 0, now_ns=1).error.startswith("header stamp is negative")
