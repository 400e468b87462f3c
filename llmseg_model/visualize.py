"""Pictures of an answer: the image with its instances marked and a caption that says what was asked.

One drawing for the demo, the benchmark's examples and the node's debug overlay. Instances keep
their own pixels (a tint would blend with the object's colour: a red tint turns a green box brown)
and are marked by diagonal hatching and an outline in a colour chosen away from the saturated
colours of the procedural scenes, with a dark rim so the outline reads on any background; the
rest of the image is dimmed and desaturated. A caption band under the image carries the
instruction and each instance's number, colour and score. Small images are enlarged (nearest
neighbour, whole factors) so that a 256-pixel scene is readable on screen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Instance colours (RGB), each at least 100 (RGB distance) from every colour the procedural scenes
# paint objects in (llmseg_model.data.procedural.COLOURS), and from each other.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 235, 235),  # cyan
    (255, 60, 210),  # magenta
    (255, 255, 255),  # white
    (110, 255, 160),  # mint
    (140, 190, 255),  # sky
    (245, 255, 130),  # lemon
)
RIM = (0, 0, 0)  # the dark edge around every outline and badge
CAPTION_BACKGROUND = (24, 24, 28)
CAPTION_TEXT = (240, 240, 240)


@dataclass
class VisualConfig:
    """How answers are drawn; sizes of 0 scale with the displayed image."""

    min_side: int = 512  # images whose short side is smaller are enlarged by a whole factor
    background_brightness: float = 0.55  # brightness kept outside the instances (1 = unchanged)
    background_saturation: float = 0.5  # colour kept outside the instances (0 = grey)
    hatch_period: int = 0  # pixels between hatch lines (0: auto)
    hatch_alpha: float = 0.75  # opacity of the hatch lines
    outline_px: int = 0  # outline width (0: auto)
    font_px: int = 0  # caption text height (0: auto)
    max_listed: int = 8  # instances named in the caption; the rest are counted
    palette: tuple[tuple[int, int, int], ...] = field(default=PALETTE)

    def __post_init__(self) -> None:
        if self.min_side < 0:
            raise ValueError(f"VisualConfig.min_side must be >= 0, got {self.min_side}")
        for name in ("background_brightness", "background_saturation", "hatch_alpha"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"VisualConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.palette:
            raise ValueError("VisualConfig.palette needs at least one colour")


def render_instances(
    image: np.ndarray,
    instance_masks: np.ndarray | Sequence[np.ndarray],
    scores: Sequence[float] | np.ndarray,
    caption: str,
    config: VisualConfig | None = None,
) -> np.ndarray:
    """Draw an answer.

    image: (H, W, 3) uint8 RGB; instance_masks: (N, H, W) bool, one per instance, best first;
    scores: (N,) shown next to each instance's number; caption: the instruction (and anything else
    to say; newlines are kept).
    Returns (H', W', 3) uint8 RGB: the image, enlarged when small, with a caption band below.
    """
    config = config or VisualConfig()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    masks = np.asarray(instance_masks, dtype=bool) if len(instance_masks) else np.zeros((0, height, width), bool)
    if masks.ndim != 3 or masks.shape[1:] != (height, width):
        raise ValueError(f"instance masks must be (N, {height}, {width}) for this image, got {masks.shape}")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(masks):
        raise ValueError(f"{len(masks)} instance masks but {len(scores)} scores")

    factor = display_factor(height, width, config.min_side)
    picture = _enlarge(image, factor).astype(np.float32)
    masks = np.stack([_enlarge(m, factor) for m in masks]) if len(masks) else masks
    short = min(picture.shape[:2])
    outline = config.outline_px or max(2, round(short / 170))
    period = config.hatch_period or max(6, 3 * outline)

    union = masks.any(axis=0)
    if union.any():
        picture = np.where(union[..., None], picture, _dim(picture, config))
    colours = [np.asarray(config.palette[i % len(config.palette)], np.float32) for i in range(len(masks))]
    # Work on each instance's box (plus the outline's reach): cost follows instance size, not image size.
    boxes = [_box(mask, outline + 1) for mask in masks]
    drawn = [(mask, colour, box) for mask, colour, box in zip(masks, colours, boxes) if box is not None]
    for mask, colour, (rows, cols) in drawn:
        crop, view = mask[rows, cols], picture[rows, cols]
        diagonal = np.add.outer(np.arange(rows.start, rows.stop), np.arange(cols.start, cols.stop)) % period
        hatch = crop & (diagonal < max(1, period // 4))
        view[hatch] = (1 - config.hatch_alpha) * view[hatch] + config.hatch_alpha * colour
    for mask, colour, (rows, cols) in drawn:
        crop, view = mask[rows, cols], picture[rows, cols]
        view[_dilate(crop, max(1, outline // 2)) & ~crop] = RIM
        view[crop & ~_erode(crop, outline)] = colour

    canvas = Image.fromarray(picture.round().clip(0, 255).astype(np.uint8))
    font_px = config.font_px or int(np.clip(round(picture.shape[1] / 36), 13, 28))
    font = ImageFont.load_default(size=font_px)
    _badges(canvas, masks, colours, font, outline)
    return np.asarray(_with_caption(canvas, caption, scores, colours, font, font_px, config))


def display_factor(height: int, width: int, min_side: int) -> int:
    """Whole enlargement factor that brings the short side to at least `min_side`."""
    short = min(height, width)
    return max(1, math.ceil(min_side / short)) if min_side and short else 1


def _enlarge(array: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return array
    return np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)


def _dim(pixels: np.ndarray, config: VisualConfig) -> np.ndarray:
    """Darken and desaturate (..., 3) float pixels."""
    grey = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
    mixed = config.background_saturation * pixels + (1 - config.background_saturation) * grey[..., None]
    return config.background_brightness * mixed


def _box(mask: np.ndarray, margin: int) -> tuple[slice, slice] | None:
    """Rows and columns of the mask's bounding box grown by `margin`, clipped to the image; None
    for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    height, width = mask.shape
    return (
        slice(max(0, rows[0] - margin), min(height, rows[-1] + margin + 1)),
        slice(max(0, cols[0] - margin), min(width, cols[-1] + margin + 1)),
    )


