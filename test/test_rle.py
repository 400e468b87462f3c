"""COCO RLEs read as runs (llmseg_model.modeling.rle) against pycocotools' own decoding."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from llmseg_model.modeling.rle import label_image, run_lengths


def encode(masks: np.ndarray) -> list[dict]:
    """(N, H, W) bool -> compressed COCO RLEs, as pycocotools writes them."""
    return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))


def painted(masks: np.ndarray) -> np.ndarray:
    """The reference label image: dense masks painted last first, so earlier ones own overlaps."""
    labels = np.zeros(masks.shape[1:], np.uint8 if len(masks) <= 255 else np.uint16)
    for k in range(len(masks) - 1, -1, -1):
        labels[masks[k]] = k + 1
    return labels


def random_masks(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """Masks of every kind of run: noise, blobs, empty and full."""
    masks = rng.random((count, height, width)) < rng.random((count, 1, 1))
    yy, xx = np.mgrid[:height, :width]
    for k in range(0, count, 3):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(1, max(height, width))
        masks[k] = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    if count > 2:
        masks[1], masks[2] = False, True
    return masks


def test_run_lengths_decode_what_pycocotools_encodes():
    rng = np.random.default_rng(0)
    for trial in range(200):
        height, width = (int(v) for v in rng.integers(1, 40, 2))
        masks = random_masks(rng, 4, height, width)
        for rle, mask in zip(encode(masks), masks):
            runs = run_lengths(rle["counts"])
            assert runs.sum() == height * width and (runs[1:] > 0).all(), trial
            column_major = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
            assert np.array_equal(column_major.reshape(width, height).T, mask), trial


def test_run_lengths_of_long_runs_and_large_differences():
    """Runs of millions of pixels next to runs of one (values of several characters, negative
    differences between a run and the one two before it)."""
    mask = np.zeros((2000, 3000), bool)
    mask[5:1990, 7:2999] = True
    mask[0, 0] = mask[1999, 1] = True
    (rle,) = encode(mask[None])
    runs = run_lengths(rle["counts"].decode("ascii"))  # str counts, as results and caches keep them
    assert np.array_equal(np.repeat(np.arange(len(runs)) % 2 == 1, runs).reshape(3000, 2000).T, mask)
    assert run_lengths("").shape == (0,)


def test_label_image_equals_painting_the_decoded_masks():
    rng = np.random.default_rng(1)
    for trial in range(100):
        height, width = (int(v) for v in rng.integers(1, 50, 2))
        masks = random_masks(rng, int(rng.integers(1, 7)), height, width)
        labels, areas = label_image(encode(masks), (height, width))
        assert labels.dtype == np.uint8 and labels.flags.c_contiguous and labels.shape == (height, width)
        assert np.array_equal(labels, painted(masks)), trial
        assert areas.tolist() == np.bincount(labels.ravel(), minlength=len(masks) + 1)[1:].tolist()


def test_label_image_gives_overlaps_to_the_earlier_mask_and_widens_past_255():
    masks = np.zeros((3, 4, 6), bool)
    masks[0, :2, :] = True  # first: owns the top rows, overlap included
    masks[1, :, :3] = True
    masks[2, 3, 5] = True  # inside nothing else
    labels, areas = label_image(encode(masks), (4, 6))
    assert areas.tolist() == [12, 6, 1]
    assert (labels[:2] == 1).all() and (labels[2:, :3] == 2).all() and labels[3, 5] == 3 and labels[2, 4] == 0
    many = np.zeros((300, 2, 300), bool)
    many[np.arange(300), 0, np.arange(300)] = True
    wide, _ = label_image(encode(many), (2, 300))
    assert wide.dtype == np.uint16 and wide[0, 299] == 300 and np.array_equal(wide, painted(many))
    labels, areas = label_image([], (3, 5))
    assert np.array_equal(labels, np.zeros((3, 5), np.uint8)) and areas.shape == (0,)


def test_label_image_refuses_masks_of_another_size():
    (rle,) = encode(np.ones((1, 4, 6), bool))
    with pytest.raises(ValueError, match="size"):
        label_image([rle], (6, 4))
    with pytest.raises(ValueError, match="covers"):
        label_image([{"size": [4, 6], "counts": b"0;"}], (4, 6))  # runs of 0 and 11 pixels
    with pytest.raises(ValueError, match="compressed COCO RLE"):
        run_lengths(b"0l")  # the last value is cut after a continuation character
    with pytest.raises(ValueError, match="compressed COCO RLE"):
        run_lengths("0 ")
