"""ReasonSeg as LISA ships it: a folder of <name>.jpg + <name>.json (LabelMe) pairs.

Each json holds `text` (one or more instructions about the same target), `is_sentence` (long
query vs short phrase) and LabelMe `shapes`: polygons labelled "target", "ignore" or "flag".
The mask is rasterised exactly as LISA's `get_mask_from_json` (utils/data_processing.py) does
it: points truncated to int32, each shape drawn with cv2.polylines (thickness 1) then
cv2.fillPoly, "flag" shapes skipped, the others drawn in `np.argsort(areas)[::-1]` order (largest
first, so a smaller polygon inside a larger one wins; ties in that order too), targets with 1,
ignore with 255, at the image's native (EXIF-oriented) resolution. Texts stay as written; short
phrases are marked (`SegSample.phrase`) so the model asks about them with its phrase question.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import cv2
from PIL import Image, ImageOps

from llmseg_model.data.sample import IGNORE_INDEX, SegSample

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
QUERY_TYPES = ("all", "short", "long")
_EXIF_ORIENTATION = 0x0112


@dataclass
class ReasonSegRecord:
    """One annotated image, parsed and checked once when the data set opens."""

    name: str
    image_path: Path
    json_path: Path
    raw_texts: list[str]
    is_sentence: bool
    shapes: list[dict[str, Any]]


def read_annotation(json_path: str | Path) -> dict[str, Any]:
    """Read one LabelMe json, with LISA's cp1252 fallback for the few files that need it."""
    json_path = Path(json_path)
    raw = json_path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{json_path}: not valid JSON ({err})") from err


def check_annotation(anno: Any, where: str) -> tuple[list[str], bool, list[dict[str, Any]]]:
    """Return (texts, is_sentence, shapes), or raise ValueError naming the bad field."""
    if not isinstance(anno, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(anno).__name__}")
    for key in ("text", "is_sentence", "shapes"):
        if key not in anno:
            raise ValueError(f"{where}: missing field {key!r}")
    texts = anno["text"]
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError(f"{where}: 'text' must be a non-empty list of non-empty strings")
    if not isinstance(anno["is_sentence"], bool):
        raise ValueError(f"{where}: 'is_sentence' must be true or false, got {anno['is_sentence']!r}")
    shapes = anno["shapes"]
    if not isinstance(shapes, list):
        raise ValueError(f"{where}: 'shapes' must be a list")
    for k, shape in enumerate(shapes):
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
            raise ValueError(f"{where}: shapes[{k}] needs a string 'label'")
        points = shape.get("points")
        if not isinstance(points, list) or not points:
            raise ValueError(f"{where}: shapes[{k}] needs a non-empty 'points' list")
        if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in points):
            raise ValueError(f"{where}: shapes[{k}] 'points' must be [x, y] pairs")
    return [t.strip() for t in texts], anno["is_sentence"], shapes


def _draw(mask: np.ndarray, points: list, value: int) -> None:
    """Outline then fill, as LISA draws a LabelMe shape (in place)."""
    polygon = np.array([points], dtype=np.int32)
    cv2.polylines(mask, polygon, True, value, 1)
    cv2.fillPoly(mask, polygon, value)


def rasterize_shapes(shapes: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """LabelMe shapes -> (H, W) uint8 mask: 1 target, 255 ignore, 0 background (LISA's rule)."""
    areas, kept = [], []
    for shape in shapes:
        if shape["label"].lower() == "flag":  # deprecated annotations, skipped by LISA
            continue
        alone = np.zeros((height, width), dtype=np.uint8)
        _draw(alone, shape["points"], 1)
        areas.append(int(alone.sum()))
        kept.append(shape)
    mask = np.zeros((height, width), dtype=np.uint8)
    for index in np.argsort(areas)[::-1]:  # LISA's order, ties included
        shape = kept[index]
        _draw(mask, shape["points"], IGNORE_INDEX if "ignore" in shape["label"].lower() else 1)
    return mask


def oriented_size(image_path: str | Path) -> tuple[int, int]:
    """(height, width) after EXIF orientation, read from the header only (LabelMe and cv2 both
    apply the orientation, so the polygons are in those coordinates)."""
    with Image.open(image_path) as image:
        width, height = image.size
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return height, width


def load_rgb(image_path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB with EXIF orientation applied."""
    with Image.open(image_path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB")).copy()


class ReasonSegDataset(Sequence):
    """One SegSample per annotated image of a ReasonSeg split folder (e.g. ReasonSeg/val).

    Texts are kept as written; a short-phrase image gives a sample with `phrase=True`, which the
    model wraps in its phrase question ("What is {text} in this image? ..."), as LISA's evaluation
    does. `query_type` keeps all images, or only the short-phrase or the long-sentence ones
    (ReasonSeg reports both).
    """

    def __init__(self, root: str | Path, query_type: str = "all", source: str = "reasonseg") -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"ReasonSeg folder not found: {self.root}")
        if query_type not in QUERY_TYPES:
            raise ValueError(f"unknown query_type {query_type!r}; choose one of {QUERY_TYPES}")
        self.query_type = query_type
        self.source = source
        self.records = [r for r in self._scan() if self._keep(r)]
        logger.info("ReasonSeg %s: %d images (%s queries)", self.root, len(self.records), query_type)

    def _scan(self) -> list[ReasonSegRecord]:
        records = []
        json_paths = sorted(self.root.glob("*.json"))
        if not json_paths:
            raise ValueError(f"no <name>.json annotations in {self.root}; expected LISA's ReasonSeg layout")
        for json_path in json_paths:
            image_path = next(
                (p for p in (json_path.with_suffix(s) for s in IMAGE_SUFFIXES) if p.is_file()),
                None,
            )
            if image_path is None:
                raise ValueError(f"{json_path}: no image beside it (looked for {', '.join(IMAGE_SUFFIXES)})")
            texts, is_sentence, shapes = check_annotation(read_annotation(json_path), str(json_path))
            records.append(ReasonSegRecord(json_path.stem, image_path, json_path, texts, is_sentence, shapes))
        return records

    def _keep(self, record: ReasonSegRecord) -> bool:
        if self.query_type == "short":
            return not record.is_sentence
        if self.query_type == "long":
            return record.is_sentence
        return True

    def group(self, index: int) -> str:
        """Query length of a sample ("short" / "long"), for ReasonSeg's split of the results."""
        return "long" if self.records[index].is_sentence else "short"

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> SegSample:  # type: ignore[override]
        if isinstance(index, slice):
            raise TypeError("ReasonSegDataset does not support slicing; index samples one at a time")
        record = self.records[index]
        return SegSample(
            image_id=record.name,
            texts=list(record.raw_texts),
            load_image=lambda path=record.image_path: load_rgb(path),
            load_mask=lambda r=record: rasterize_shapes(r.shapes, *oriented_size(r.image_path)),
            source=self.source,
            phrase=not record.is_sentence,
        )
