"""sensor_msgs <-> numpy conversion: every supported encoding, row padding, endianness, bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage

from ros_helpers import requires_interfaces

pytestmark = requires_interfaces

from llmseg_ros import conversions  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402


def make_image(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    """Pack pixels (H, W[, C]) into an Image with `pad` bytes of padding after each row."""
    height, width = pixels.shape[:2]
    if pixels.dtype == np.uint16:
        pixels = pixels.astype(">u2" if bigendian else "<u2")
    rows = pixels.reshape(height, -1).view(np.uint8)
    rows = np.concatenate([rows, np.full((height, pad), 7, np.uint8)], axis=1)
    return Image(height=height, width=width, encoding=encoding, is_bigendian=bigendian,
                 step=rows.shape[1], data=rows.tobytes())


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize("pad", [0, 3])
def test_eight_bit_colour_encodings(rgb, pad):
    alpha = np.full((5, 7, 1), 9, np.uint8)
    cases = {
        "rgb8": rgb,
        "bgr8": rgb[:, :, ::-1],
        "rgba8": np.concatenate([rgb, alpha], axis=2),
        "bgra8": np.concatenate([rgb[:, :, ::-1], alpha], axis=2),
    }
    for encoding, pixels in cases.items():
        out = conversions.image_to_rgb(make_image(np.ascontiguousarray(pixels), encoding, pad))
        assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
        np.testing.assert_array_equal(out, rgb, err_msg=encoding)


def test_mono8_becomes_grey_rgb(rgb):
    grey = rgb[:, :, 0].copy()
    out = conversions.image_to_rgb(make_image(grey, "mono8", pad=1))
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))


@pytest.mark.parametrize("bigendian", [False, True])
def test_sixteen_bit_honours_endianness(rgb, bigendian):
    wide = rgb.astype(np.uint16) * 256 + 200  # the high byte is the 8-bit value
    np.testing.assert_array_equal(conversions.image_to_rgb(make_image(wide, "rgb16", 2, bigendian)), rgb)
    np.testing.assert_array_equal(
        conversions.image_to_rgb(make_image(np.ascontiguousarray(wide[:, :, ::-1]), "bgr16", 0, bigendian)), rgb
    )
    mono = conversions.image_to_rgb(make_image(np.ascontiguousarray(wide[:, :, 1]), "mono16", 0, bigendian))
    np.testing.assert_array_equal(mono[:, :, 2], rgb[:, :, 1])


def test_bad_images_raise_value_errors(rgb):
    good = make_image(rgb, "rgb8")
    with pytest.raises(ValueError, match="unsupported image encoding '32FC1'"):
        conversions.image_to_rgb(Image(height=5, width=7, encoding="32FC1", step=28, data=bytes(140)))
    with pytest.raises(ValueError, match="data has 104 bytes, expected step 21 x height 5 = 105"):
        conversions.image_to_rgb(Image(height=5, width=7, encoding="rgb8", step=21, data=bytes(good.data)[:-1]))
    with pytest.raises(ValueError, match="step 20 is smaller than width 7"):
        conversions.image_to_rgb(Image(height=5, width=7, encoding="rgb8", step=20, data=bytes(100)))
    with pytest.raises(ValueError, match="image is empty"):
        conversions.image_to_rgb(Image(encoding="rgb8"))
    with pytest.raises(ValueError, match="exceeds max_image_side=6"):
        conversions.image_to_rgb(good, max_side=6)
    assert conversions.image_to_rgb(good, max_side=7).shape == (5, 7, 3)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_compressed_round_trip(rgb, fmt):
    big = np.kron(rgb, np.ones((8, 8, 1), np.uint8))  # smooth enough for JPEG to keep
    buffer = io.BytesIO()
    PILImage.fromarray(big).save(buffer, format=fmt.upper(), quality=95)
    out = conversions.compressed_to_rgb(CompressedImage(format=fmt, data=buffer.getvalue()))
    assert out.shape == big.shape
    error = np.abs(out.astype(int) - big.astype(int))
    if fmt == "png":
        assert error.max() == 0
    else:  # lossy, with chroma subsampling at the block edges
        assert error.mean() < 8
    with pytest.raises(ValueError, match="max_image_side"):
        conversions.compressed_to_rgb(CompressedImage(format=fmt, data=buffer.getvalue()), max_side=16)


def test_bad_compressed_images():
    with pytest.raises(ValueError, match="no data"):
        conversions.compressed_to_rgb(CompressedImage(format="jpeg"))
    with pytest.raises(ValueError, match="cannot decode compressed image"):
        conversions.compressed_to_rgb(CompressedImage(format="jpeg", data=b"\xff\xd8 garbage"))
    with pytest.raises(ValueError, match="compressed depth"):
        conversions.compressed_to_rgb(CompressedImage(format="16UC1; compressedDepth png", data=b"x"))


def test_mask_and_rgb_to_image(rgb):
    mask = rgb[:, :, 0] > 128
    msg = conversions.mask_to_image(mask)
    assert (msg.encoding, msg.step, msg.width, msg.height) == ("mono8", 7, 7, 5)
    assert set(np.frombuffer(msg.data, np.uint8)) <= {0, 255}
    np.testing.assert_array_equal(conversions.image_to_mask(msg), mask)
    for encoding in ("rgb8", "bgr8"):
        np.testing.assert_array_equal(conversions.image_to_rgb(conversions.rgb_to_image(rgb, encoding=encoding)), rgb)
    with pytest.raises(ValueError):
        conversions.rgb_to_image(rgb.astype(np.float32))
    assert conversions.is_empty(Image()) and not conversions.is_empty(msg)


def test_overlay_tints_only_the_instances(rgb):
    masks = np.zeros((2, 5, 7), bool)
    masks[0, 0, 0] = masks[1, 4, 6] = True
    out = conversions.overlay(rgb, masks)
    changed = np.any(out != rgb, axis=2)
    assert changed[0, 0] or tuple(rgb[0, 0]) == tuple(conversions.PALETTE[0])
    assert not changed[2, 3]
    np.testing.assert_array_equal(out[~masks.any(0)], rgb[~masks.any(0)])
