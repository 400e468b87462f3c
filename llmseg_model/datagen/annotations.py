"""Readers for the annotation sets the generator draws from, and the masks of their objects.

LVIS is COCO-format with polygon (or RLE) masks and categories that carry synonyms and a
definition. EgoObjects is COCO-format with boxes only; its masks come from SAM prompted with each
box. Both end up as `ImageRecord`s whose objects carry a COCO RLE, so everything downstream is
source-agnostic.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
from pycocotools import mask as mask_utils

from llmseg_model.datagen.config import BoxMaskConfig, SourceConfig
from llmseg_model.modeling.rle import coco_rle

if TYPE_CHECKING:  # torch is imported by BoxMasker only, so the datagen command starts fast
    import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Category:
    """A category with readable names: LVIS' `bow_(weapon)` becomes `bow (weapon)`."""

    id: int
    name: str
    synonyms: tuple[str, ...] = ()
    definition: str = ""

    @property
    def mention_terms(self) -> tuple[str, ...]:
        """Words that name this category outright: its name, synonyms, and their bare forms."""
        terms = []
        for text in (self.name, *self.synonyms):
            for term in (text, bare_name(text)):
                term = term.strip().lower()
                if term and term not in terms:
                    terms.append(term)
        return tuple(terms)

    @property
    def display_name(self) -> str:
        return bare_name(self.name)


@dataclass
class ObjectAnnotation:
    """One annotated instance. `rle` is a pycocotools RLE once the mask is known."""

    id: int
    category_id: int
    bbox: tuple[float, float, float, float]  # XYWH in pixels
    segmentation: Any = None  # polygons / RLE as in the file; None for box-only annotations
    instance_id: str = ""  # EgoObjects' instance id (main-object tagging)
    rle: dict | None = None

    @property
    def box_area(self) -> float:
        return max(self.bbox[2], 0.0) * max(self.bbox[3], 0.0)


@dataclass
class ImageRecord:
    """One image of one source with its objects."""

    id: int
    name: str  # output key: the file's base name, as LLM-Seg40K uses
    rel_path: str  # path below the source's image_dir
    height: int
    width: int
    source: str  # the source's dataset name ("from_dataset")
    kind: str  # "lvis" or "egoobjects"
    image_dir: str = ""
    objects: list[ObjectAnnotation] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    not_exhaustive: frozenset[int] = frozenset()
    main_category: str = ""
    main_instance_ids: frozenset[str] = frozenset()

    @property
    def path(self) -> Path | None:
        """The image file, or None when the source has no image_dir."""
        if not self.image_dir:
            return None
        root = Path(self.image_dir)
        direct = root / self.rel_path
        if direct.is_file():
            return direct
        return root / self.name


@dataclass
class AnnotationSet:
    source: SourceConfig
    images: list[ImageRecord]
    categories: dict[int, Category]


def readable_name(name: str) -> str:
    """LVIS names use underscores for spaces."""
    return " ".join(name.replace("_", " ").split())


def bare_name(name: str) -> str:
    """Drop a parenthesised sense tag: `bow (weapon)` -> `bow`."""
    return " ".join(re.sub(r"\([^)]*\)", " ", readable_name(name)).split())


