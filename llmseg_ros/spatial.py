"""The target in 3D on a SegmentationResult: depth messages in, Target3D fields, a PointCloud2 of
the target's points and rviz markers out.

The geometry is llmseg_ros.depth (plain numpy); this module only checks and converts messages.
Nothing here may raise past the node for a bad message: a depth image or camera info that cannot
be used becomes a depth status on the result (DEPTH_BAD, DEPTH_STALE, ...) and the 2D answer is
still given.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from builtin_interfaces.msg import Duration
from llmseg_interfaces.msg import SegmentationResult, Target3D
from llmseg_ros import conversions
from llmseg_ros import depth as geometry
from llmseg_ros.conversions import PALETTE
from llmseg_ros.frames import NS, DepthFrame, Frame, FrameStore, stamp_to_ns
from llmseg_ros.results import status_name

DEPTH_STATUS_NAMES = ("DEPTH_OFF", "DEPTH_OK", "DEPTH_MISSING", "DEPTH_STALE", "DEPTH_BAD", "DEPTH_NO_VALID")
BYTES_PER_PIXEL = {"16UC1": 2, "mono16": 2, "32FC1": 4}


def set_depth_status(result: SegmentationResult, status: int, error: str = "") -> None:
    result.depth_status, result.depth_status_name, result.depth_error = status, status_name(status, DEPTH_STATUS_NAMES), error


def check_depth_image(msg: Any, max_bytes: int) -> str:
    """Why a depth image cannot be used, from its header and data length alone ("" when it can)."""
    if msg.encoding not in BYTES_PER_PIXEL:
        return f"unsupported depth encoding {msg.encoding!r}; supported: 16UC1 (mm), 32FC1 (m)"
    try:  # the colour images' layout checks
        conversions.check_data_size(msg, max_bytes, "depth image")
        conversions.check_size(int(msg.height), int(msg.width), 0, "depth image")
        conversions.check_rows(msg, int(msg.width) * BYTES_PER_PIXEL[msg.encoding], int(msg.height), "depth ")
    except ValueError as error:
        return str(error)
    return ""


def make_depth_frame(msg: Any, max_bytes: int, now_ns: int) -> DepthFrame:
    """A DepthFrame for a received depth image (refused data is not kept)."""
    stamp = stamp_to_ns(msg.header.stamp)
    error = f"depth header stamp is negative ({msg.header.stamp.sec} s)" if stamp is None else check_depth_image(msg, max_bytes)
    return DepthFrame(None if error else msg, msg.header, stamp or now_ns, error=error)


def depth_metres(depth: DepthFrame, min_depth: float, max_depth: float) -> np.ndarray:
    """The depth image as float32 metres, invalid pixels NaN (decoded once per frame and range)."""
    key = (min_depth, max_depth)
    if depth.metres is not None and depth.metres[0] == key:
        return depth.metres[1]
    msg = depth.msg
    itemsize = BYTES_PER_PIXEL[msg.encoding]
    dtype = np.dtype({2: "u2", 4: "f4"}[itemsize]).newbyteorder(">" if msg.is_bigendian else "<")
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(int(msg.height), int(msg.step))
    raw = np.ascontiguousarray(rows[:, : int(msg.width) * itemsize]).view(dtype)
    metres = geometry.depth_to_metres(raw, msg.encoding, min_depth, max_depth)
    depth.metres = (key, metres)
    return metres


def intrinsics(info: Any, depth_msg: Any) -> geometry.Intrinsics:
    """Pinhole intrinsics from CameraInfo; ValueError when it does not describe this depth image."""
    if (int(info.width), int(info.height)) != (int(depth_msg.width), int(depth_msg.height)):
        raise ValueError(f"camera info is {info.width}x{info.height}, the depth image {depth_msg.width}x{depth_msg.height} "
                         "(depth_info must be the aligned depth image's)")
    return geometry.Intrinsics.from_k(list(info.k), int(info.width), int(info.height))


def target_msg(target: geometry.Target3D | None) -> Target3D:
    if target is None:
        return Target3D()
    centre, size = target.box_center, target.box_size
    return Target3D(
        valid=True,
        centroid=Point(x=float(target.centroid[0]), y=float(target.centroid[1]), z=float(target.centroid[2])),
        box_center=Pose(position=Point(x=float(centre[0]), y=float(centre[1]), z=float(centre[2])),
                        orientation=Quaternion(w=1.0)),
        box_size=Vector3(x=float(size[0]), y=float(size[1]), z=float(size[2])),
        valid_pixels=target.valid_pixels,
        inlier_pixels=target.inlier_pixels,
    )


def match_problem(depth: DepthFrame | None, store: Any, stamp_ns: int, tolerance: float) -> tuple[int, str]:
    """(DEPTH_OK, "") when the frame has a usable depth pairing, else the status that says why not."""
    if depth is None:
        if store.depth.newest() is None:
            return SegmentationResult.DEPTH_MISSING, "no depth image received yet (depth_image topic)"
        nearest = store.depth.nearest(stamp_ns)
        return SegmentationResult.DEPTH_STALE, (
            f"no depth image stamped within depth_tolerance={tolerance} s of the frame "
            f"(nearest buffered: {(nearest.stamp_ns - stamp_ns) / NS:+.3f} s)")
    if depth.error:
        return SegmentationResult.DEPTH_BAD, depth.error
    if depth.info is None:
        return SegmentationResult.DEPTH_MISSING, "no camera info received yet (depth_info topic)"
    return SegmentationResult.DEPTH_OK, ""


def fill_3d(result: SegmentationResult, masks: np.ndarray, depth: DepthFrame, runtime: dict[str, Any]) -> geometry.Target3D | None:
    """Put each instance's and the union's 3D into `result` (instances in label order, masks the
    same order); returns the union (for the point cloud), None when there is none."""
    result.depth_header = depth.header
    min_depth, max_depth = runtime["min_depth"], runtime["max_depth"]
    if max_depth <= min_depth:
        set_depth_status(result, SegmentationResult.DEPTH_BAD, f"max_depth {max_depth} <= min_depth {min_depth}")
        return None
    try:
        camera = intrinsics(depth.info, depth.msg)
        metres = depth_metres(depth, min_depth, max_depth)
        instances, union = geometry.targets_3d(masks, metres, camera)
    except ValueError as error:
        set_depth_status(result, SegmentationResult.DEPTH_BAD, str(error))
        return None
    for instance, target in zip(result.instances, instances):
        instance.target_3d = target_msg(target)
    result.target_3d = target_msg(union)
    if union is None:
        why = "the mask is empty" if not len(masks) else (
            f"no masked pixel has a usable depth (zero, NaN, or outside {min_depth}..{max_depth} m)")
        set_depth_status(result, SegmentationResult.DEPTH_NO_VALID, why)
        return None
    set_depth_status(result, SegmentationResult.DEPTH_OK)
    return union


def place(result: SegmentationResult, answer: Any, frame: Frame, store: FrameStore, runtime: dict[str, Any],
          stages: dict[str, float]) -> geometry.Target3D | None:
    """The answer in 3D from the depth image paired with the frame, or the depth status that says
    why not; the seconds it took go to `stages["depth"]`. Returns the union (for the point cloud).
    `answer`: the model's Result, whose per-object masks are decoded only when depth is usable."""
    if frame.seq is None:
        set_depth_status(result, SegmentationResult.DEPTH_MISSING, "a service call's own image has no depth")
        return None
    start = time.monotonic()
    depth = frame.depth
    if depth is not None and depth.info is None:
        depth.info = store.info_for(depth.stamp_ns, int(runtime["depth_tolerance"] * NS))
    status, why = match_problem(depth, store, frame.stamp_ns, runtime["depth_tolerance"])
    union = None
    if status != SegmentationResult.DEPTH_OK:
        set_depth_status(result, status, why)
    else:
        union = fill_3d(result, answer.instance_masks, depth, runtime)
    stages["depth"] = time.monotonic() - start
    return union


