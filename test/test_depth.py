"""The target in 3D from a mask, an aligned depth image and pinhole intrinsics (llmseg_ros.depth)."""

from __future__ import annotations

import numpy as np
import pytest

from llmseg_ros.depth import Intrinsics, depth_to_metres, fit_mask, target_3d, targets_3d

K = [500.0, 0.0, 160.0, 0.0, 480.0, 120.0, 0.0, 0.0, 1.0]


def scene(object_depth=1.25, background=3.0):
    """A 240x320 depth image: a disc at `object_depth` in front of a wall at `background`."""
    rows, cols = np.mgrid[:240, :320]
    disc = (rows - 100) ** 2 + (cols - 200) ** 2 <= 30**2
    depth = np.where(disc, object_depth, background).astype(np.float32)
    return disc, depth


def true_centroid(mask, depth, fx=500.0, fy=480.0, cx=160.0, cy=120.0):
    rows, cols = np.nonzero(mask)
    z = depth[rows, cols].astype(np.float64)
    return np.array([((cols - cx) * z / fx).mean(), ((rows - cy) * z / fy).mean(), z.mean()])


def test_centroid_box_and_count_of_a_constant_depth_object():
    disc, depth = scene()
    target = target_3d(disc, depth_to_metres(depth, "32FC1"), Intrinsics.from_k(K, 320, 240))
    assert np.allclose(target.centroid, true_centroid(disc, depth), atol=1e-9)
    assert target.valid_pixels == target.inlier_pixels == disc.sum()
    assert target.box_min[2] == target.box_max[2] == pytest.approx(1.25)
    assert target.box_size[0] == pytest.approx(60 * 1.25 / 500, rel=1e-6)


def test_mask_bleeding_onto_the_background_is_left_out():
    disc, depth = scene()
    grown = disc | np.roll(disc, 4, axis=1) | np.roll(disc, -4, axis=0)  # a sloppy mask edge
    target = target_3d(grown, depth_to_metres(depth, "32FC1"), Intrinsics.from_k(K, 320, 240))
    truth = true_centroid(disc, depth)
    assert np.abs(target.centroid - truth).max() < max(0.01, 0.01 * truth[2])
    assert target.valid_pixels == grown.sum() and target.inlier_pixels < target.valid_pixels
    assert target.box_max[2] < 1.3


def test_millimetre_depth_and_invalid_pixels():
    disc, depth = scene()
    millimetres = np.round(depth * 1000).astype(np.uint16)
    millimetres[100, 170:180] = 0  # holes
    metres = depth_to_metres(millimetres, "16UC1", max_depth=10.0)
    assert np.isnan(metres[100, 170:180]).all() and metres[100, 200] == pytest.approx(1.25)
    target = target_3d(disc, metres, Intrinsics.from_k(K, 320, 240))
    assert target.valid_pixels == disc.sum() - 10
    floats = depth.copy()
    floats[disc] = np.nan
    assert target_3d(disc, depth_to_metres(floats, "32FC1"), Intrinsics.from_k(K, 320, 240)) is None
    assert np.isnan(depth_to_metres(np.full((2, 2), 5.0), "32FC1", max_depth=4.0)).all()


def test_a_colour_mask_of_another_size_is_fitted_to_the_depth_image():
    disc, depth = scene()
    big = np.repeat(np.repeat(disc, 2, axis=0), 2, axis=1)
    assert np.array_equal(fit_mask(big, 240, 320), disc)
    target = target_3d(big, depth_to_metres(depth, "32FC1"), Intrinsics.from_k(K, 320, 240))
    assert np.allclose(target.centroid, true_centroid(disc, depth))


def test_bad_inputs_are_value_errors():
    with pytest.raises(ValueError, match="encoding"):
        depth_to_metres(np.zeros((2, 2)), "rgb8")
    with pytest.raises(ValueError, match="focal"):
        Intrinsics.from_k([0.0] * 9, 320, 240)
    with pytest.raises(ValueError, match="9 values"):
        Intrinsics.from_k([1.0] * 4, 320, 240)
    with pytest.raises(ValueError, match="camera info is"):
        target_3d(np.ones((2, 2), bool), np.ones((2, 2), np.float32), Intrinsics.from_k(K, 320, 240))


def test_union_keeps_each_instance_at_its_own_depth():
    """Two objects far apart in depth: one band around all their pixels would cut one away; the
    union keeps each instance's inliers, every pixel once (the instances overlap here)."""
    rows, cols = np.mgrid[:240, :320]
    near = (rows - 100) ** 2 + (cols - 100) ** 2 <= 25**2
    far = (rows - 120) ** 2 + (cols - 230) ** 2 <= 35**2
    depth = np.where(near, 0.9, np.where(far, 2.4, 6.0)).astype(np.float32)
    overlapping = near | ((rows - 100) ** 2 + (cols - 130) ** 2 <= 10**2)  # also covers some wall
    camera = Intrinsics.from_k(K, 320, 240)
    (first, second), union = targets_3d(np.stack([overlapping, far]), depth_to_metres(depth, "32FC1"), camera)
    assert np.allclose(first.centroid, true_centroid(near, depth)) and np.allclose(second.centroid, true_centroid(far, depth))
    assert union.inlier_pixels == near.sum() + far.sum()
    assert union.valid_pixels == (overlapping | far).sum()
    assert np.allclose(union.centroid, true_centroid(near | far, depth))
    assert union.box_min[2] == pytest.approx(0.9) and union.box_max[2] == pytest.approx(2.4)
    assert len(union.pixels) == union.inlier_pixels
    none, nothing = targets_3d(np.zeros((1, 240, 320), bool), depth_to_metres(depth, "32FC1"), camera)
    assert none == [None] and nothing is None