def load_annotation_set(source: SourceConfig) -> AnnotationSet:
    """Read one source's JSON into image records (objects attached, masks not yet made)."""
    path = Path(source.annotations)
    if not path.is_file():
        raise FileNotFoundError(f"{source.dataset_name}: annotation file not found: {path}")
    data = json.loads(path.read_text())
    for key in ("images", "annotations", "categories"):
        if key not in data or not isinstance(data[key], list):
            raise ValueError(f"{path}: not a COCO-format file, missing the `{key}` list")
    categories = {}
    for raw in data["categories"]:
        if "id" not in raw or "name" not in raw:
            raise ValueError(f"{path}: category without id or name: {raw}")
        synonyms = tuple(readable_name(s) for s in raw.get("synonyms", []) if isinstance(s, str))
        categories[int(raw["id"])] = Category(
            id=int(raw["id"]),
            name=readable_name(raw["name"]),
            synonyms=synonyms,
            definition=str(raw.get("def") or raw.get("definition") or "").strip(),
        )
    captions = _load_captions(source.captions) if source.captions else {}
    images: dict[int, ImageRecord] = {}
    for raw in data["images"]:
        for key in ("id", "height", "width"):
            if key not in raw:
                raise ValueError(f"{path}: image without `{key}`: {raw}")
        rel_path = _image_rel_path(raw)
        if not rel_path:
            raise ValueError(f"{path}: image {raw['id']} has neither file_name nor a url")
        main_ids = raw.get("main_category_instance_ids") or []
        images[int(raw["id"])] = ImageRecord(
            id=int(raw["id"]),
            name=PurePosixPath(rel_path).name,
            rel_path=rel_path,
            height=int(raw["height"]),
            width=int(raw["width"]),
            source=source.dataset_name,
            kind=source.kind,
            image_dir=source.image_dir,
            captions=captions.get(int(raw["id"]), []),
            not_exhaustive=frozenset(int(c) for c in raw.get("not_exhaustive_category_ids", [])),
            main_category=readable_name(str(raw.get("main_category") or "")),
            main_instance_ids=frozenset(str(i) for i in main_ids),
        )
    box_only = source.kind == "egoobjects"
    for raw in data["annotations"]:
        image = images.get(int(raw.get("image_id", -1)))
        if image is None:
            raise ValueError(f"{path}: annotation {raw.get('id')} refers to unknown image {raw.get('image_id')}")
        if int(raw.get("category_id", -1)) not in categories:
            raise ValueError(f"{path}: annotation {raw.get('id')} has unknown category {raw.get('category_id')}")
        if raw.get("iscrowd", 0):
            continue
        bbox = raw.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise ValueError(f"{path}: annotation {raw.get('id')} needs a 4-number `bbox` [x, y, w, h]")
        segmentation = None if box_only else raw.get("segmentation")
        if not box_only and not segmentation:
            raise ValueError(f"{path}: annotation {raw.get('id')} of an {source.kind} source has no segmentation")
        image.objects.append(
            ObjectAnnotation(
                id=int(raw["id"]),
                category_id=int(raw["category_id"]),
                bbox=tuple(float(v) for v in bbox),
                segmentation=segmentation,
                instance_id=str(raw.get("instance_id", "")),
            )
        )
    names: dict[str, int] = {}
    for image in images.values():
        if image.name in names:
            raise ValueError(f"{path}: images {names[image.name]} and {image.id} share the file name {image.name!r}")
        names[image.name] = image.id
    logger.info("%s: %d images, %d categories from %s", source.dataset_name, len(images), len(categories), path)
    return AnnotationSet(source=source, images=list(images.values()), categories=categories)


def _image_rel_path(raw: dict) -> str:
    if raw.get("file_name"):
        return str(raw["file_name"])
    url = raw.get("coco_url") or raw.get("url") or ""
    if not url:
        return ""
    parts = PurePosixPath(urlparse(url).path).parts
    # LVIS urls end in <split>2017/<file>: keep the split folder, as COCO's layout has it.
    return str(PurePosixPath(*parts[-2:])) if len(parts) >= 3 else parts[-1]


def _load_captions(path_str: str) -> dict[int, list[str]]:
    path = Path(path_str)
    if not path.is_file():
        raise FileNotFoundError(f"captions file not found: {path}")
    data = json.loads(path.read_text())
    if not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: not a COCO captions file, missing the `annotations` list")
    captions: dict[int, list[str]] = {}
    for raw in data["annotations"]:
        if "image_id" in raw and isinstance(raw.get("caption"), str):
            captions.setdefault(int(raw["image_id"]), []).append(" ".join(raw["caption"].split()))
    return captions


def segmentation_rle(segmentation: Any, height: int, width: int) -> dict | None:
    """COCO polygons / RLE -> one pycocotools RLE (bytes counts); None when it has no pixels."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
        if not polygons:
            return None
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        if list(segmentation.get("size", [])) != [height, width]:
            raise ValueError(f"RLE size {segmentation.get('size')} does not match image {height}x{width}")
        rle = coco_rle({"size": [height, width], "counts": segmentation["counts"]})
    else:
        raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")
    return rle if int(mask_utils.area(rle)) > 0 else None


def mask_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> pycocotools RLE."""
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def union_rle(rles: list[dict]) -> dict:
    return mask_utils.merge(list(rles), intersect=False) if len(rles) > 1 else rles[0]


