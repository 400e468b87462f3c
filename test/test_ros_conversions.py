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
    with pytest.raises(ValueError, match="data has 104 bytes, expected step 21 x 5 rows = 105"):
        conversions.image_to_rgb(Image(height=5, width=7, encoding="rgb8", step=21, data=bytes(good.data)[:-1]))
    with pytest.raises(ValueError, match="step 20 is smaller than width 7"):
        conversions.image_to_rgb(Image(height=5, width=7, encoding="rgb8", step=20, data=bytes(100)))
    with pytest.raises(ValueError, match="image is empty"):
        conversions.image_to_rgb(Image(encoding="rgb8"))
    with pytest.raises(ValueError, match="exceeds max_image_side=6"):
        conversions.image_to_rgb(good, max_side=6)
    with pytest.raises(ValueError, match="105 data bytes, more than max_image_bytes=104"):
        conversions.check_image(good, max_bytes=104)
    with pytest.raises(ValueError, match="even width"):
        conversions.check_image(Image(height=2, width=3, encoding="yuyv", step=6, data=bytes(12)))
    assert conversions.image_to_rgb(good, max_side=7, max_bytes=105).shape == (5, 7, 3)


def test_encodings_are_matched_as_ros_spells_them(rgb):
    upper = make_image(rgb, "RGB8")
    with pytest.raises(ValueError, match="unsupported image encoding 'RGB8' \\(ROS spells it 'rgb8'\\)"):
        conversions.check_image(upper)


def test_size_is_checked_before_the_pixels_are_touched():
    """A header that claims a huge image is refused from its numbers alone (data is never read)."""
    claims = Image(height=100_000, width=100_000, encoding="rgb8", step=300_000, data=bytes(16))
    with pytest.raises(ValueError, match="max_image_side"):
        conversions.check_image(claims, max_side=4096)
    with pytest.raises(ValueError, match="data has 16 bytes"):
        conversions.check_image(claims)


def yuv(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """BT.601 limited-range Y, U, V of an RGB colour (what OpenCV's YUV2RGB inverts)."""
    r, g, b = colour
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return round(y), round(u), round(v)


LEFT, RIGHT = (200, 40, 40), (30, 60, 220)  # two flat halves, so chroma subsampling loses nothing


def halves(height: int = 4, width: int = 8) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2], image[:, width // 2 :] = LEFT, RIGHT
    return image


@pytest.mark.parametrize("encoding", ["uyvy", "yuv422", "yuyv", "yuv422_yuy2"])
def test_yuv422_as_camera_drivers_publish_it(encoding):
    expected = halves()
    packed = np.zeros((4, 4, 4), np.uint8)  # 4 rows, 4 pixel pairs, 4 bytes a pair
    for pair in range(4):
        y, u, v = yuv(LEFT if pair < 2 else RIGHT)
        packed[:, pair] = (u, y, v, y) if encoding in ("uyvy", "yuv422") else (y, u, y, v)
    msg = make_image(packed.reshape(4, 16), encoding, pad=4)
    msg.width = 8  # two bytes a pixel
    out = conversions.image_to_rgb(msg)
    assert out.shape == (4, 8, 3)
    assert np.abs(out.astype(int) - expected).max() <= 3


@pytest.mark.parametrize("encoding", ["nv12", "nv21"])
def test_nv12_nv21(encoding):
    expected = halves()
    plane = np.zeros((6, 8), np.uint8)  # 4 rows of Y, then 2 rows of interleaved chroma
    for column in range(8):
        y, u, v = yuv(LEFT if column < 4 else RIGHT)
        plane[:4, column] = y
        if column % 2 == 0:
            plane[4:, column : column + 2] = (u, v) if encoding == "nv12" else (v, u)
    msg = make_image(plane, encoding)
    msg.height = 4  # the image's height; the data holds 1.5 times as many rows
    out = conversions.image_to_rgb(msg)
    assert np.abs(out.astype(int) - expected).max() <= 3


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_demosaic(pattern, bits):
    """Mosaic a known image with the named 2x2 pattern (top-left first); demosaicing gives it back."""
    expected = np.zeros((16, 16, 3), np.uint8)
    expected[:, :8], expected[:, 8:] = LEFT, RIGHT
    channel = {"r": 0, "g": 1, "b": 2}
    mosaic = np.zeros((16, 16), np.uint8)
    for dy in (0, 1):
        for dx in (0, 1):
            mosaic[dy::2, dx::2] = expected[dy::2, dx::2, channel[pattern[2 * dy + dx]]]
    pixels = mosaic.astype(np.uint16) * 256 + 99 if bits == 16 else mosaic
    out = conversions.image_to_rgb(make_image(pixels, f"bayer_{pattern}{bits}", pad=2))
    interior = np.abs(out.astype(int) - expected)[2:-2, list(range(2, 6)) + list(range(10, 14))]
    assert interior.max() <= 2, pattern


def test_label_images_round_trip_as_mono8_and_mono16():
    labels = np.zeros((4, 6), np.uint8)
    labels[:2] = 1
    labels[3, 5] = 3
    msg = conversions.labels_to_image(labels)
    assert msg.encoding == "mono8"
    np.testing.assert_array_equal(conversions.image_to_labels(msg), labels)
    wide = np.zeros((2, 300), np.uint16)
    wide[0] = np.arange(1, 301)
    msg = conversions.labels_to_image(wide)
    assert msg.encoding == "mono16" and msg.step == 600
    np.testing.assert_array_equal(conversions.image_to_labels(msg), wide)


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
    labels = np.zeros((5, 7), np.uint8)
    labels[0, 0], labels[4, 6] = 1, 2
    out = conversions.overlay(rgb, labels)
    np.testing.assert_array_equal(out[labels == 0], rgb[labels == 0])
    expected = (0.5 * rgb[0, 0] + 0.5 * conversions.PALETTE[0]).round()
    np.testing.assert_array_equal(out[0, 0], expected)
    np.testing.assert_array_equal(out[4, 6], (0.5 * rgb[4, 6] + 0.5 * conversions.PALETTE[1]).round())
