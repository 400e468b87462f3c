"""sensor_msgs <-> numpy without cv_bridge.

Every decoder returns an (H, W, 3) uint8 RGB array (what `LLMSeg.prepare` takes) or raises
ValueError with a message naming what is wrong, which the node turns into a BAD_IMAGE status.
`check_image` / `check_compressed` look at the header and the data length only, so a bad or
oversized message is refused before anything is decoded or copied.

Encodings are matched as ROS spells them (sensor_msgs/image_encodings.hpp, case-sensitive): plain
RGB/BGR/mono with or without alpha, 8 or 16 bit; YUV 4:2:2 as camera drivers publish it (uyvy /
yuv422, yuyv / yuv422_yuy2), NV12 / NV21; and Bayer mosaics, demosaiced with OpenCV.
"""

from __future__ import annotations

import io
import sys

import cv2
import numpy as np
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image

# encoding -> (channels, bytes per channel), for the encodings whose pixels are plain arrays
PLAIN_ENCODINGS: dict[str, tuple[int, int]] = {
    "rgb8": (3, 1),
    "bgr8": (3, 1),
    "rgba8": (4, 1),
    "bgra8": (4, 1),
    "mono8": (1, 1),
    "rgb16": (3, 2),
    "bgr16": (3, 2),
    "rgba16": (4, 2),
    "bgra16": (4, 2),
    "mono16": (1, 2),
    "bayer_rggb8": (1, 1),
    "bayer_bggr8": (1, 1),
    "bayer_gbrg8": (1, 1),
    "bayer_grbg8": (1, 1),
    "bayer_rggb16": (1, 2),
    "bayer_bggr16": (1, 2),
    "bayer_gbrg16": (1, 2),
    "bayer_grbg16": (1, 2),
}
# Packed YUV 4:2:2: two bytes a pixel, the width must be even. "yuv422" is UYVY in ROS.
YUV422: dict[str, int] = {
    "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422": cv2.COLOR_YUV2RGB_UYVY,
    "yuyv": cv2.COLOR_YUV2RGB_YUYV,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUYV,
}
# Planar 4:2:0: a full-size Y plane and a half-size interleaved chroma plane (1.5 bytes a pixel).
YUV420: dict[str, int] = {"nv12": cv2.COLOR_YUV2RGB_NV12, "nv21": cv2.COLOR_YUV2RGB_NV21}
# The named pattern is the top-left 2x2 block; OpenCV's *RGGB* codes are spelled the same way.
BAYER: dict[str, int] = {
    "rggb": cv2.COLOR_BayerRGGB2RGB,
    "bggr": cv2.COLOR_BayerBGGR2RGB,
    "gbrg": cv2.COLOR_BayerGBRG2RGB,
    "grbg": cv2.COLOR_BayerGRBG2RGB,
}
ENCODINGS = (*PLAIN_ENCODINGS, *YUV422, *YUV420)

# Colours of the instances in the overlay image (RGB).
PALETTE = np.array(
    [[255, 64, 64], [64, 200, 64], [64, 128, 255], [255, 200, 0], [200, 64, 255], [0, 220, 220]], dtype=np.float32
)