def point_cloud(union: geometry.Target3D, labels: np.ndarray, depth_shape: tuple[int, int], header: Any) -> PointCloud2:
    """The target's inlier points (x, y, z in metres) coloured by instance as in the overlay
    (rviz: colour transformer RGB8), unorganised, in the depth image's frame."""
    rows, cols = union.pixels[:, 0], union.pixels[:, 1]
    # The label image has the colour image's size; an aligned depth image may have another.
    rows = np.minimum(((rows + 0.5) * labels.shape[0] / depth_shape[0]).astype(np.int64), labels.shape[0] - 1)
    cols = np.minimum(((cols + 0.5) * labels.shape[1] / depth_shape[1]).astype(np.int64), labels.shape[1] - 1)
    label = labels[rows, cols].astype(np.int64)
    colours = PALETTE[(np.maximum(label, 1) - 1) % len(PALETTE)].astype(np.uint32)
    return _cloud(union.points, (colours[:, 0] << 16) | (colours[:, 1] << 8) | colours[:, 2], header)


def _cloud(points: np.ndarray, rgb: np.ndarray, header: Any) -> PointCloud2:
    data = np.zeros(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4")])
    data["x"], data["y"], data["z"], data["rgb"] = points[:, 0], points[:, 1], points[:, 2], rgb
    return PointCloud2(
        header=header,
        height=1,
        width=len(points),
        fields=[PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                for i, name in enumerate(("x", "y", "z", "rgb"))],
        is_bigendian=False,
        point_step=16,
        row_step=16 * len(points),
        data=data.tobytes(),
        is_dense=True,
    )


def markers(result: SegmentationResult, previous: int, lifetime: float) -> MarkerArray:
    """A box and a label per instance with 3D, in the namespace of the instruction's id; ids of
    the previous answer to the same id that this one does not reuse are deleted."""
    out = MarkerArray()
    header = result.depth_header
    life = Duration(sec=int(lifetime), nanosec=int((lifetime % 1) * 1e9))
    count = 0
    for instance in result.instances:
        target = instance.target_3d
        if not target.valid:
            continue
        r, g, b = (PALETTE[(instance.label - 1) % len(PALETTE)] / 255.0).tolist()
        box = Marker(header=header, ns=result.instruction_id, id=2 * count, type=Marker.CUBE, action=Marker.ADD,
                     pose=target.box_center, scale=target.box_size, lifetime=life,
                     color=ColorRGBA(r=r, g=g, b=b, a=0.4))
        box.scale.x, box.scale.y, box.scale.z = (max(v, 0.005) for v in (box.scale.x, box.scale.y, box.scale.z))
        top = target.box_center.position
        label = Marker(header=header, ns=result.instruction_id, id=2 * count + 1, type=Marker.TEXT_VIEW_FACING,
                       action=Marker.ADD, lifetime=life, color=ColorRGBA(r=r, g=g, b=b, a=1.0),
                       text=f"{result.instruction_text[:40]} #{instance.label} ({instance.score:.2f})")
        label.pose.position = Point(x=top.x, y=top.y - target.box_size.y / 2 - 0.03, z=top.z)
        label.pose.orientation.w = 1.0
        label.scale.z = 0.04
        out.markers += [box, label]
        count += 1
    for stale in range(2 * count, previous):
        out.markers.append(Marker(header=header, ns=result.instruction_id, id=stale, action=Marker.DELETE))
    return out
