"""sensor_msgs <-> numpy without cv_bridge.

Every decoder returns an (H, W, 3) uint8 RGB array (what `LLMSeg.prepare` takes) or raises
ValueError with a message naming what is wrong, which the node turns into a BAD_IMAGE status.
"""

from __future__ import annotations

import io
import sys

import numpy as np
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image

# encoding -> (channels, bytes per channel)
ENCODINGS: dict[str, tuple[int, int]] = {
    "rgb8": (3, 1),
    "bgr8": (3, 1),
    "rgba8": (4, 1),
    "bgra8": (4, 1),
    "mono8": (1, 1),
    "rgb16": (3, 2),
    "bgr16": (3, 2),
    "mono16": (1, 2),
}

# Colours of the instances in the overlay image (RGB).
PALETTE = np.array(
    [[255, 64, 64], [64, 200, 64], [64, 128, 255], [255, 200, 0], [200, 64, 255], [0, 220, 220]], dtype=np.float32
)


def check_size(height: int, width: int, max_side: int) -> None:
    """Reject empty images and images whose long side exceeds max_side (0 = no limit)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image is empty ({width}x{height})")
    if max_side and max(height, width) > max_side:
        raise ValueError(f"image is {width}x{height}; its long side exceeds max_image_side={max_side}")


def image_to_rgb(msg: Image, max_side: int = 0) -> np.ndarray:
    """Decode a sensor_msgs/Image (8- or 16-bit mono/RGB/BGR, with or without alpha) to RGB uint8.

    Row padding (step > width * pixel size) is dropped; 16-bit data honours is_bigendian and keeps
    the high byte.
    """
    encoding = msg.encoding.lower()
    if encoding not in ENCODINGS:
        raise ValueError(f"unsupported image encoding {msg.encoding!r}; supported: {', '.join(ENCODINGS)}")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    check_size(height, width, max_side)
    channels, depth = ENCODINGS[encoding]
    row_bytes = width * channels * depth
    if step < row_bytes:
        raise ValueError(f"step {step} is smaller than width {width} x {channels * depth} bytes per pixel ({encoding})")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != step * height:
        raise ValueError(f"data has {data.size} bytes, expected step {step} x height {height} = {step * height}")
    rows = data.reshape(height, step)[:, :row_bytes]
    if depth == 2:
        dtype = np.dtype(">u2" if msg.is_bigendian else "<u2")
        pixels = (np.ascontiguousarray(rows).view(dtype) >> 8).astype(np.uint8)
    else:
        pixels = rows
    pixels = pixels.reshape(height, width, channels)
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    if encoding.startswith("bgr"):
        pixels = pixels[:, :, 2::-1]
    return np.ascontiguousarray(pixels[:, :, :3])


def compressed_to_rgb(msg: CompressedImage, max_side: int = 0) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (JPEG, PNG, ... anything Pillow reads) to RGB uint8."""
    if "compresseddepth" in msg.format.lower():
        raise ValueError(f"compressed depth images are not colour images (format {msg.format!r})")
    data = bytes(msg.data)
    if not data:
        raise ValueError("compressed image has no data")
    try:
        with PILImage.open(io.BytesIO(data)) as image:
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
    return _image(np.ascontiguousarray(pixels), encoding, 3, header)


def mask_to_image(mask: np.ndarray, header=None) -> Image:
    """An (H, W) bool mask as a mono8 sensor_msgs/Image: 255 = inside, 0 = outside."""
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    return _image(np.where(mask, 255, 0).astype(np.uint8), "mono8", 1, header)


def image_to_mask(msg: Image) -> np.ndarray:
    """Inverse of mask_to_image: a mono8 image as an (H, W) bool mask (nonzero = inside)."""
    if msg.encoding != "mono8":
        raise ValueError(f"a mask image must be mono8, got {msg.encoding!r}")
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
    return rows[:, : msg.width] > 0


def is_empty(msg: Image) -> bool:
    """True for a default-constructed Image (the Segment service's "use the latest frame")."""
    return msg.width == 0 and msg.height == 0 and len(msg.data) == 0


def overlay(rgb: np.ndarray, instance_masks: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with each instance tinted in its own colour, for rviz and debugging."""
    out = rgb.astype(np.float32)
    for index, mask in enumerate(instance_masks):
        colour = PALETTE[index % len(PALETTE)]
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return out.round().clip(0, 255).astype(np.uint8)


def _image(pixels: np.ndarray, encoding: str, channels: int, header) -> Image:
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = sys.byteorder == "big"
    msg.step = msg.width * channels
    msg.data = pixels.tobytes()
    return msg
