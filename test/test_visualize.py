"""Pictures of answers (llmseg_model.visualize)."""

from __future__ import annotations

import numpy as np
import pytest

from llmseg_model.data.procedural import COLOURS
from llmseg_model.visualize import CAPTION_BACKGROUND, PALETTE, RIM, VisualConfig, display_factor, render_instances


def scene(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A grey image with a green and a red square, and their masks."""
    image = np.full((height, width, 3), 150, np.uint8)
    masks = np.zeros((2, height, width), bool)
    s = min(height, width) // 4
    masks[0, s : 2 * s, s : 2 * s] = True
    masks[1, 2 * s : 3 * s, 2 * s : 3 * s] = True
    image[masks[0]] = COLOURS["green"]
    image[masks[1]] = COLOURS["red"]
    return image, masks


def test_small_images_are_enlarged_and_get_a_caption_band():
    image, masks = scene(256, 256)
    out = render_instances(image, masks, [0.9, 0.6], '"the green box"')
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[1] == 512 and out.shape[0] > 512  # doubled, plus the band below
    big = render_instances(*scene(720, 1280), [0.9, 0.6], "caption")
    assert big.shape[1] == 1280 and 720 < big.shape[0] < 720 + 200
    assert display_factor(100, 300, 512) == 6 and display_factor(720, 1280, 512) == 1
    assert display_factor(100, 300, 0) == 1


def test_instances_keep_their_colour_and_background_is_dimmed():
    image, masks = scene(256, 256)
    out = render_instances(image, masks, [0.9, 0.6], "caption")
    f = 2
    picture = out[: 256 * f]
    # Background: darker than the input everywhere outside the instances.
    assert (picture[:30, :30].astype(int) < 150).all()
    # Inside an instance: the object's own colour (between hatch lines) and the instance colour (on them).
    inside = picture[64 * f + 10 : 128 * f - 10, 64 * f + 10 : 128 * f - 10].reshape(-1, 3)
    colours = {tuple(p) for p in inside}
    assert tuple(COLOURS["green"]) in colours
    assert any(np.abs(np.array(c, int) - PALETTE[0]).sum() < 60 and c != tuple(COLOURS["green"]) for c in colours)
    # Outline: the instance colour along the mask's edge, the dark rim just outside it.
    assert tuple(picture[100 * f, 64 * f]) == PALETTE[0] and tuple(picture[100 * f, 64 * f - 1]) == RIM
    assert tuple(picture[160 * f, 128 * f]) == PALETTE[1] and tuple(picture[160 * f, 128 * f - 1]) == RIM


def test_caption_band_carries_text_and_wraps_long_captions():
    image, masks = scene(256, 256)
    short = render_instances(image, masks, [0.9, 0.6], "the green box")
    band = short[512:]
    assert (band[:2] == CAPTION_BACKGROUND).all()  # a plain band under the picture
    text = (band.astype(int).sum(-1) > 500).sum()  # light text pixels on the dark band
    assert text > 200
    # The swatches of both instances appear in the band.
    for colour in PALETTE[:2]:
        assert (band == colour).all(-1).sum() > 50
    long = render_instances(image, masks, [0.9, 0.6], "a very long instruction " * 12)
    assert long.shape[0] > short.shape[0]


def test_no_instances_leaves_the_image_undimmed():
    image, masks = scene(256, 256)
    out = render_instances(image, np.zeros((0, 256, 256), bool), [], "nothing to see")
    assert np.array_equal(out[:512:2, ::2], image)
    # An empty instance mask is listed in the caption but draws nothing.
    out = render_instances(image, np.stack([masks[0], np.zeros_like(masks[0])]), [0.9, 0.1], "x")
    assert not (out[:512] == PALETTE[1]).all(-1).any() and (out[512:] == PALETTE[1]).all(-1).any()


def test_palette_stays_away_from_the_scene_colours():
    for colour in PALETTE:
        for scene_colour in COLOURS.values():
            assert np.linalg.norm(np.subtract(colour, scene_colour)) >= 100
    for a in range(len(PALETTE)):
        for b in range(a + 1, len(PALETTE)):
            assert np.linalg.norm(np.subtract(PALETTE[a], PALETTE[b])) >= 100


def test_bad_input_is_refused():
    image, masks = scene(64, 64)
    with pytest.raises(ValueError, match="scores"):
        render_instances(image, masks, [0.5], "x")
    with pytest.raises(ValueError, match="instance masks must be"):
        render_instances(image, masks.reshape(2, 32, 128), [0.5, 0.5], "x")
    with pytest.raises(ValueError, match="uint8"):
        render_instances(image.astype(np.float32), masks, [0.5, 0.5], "x")
    with pytest.raises(ValueError, match="background_brightness"):
        VisualConfig(background_brightness=1.5)