def check_size(height: int, width: int, max_side: int, what: str = "image") -> None:
    """Reject empty images and images whose long side exceeds max_side (0 = no limit)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"{what} is empty ({width}x{height})")
    if max_side and max(height, width) > max_side:
        raise ValueError(f"image is {width}x{height}; its long side exceeds max_image_side={max_side}")


def _row_bytes(encoding: str, width: int) -> int:
    if encoding in PLAIN_ENCODINGS:
        channels, depth = PLAIN_ENCODINGS[encoding]
        return width * channels * depth
    return width * 2 if encoding in YUV422 else width


def check_image(msg: Image, max_side: int = 0, max_bytes: int = 0) -> None:
    """Everything that can be wrong with a sensor_msgs/Image, found without touching its pixels."""
    encoding = msg.encoding
    if encoding not in ENCODINGS:
        hint = f" (ROS spells it {encoding.lower()!r})" if encoding.lower() in ENCODINGS else ""
        raise ValueError(f"unsupported image encoding {encoding!r}{hint}; supported: {', '.join(ENCODINGS)}")
    check_data_size(msg, max_bytes)
    height, width = int(msg.height), int(msg.width)
    check_size(height, width, max_side)
    if encoding in YUV422 or encoding in YUV420:
        if width % 2 or (encoding in YUV420 and height % 2):
            raise ValueError(f"{encoding} needs an even width{' and height' if encoding in YUV420 else ''}, "
                             f"got {width}x{height}")
    check_rows(msg, _row_bytes(encoding, width), height * 3 // 2 if encoding in YUV420 else height)


def check_data_size(msg: Image, max_bytes: int, what: str = "image") -> None:
    """Reject data over max_bytes (0 = no limit) before anything reads it."""
    size = len(msg.data)
    if max_bytes and size > max_bytes:
        raise ValueError(f"{what} has {size} data bytes, more than max_image_bytes={max_bytes}")


def check_rows(msg: Image, row_bytes: int, rows: int, what: str = "") -> None:
    """The row stride holds a row of pixels, and the data is exactly `rows` strides long."""
    size, step, width = len(msg.data), int(msg.step), int(msg.width)
    if step < row_bytes:
        raise ValueError(f"{what}step {step} is smaller than width {width} x {row_bytes // width} bytes per pixel "
                         f"({msg.encoding})")
    if size != step * rows:
        raise ValueError(f"{what}data has {size} bytes, expected step {step} x {rows} rows = {step * rows} ({msg.encoding})")


def image_to_rgb(msg: Image, max_side: int = 0, max_bytes: int = 0) -> np.ndarray:
    """Decode a sensor_msgs/Image to RGB uint8 (checked with check_image first).

    Row padding (step > width * pixel size) is dropped; 16-bit data honours is_bigendian and keeps
    the high byte; alpha is dropped; mono becomes grey RGB.
    """
    check_image(msg, max_side, max_bytes)
    encoding, height, width, step = msg.encoding, int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if encoding in YUV420:
        planes = np.ascontiguousarray(data.reshape(height * 3 // 2, step)[:, :width])
        return cv2.cvtColor(planes, YUV420[encoding])
    rows = data.reshape(height, step)[:, : _row_bytes(encoding, width)]
    if encoding in YUV422:
        return cv2.cvtColor(np.ascontiguousarray(rows).reshape(height, width, 2), YUV422[encoding])
    channels, depth = PLAIN_ENCODINGS[encoding]
    if depth == 2:
        dtype = np.dtype(">u2" if msg.is_bigendian else "<u2")
        pixels = (np.ascontiguousarray(rows).view(dtype) >> 8).astype(np.uint8)
    else:
        pixels = rows
    if encoding.startswith("bayer_"):
        return cv2.cvtColor(np.ascontiguousarray(pixels), BAYER[encoding[6:10]])
    pixels = pixels.reshape(height, width, channels)
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    if encoding.startswith("bgr"):
        pixels = pixels[:, :, 2::-1]
    return np.ascontiguousarray(pixels[:, :, :3])


def check_compressed(msg: CompressedImage, max_bytes: int = 0) -> None:
    """What can be seen of a CompressedImage without decoding it."""
    if "compresseddepth" in msg.format.lower():
        raise ValueError(f"compressed depth images are not colour images (format {msg.format!r})")
    size = len(msg.data)
    if not size:
        raise ValueError("compressed image has no data")
    if max_bytes and size > max_bytes:
        raise ValueError(f"compressed image has {size} bytes, more than max_image_bytes={max_bytes}")


def compressed_to_rgb(msg: CompressedImage, max_side: int = 0, max_bytes: int = 0) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (JPEG, PNG, ... anything Pillow reads) to RGB uint8.

    The size in the file's header is checked against max_side before the pixels are decoded.
    """
    check_compressed(msg, max_bytes)
    try:
        with PILImage.open(io.BytesIO(msg.data)) as image:
            width, height = image.size
            check_size(height, width, max_side)
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except ValueError:
        raise
    except (OSError, SyntaxError, PILImage.DecompressionBombError) as error:  # what Pillow raises on bad data
        raise ValueError(f"cannot decode compressed image (format {msg.format!r}): {error}") from error


def rgb_to_image(rgb: np.ndarray, header=None, encoding: str = "rgb8") -> Image:
    """An (H, W, 3) uint8 RGB array as a sensor_msgs/Image in rgb8 or bgr8."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {rgb.dtype} {rgb.shape}")
    if encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"rgb_to_image writes rgb8 or bgr8, not {encoding!r}")
    pixels = rgb if encoding == "rgb8" else rgb[:, :, ::-1]
    return _image(np.ascontiguousarray(pixels), encoding, header)


def mask_to_image(mask: np.ndarray, header=None) -> Image:
    """An (H, W) bool mask as a mono8 sensor_msgs/Image: 255 = inside, 0 = outside."""
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    return _image(np.where(mask, 255, 0).astype(np.uint8), "mono8", header)


def image_to_mask(msg: Image) -> np.ndarray:
    """Inverse of mask_to_image: a mono8 image as an (H, W) bool mask (nonzero = inside)."""
    if msg.encoding != "mono8":
        raise ValueError(f"a mask image must be mono8, got {msg.encoding!r}")
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
    return rows[:, : msg.width] > 0


def labels_to_image(labels: np.ndarray, header=None) -> Image:
    """A label array as mono8 (uint8) or mono16 (uint16) sensor_msgs/Image."""
    return _image(np.ascontiguousarray(labels), "mono8" if labels.dtype == np.uint8 else "mono16", header)


def image_to_labels(msg: Image) -> np.ndarray:
    """Inverse of labels_to_image."""
    dtype = {"mono8": np.dtype(np.uint8), "mono16": np.dtype(">u2" if msg.is_bigendian else "<u2")}[msg.encoding]
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
    return rows[:, : msg.width * dtype.itemsize].copy().view(dtype).astype(np.uint16 if dtype.itemsize == 2 else np.uint8)


def is_empty(msg: Image) -> bool:
    """True for a default-constructed Image (the Segment service's "use the latest frame")."""
    return msg.width == 0 and msg.height == 0 and len(msg.data) == 0


def overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with each labelled instance tinted in its own colour, for rviz and debugging."""
    out = rgb.astype(np.float32)
    inside = labels > 0
    colours = PALETTE[(labels[inside].astype(np.int64) - 1) % len(PALETTE)]
    out[inside] = (1 - alpha) * out[inside] + alpha * colours
    return out.round().clip(0, 255).astype(np.uint8)


def _image(pixels: np.ndarray, encoding: str, header) -> Image:
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = sys.byteorder == "big"
    msg.step = msg.width * pixels.itemsize * (pixels.shape[2] if pixels.ndim == 3 else 1)
    msg.data = pixels.tobytes()
    return msg