def _window(mask: np.ndarray, radius: int, axis: int, reduce) -> np.ndarray:
    """`reduce` (np.all / np.any) over the pixels within `radius` along `axis`; outside the image
    counts as False."""
    pad = [(0, 0), (0, 0)]
    pad[axis] = (radius, radius)
    padded = np.pad(mask, pad, constant_values=False)
    return reduce(np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1, axis=axis), axis=-1)


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion with a (2r+1)-square; a mask touching the image border keeps an edge there."""
    if radius <= 0:
        return mask
    return _window(_window(mask, radius, 0, np.all), radius, 1, np.all)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with a (2r+1)-square."""
    if radius <= 0:
        return mask
    return _window(_window(mask, radius, 0, np.any), radius, 1, np.any)


def _badges(canvas: Image.Image, masks: np.ndarray, colours: list[np.ndarray], font, outline: int) -> None:
    """Number each instance on a chip in its colour, centred on the instance pixel nearest to the
    median of its pixels (robust to stray fragments; on the rim for a ring)."""
    draw = ImageDraw.Draw(canvas)
    for number, (mask, colour) in enumerate(zip(masks, colours), start=1):
        ys, xs = np.nonzero(mask)
        if not len(ys):
            continue
        cy, cx = np.median(ys), np.median(xs)
        nearest = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
        label = str(number)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        pad = max(2, outline)
        w, h = right - left + 2 * pad, bottom - top + 2 * pad
        x = int(np.clip(xs[nearest] - w // 2, 0, canvas.width - w))
        y = int(np.clip(ys[nearest] - h // 2, 0, canvas.height - h))
        chip = (x, y, x + w - 1, y + h - 1)
        draw.rectangle(chip, fill=tuple(int(c) for c in colour), outline=RIM, width=max(1, outline // 2))
        draw.text((x + pad - left, y + pad - top), label, fill=RIM, font=font)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap of each line of `text` to `width` pixels."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}" if line else word
            if line and draw.textlength(trial, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def _with_caption(
    canvas: Image.Image,
    caption: str,
    scores: np.ndarray,
    colours: list[np.ndarray],
    font,
    size: int,
    config: VisualConfig,
) -> Image.Image:
    """The picture with a band below it: the caption, then a swatch, number and score per instance."""
    measure = ImageDraw.Draw(canvas)
    margin = max(6, size // 2)
    line_height = round(size * 1.3)
    text_lines = _wrap(measure, caption, font, canvas.width - 2 * margin)
    shown = min(len(scores), config.max_listed)
    if len(scores):
        items = [f"{i + 1}: {scores[i]:.2f}" for i in range(shown)]
        noun = "instance" if len(scores) == 1 else "instances"
        summary = f"{len(scores)} {noun}" + (f" (+{len(scores) - shown} not listed)" if shown < len(scores) else "")
    else:
        items, summary = [], "nothing found"
    # Lay the score items out in rows: swatch, then "n: score", wrapping at the band's width.
    swatch = size
    gap = size
    rows: list[list[tuple[int, str]]] = [[]]
    x = margin + measure.textlength(summary + "   ", font=font)
    for i, item in enumerate(items):
        item_width = swatch + size // 3 + measure.textlength(item, font=font) + gap
        if rows[-1] and x + item_width > canvas.width - margin:
            rows.append([])
            x = margin
        rows[-1].append((i, item))
        x += item_width
    band_height = 2 * margin + line_height * (len(text_lines) + len(rows))
    out = Image.new("RGB", (canvas.width, canvas.height + band_height), CAPTION_BACKGROUND)
    out.paste(canvas, (0, 0))
    draw = ImageDraw.Draw(out)
    y = canvas.height + margin
    for line in text_lines:
        draw.text((margin, y), line, fill=CAPTION_TEXT, font=font)
        y += line_height
    x = margin
    draw.text((x, y), summary, fill=CAPTION_TEXT, font=font)
    x += measure.textlength(summary + "   ", font=font)
    for r, row in enumerate(rows):
        if r:
            y += line_height
            x = margin
        for i, item in row:
            top = y + (line_height - swatch) // 2 - size // 8
            square = (x, top, x + swatch - 1, top + swatch - 1)
            draw.rectangle(square, fill=tuple(int(c) for c in colours[i]), outline=RIM)
            x += swatch + size // 3
            draw.text((x, y), item, fill=CAPTION_TEXT, font=font)
            x += measure.textlength(item, font=font) + gap
    return out