def rle_area(rle: dict) -> int:
    return int(mask_utils.area(rle))


def rle_to_json(rle: dict) -> dict:
    """RLE with str counts and a [H, W] list size, as LLM-Seg40K's `rle_seg` stores it."""
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def load_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class BoxMasker:
    """SAM prompted with one box per object: the best of SAM's three masks, cut to the box.

    With real SAM weights this yields the object inside each box; masks that fill too little of their
    box are reported empty (None) so the object is dropped, or replaced by the box when configured.
    """

    def __init__(self, sam: torch.nn.Module, config: BoxMaskConfig) -> None:
        from segment_anything import SamPredictor

        self.config = config
        self.predictor = SamPredictor(sam.to(config.device))

    @classmethod
    def from_config(cls, config: BoxMaskConfig) -> "BoxMasker":
        from llmseg_model.config import preset_config
        from llmseg_model.modeling.proposals import build_sam

        if not config.sam_checkpoint and not config.allow_random_weights:
            raise ValueError(
                "box_masks.sam_checkpoint: box-only sources (egoobjects) need SAM weights; set the path "
                "to a SAM checkpoint (the paper uses sam_vit_h_4b8939.pth with sam_preset: paper)"
            )
        sam_config = preset_config(config.sam_preset).sam
        return cls(build_sam(sam_config, config.sam_checkpoint or None), config)

    def __call__(self, image: np.ndarray, boxes_xywh: np.ndarray, chunk: int = 32) -> list[np.ndarray | None]:
        """image: (H, W, 3) uint8 RGB; boxes: (N, 4) XYWH. Returns one (H, W) bool mask or None per box."""
        import torch

        with torch.inference_mode():
            return self._masks(image, boxes_xywh, chunk)

    def _masks(self, image: np.ndarray, boxes_xywh: np.ndarray, chunk: int) -> list[np.ndarray | None]:
        import torch

        boxes_xywh = np.asarray(boxes_xywh, dtype=np.float32).reshape(-1, 4)
        if len(boxes_xywh) == 0:
            return []
        height, width = image.shape[:2]
        self.predictor.set_image(image)
        xyxy = boxes_xywh.copy()
        xyxy[:, 2:] += xyxy[:, :2]
        results: list[np.ndarray | None] = []
        for start in range(0, len(xyxy), chunk):
            boxes = torch.as_tensor(xyxy[start : start + chunk], device=self.predictor.device)
            boxes = self.predictor.transform.apply_boxes_torch(boxes, (height, width))
            masks, scores, _ = self.predictor.predict_torch(None, None, boxes=boxes, multimask_output=True)
            best = scores.argmax(dim=1)
            chosen = masks[torch.arange(len(best)), best].cpu().numpy()
            for mask, box in zip(chosen, xyxy[start : start + chunk]):
                results.append(self._fit_to_box(mask, box))
        self.predictor.reset_image()
        return results

    def _fit_to_box(self, mask: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        height, width = mask.shape
        x0, y0, x1, y1 = box
        mx, my = self.config.box_margin * (x1 - x0), self.config.box_margin * (y1 - y0)
        keep = np.zeros_like(mask)
        ys = slice(max(0, int(np.floor(y0 - my))), min(height, int(np.ceil(y1 + my))))
        xs = slice(max(0, int(np.floor(x0 - mx))), min(width, int(np.ceil(x1 + mx))))
        keep[ys, xs] = True
        mask = mask & keep
        box_area = max((x1 - x0) * (y1 - y0), 1.0)
        if mask.sum() >= self.config.min_box_fill * box_area and mask.any():
            return mask
        if self.config.fallback_to_box:
            filled = np.zeros_like(mask)
            filled[max(0, int(y0)) : min(height, int(np.ceil(y1))), max(0, int(x0)) : min(width, int(np.ceil(x1)))] = True
            return filled if filled.any() else None
        return None
