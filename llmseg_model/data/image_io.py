"""Pixels of the semantic- and referring-segmentation sources: images, label maps, COCO masks.

Their annotations (label PNGs, COCO polygons and RLEs) are drawn on the pixels as stored, so the
images are read as stored too, without applying an EXIF rotation; a label map or mask whose size
differs from its image is an error, never a silently misaligned target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from llmseg_model.modeling.rle import coco_rle


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB in stored orientation."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).copy()


def read_label(path: str | Path) -> np.ndarray:
    """A label map PNG as (H, W) class indices: grey values, or palette indices for 'P' images
    (what np.array(Image.open(...)) gives, as the published readers use it)."""
    with Image.open(path) as image:
        if image.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"{path}: a label map must be a single-channel PNG, got mode {image.mode}")
        label = np.array(image)
    if label.ndim != 2:
        raise ValueError(f"{path}: label map has shape {label.shape}, expected (H, W)")
    return label


def segmentation_mask(segmentation: Any, height: int, width: int, where: str = "segmentation") -> np.ndarray:
    """A COCO `segmentation` (polygons, an RLE, or a list of RLEs) -> (H, W) uint8 in {0, 1}.

    Several parts are united; an empty list is an empty mask. Decoding goes through pycocotools
    `frPyObjects`, as COCO's `annToMask` and the refer API do.
    """
    if isinstance(segmentation, list) and not segmentation:
        return np.zeros((height, width), np.uint8)
    if isinstance(segmentation, dict):
        segmentation = [segmentation]
    if not isinstance(segmentation, list):
        raise ValueError(f"{where}: expected polygons or RLEs, got {type(segmentation).__name__}")
    if all(isinstance(part, list) for part in segmentation):
        rles = mask_utils.frPyObjects(segmentation, height, width)
    elif all(isinstance(part, dict) and "counts" in part and "size" in part for part in segmentation):
        rles = []
        for part in segmentation:
            counts = part["counts"]
            if not isinstance(counts, (list, str, bytes)):
                raise ValueError(f"{where}: RLE counts must be a string or a list, got {type(counts).__name__}")
            rles.append(coco_rle(part))
    else:
        raise ValueError(f"{where}: expected a list of polygons or of RLEs")
    masks = mask_utils.decode(rles)
    if masks.ndim == 3:
        masks = masks.any(axis=2)
    if masks.shape != (height, width):
        raise ValueError(f"{where}: mask is {masks.shape}, image is {(height, width)}")
    return masks.astype(np.uint8)
