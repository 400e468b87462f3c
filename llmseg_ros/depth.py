"""From a 2D mask and an aligned depth image to the target in 3D, in the camera's optical frame.

Plain numpy, no ROS: the node converts messages and calls these. Depth comes as 16UC1 in
millimetres or 32FC1 in metres (the two encodings ROS depth drivers publish); zero, NaN, inf and
out-of-range pixels are invalid. Mask edges bleed onto the background behind an object, so the
centroid is the mean of the inlier points: those whose depth lies within a robust band around the
median depth of the masked pixels (3 scaled MADs, at least `min_band` metres). For an object of
constant depth nothing is cut and the centroid is the exact mean of its back-projected pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEPTH_ENCODINGS = {"16UC1": 0.001, "mono16": 0.001, "32FC1": 1.0}


@dataclass
class Intrinsics:
    """Pinhole intrinsics (the K matrix of sensor_msgs/CameraInfo) at the depth image's size."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_k(cls, k: list[float] | np.ndarray, width: int, height: int) -> "Intrinsics":
        k = np.asarray(k, dtype=np.float64).reshape(-1)
        if k.size != 9:
            raise ValueError(f"camera matrix K must have 9 values, got {k.size}")
        fx, fy, cx, cy = float(k[0]), float(k[4]), float(k[2]), float(k[5])
        if not (np.isfinite([fx, fy, cx, cy]).all() and fx > 0 and fy > 0):
            raise ValueError(f"camera matrix K has no usable focal lengths (fx={fx}, fy={fy})")
        if width <= 0 or height <= 0:
            raise ValueError(f"camera info has no image size ({width}x{height})")
        return cls(fx, fy, cx, cy, int(width), int(height))


@dataclass
class Target3D:
    """The target in 3D: centroid, axis-aligned box and the pixels behind them."""

    centroid: np.ndarray  # (3,) metres, mean of the inlier points
    box_min: np.ndarray  # (3,) metres
    box_max: np.ndarray  # (3,) metres
    valid_pixels: int  # masked pixels with a usable depth
    inlier_pixels: int  # of those, the ones within the depth band around the median
    points: np.ndarray  # (inlier_pixels, 3) float32, the inlier points
    pixels: np.ndarray | None = None  # (inlier_pixels, 2) int rows, cols of the points in the depth image

    @property
    def box_center(self) -> np.ndarray:
        return (self.box_min + self.box_max) / 2.0

    @property
    def box_size(self) -> np.ndarray:
        return self.box_max - self.box_min


def depth_to_metres(data: np.ndarray, encoding: str, min_depth: float = 0.0, max_depth: float = np.inf) -> np.ndarray:
    """A depth image in `encoding` as float32 metres, invalid pixels NaN."""
    if encoding not in DEPTH_ENCODINGS:
        raise ValueError(f"unsupported depth encoding {encoding!r}; supported: {', '.join(DEPTH_ENCODINGS)}")
    depth = np.asarray(data, dtype=np.float32) * np.float32(DEPTH_ENCODINGS[encoding])
    invalid = ~np.isfinite(depth) | (depth <= 0.0) | (depth < min_depth) | (depth > max_depth)
    return np.where(invalid, np.float32(np.nan), depth)


def fit_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """The mask at the depth image's size (nearest neighbour when an aligned depth stream has
    another resolution than the colour one)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape == (height, width):
        return mask
    rows = np.minimum((np.arange(height) + 0.5) * mask.shape[0] / height, mask.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(width) + 0.5) * mask.shape[1] / width, mask.shape[1] - 1).astype(int)
    return mask[rows][:, cols]


def _inliers(mask: np.ndarray, depth_m: np.ndarray, min_band: float, mad_scale: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(rows, cols) of the masked pixels with a usable depth within the robust band around their
    median depth, and how many masked pixels had a usable depth at all."""
    rows, cols = np.nonzero(mask)
    z = depth_m[rows, cols]
    valid = np.isfinite(z)
    if not valid.any():
        return rows[:0], cols[:0], 0
    rows, cols, z = rows[valid], cols[valid], z[valid].astype(np.float64)
    median = np.median(z)
    band = max(min_band, mad_scale * 1.4826 * float(np.median(np.abs(z - median))))
    inlier = np.abs(z - median) <= band
    return rows[inlier], cols[inlier], int(valid.sum())


def _from_pixels(rows: np.ndarray, cols: np.ndarray, valid_pixels: int, depth_m: np.ndarray, intrinsics: Intrinsics) -> Target3D:
    z = depth_m[rows, cols].astype(np.float64)
    x = (cols - intrinsics.cx) * z / intrinsics.fx
    y = (rows - intrinsics.cy) * z / intrinsics.fy
    points = np.stack([x, y, z], axis=1)
    return Target3D(
        centroid=points.mean(axis=0),
        box_min=points.min(axis=0),
        box_max=points.max(axis=0),
        valid_pixels=valid_pixels,
        inlier_pixels=int(len(rows)),
        points=points.astype(np.float32),
        pixels=np.stack([rows, cols], axis=1),
    )


def _check_size(depth_m: np.ndarray, intrinsics: Intrinsics) -> tuple[int, int]:
    height, width = depth_m.shape
    if (intrinsics.height, intrinsics.width) != (height, width):
        raise ValueError(f"camera info is {intrinsics.width}x{intrinsics.height}, depth image {width}x{height}")
    return height, width


def target_3d(mask: np.ndarray, depth_m: np.ndarray, intrinsics: Intrinsics, min_band: float = 0.05, mad_scale: float = 3.0) -> Target3D | None:
    """The masked target in 3D, or None when no masked pixel has a usable depth."""
    height, width = _check_size(depth_m, intrinsics)
    rows, cols, valid = _inliers(fit_mask(mask, height, width), depth_m, min_band, mad_scale)
    return _from_pixels(rows, cols, valid, depth_m, intrinsics) if valid else None


def targets_3d(masks: np.ndarray, depth_m: np.ndarray, intrinsics: Intrinsics, min_band: float = 0.05,
               mad_scale: float = 3.0) -> tuple[list[Target3D | None], Target3D | None]:
    """Each instance in 3D, and their union: the union keeps each instance's own inliers (one band
    around the median of all of them would cut away objects at other depths), every pixel once."""
    height, width = _check_size(depth_m, intrinsics)
    instances: list[Target3D | None] = []
    union_inliers = np.zeros((height, width), bool)
    union_mask = np.zeros((height, width), bool)
    for mask in masks:
        fitted = fit_mask(mask, height, width)
        union_mask |= fitted
        rows, cols, valid = _inliers(fitted, depth_m, min_band, mad_scale)
        instances.append(_from_pixels(rows, cols, valid, depth_m, intrinsics) if valid else None)
        union_inliers[rows, cols] = True
    if not union_inliers.any():
        return instances, None
    rows, cols = np.nonzero(union_inliers)
    valid = int(np.isfinite(depth_m[union_mask]).sum())
    return instances, _from_pixels(rows, cols, valid, depth_m, intrinsics)
