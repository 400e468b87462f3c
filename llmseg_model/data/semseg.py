"""Semantic- and part-segmentation sources of the published ReasonSeg recipe, read where LISA's data
preparation puts them under one data folder (its `dataset_dir`):

    ade20k/images/training/*.jpg, ade20k/annotations/training/*.png      ADE20K (ADEChallengeData2016)
    coco/train2017/*.jpg, cocostuff/train2017/*.png                      COCO-Stuff 164k label maps
    mapillary/config_v2.0.json, mapillary/training/images/*.jpg,
        mapillary/training/v2.0/labels/*.png                             Mapillary Vistas ("v1.2" too)
    vlpart/pascal_part/train.json, vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/
    vlpart/paco/annotations/paco_lvis_v1_train.json (images: coco/<file_name>)

Each data set is indexed by image and offers these candidate queries (the published choices):

- label maps (ADE20K, COCO-Stuff, Mapillary): one per class present in the image; its mask is
  every pixel of that class. ADE20K's 0 is unlabelled and the rest shift down by one; COCO-Stuff's
  classes whose name has a "-" ("wall-brick", "floor-other", ...) are ignored like its 255, so
  they are never asked about; Mapillary keeps every label of its config (its last one,
  "unlabeled", included, as the published reader does).
- part annotations (PASCAL-Part, PACO-LVIS): one per annotation (one instance); "obj:part"
  categories read "obj part" or "the part of the obj" (training draws one, 50/50), PACO names
  lose their "_(...)" qualifier. Images without annotations are left out.

Texts are the raw class names (phrase=True); the question templates are the model's business.
Masks are binary: unlabelled and ignored pixels count as background, as in the published IoU and
IoP targets. `source` names the image collection, not the data set: COCO-Stuff and PACO-LVIS
read the same COCO train2017 pictures and so share their cached proposals.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from llmseg_model.data.class_names import ADE20K_CLASSES, COCO_STUFF_CLASSES
from llmseg_model.data.image_io import read_label, read_rgb, segmentation_mask
from llmseg_model.data.sample import IGNORE_INDEX, SegSample
from llmseg_model.data.targets import ImageDataset, ImageRef, RecordDataset

logger = logging.getLogger(__name__)

SEMSEG_KINDS = ("ade20k", "cocostuff", "mapillary", "pascal_part", "paco_lvis")
MAPILLARY_VERSIONS = ("v2.0", "v1.2")


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found at {path} (see docs/training.md for the data layout)")
    return path


class LabelMapDataset(ImageDataset):
    """Images with one class-index PNG each; one candidate query per class present.

    `remap(label) -> label` turns the PNG's values into indices of `classes` (IGNORE_INDEX for
    pixels that never become a query).
    """

    def __init__(
        self,
        name: str,
        source: str,
        image_ids: Sequence[str],
        images: Sequence[Path],
        labels: Sequence[Path],
        classes: Sequence[str],
        remap: Callable[[np.ndarray], np.ndarray],
    ) -> None:
        if not (len(image_ids) == len(images) == len(labels)):
            raise ValueError(f"{name}: {len(images)} images but {len(labels)} label maps")
        self.name = name
        self.source = source
        self.image_ids = list(image_ids)
        self.images = list(images)
        self.labels = list(labels)
        self.classes = list(classes)
        self.remap = remap
        self._first_of = {}  # the published reader finds a class id by name: the first id wins
        for k, c in enumerate(self.classes):
            self._first_of.setdefault(c, k)
        self._last: tuple[int, np.ndarray] | None = None  # the label map read last (its queries share it)
        logger.info("%s: %d images, %d classes", name, len(self.images), len(self.classes))

    def __len__(self) -> int:
        return len(self.images)

    def image_of(self, index: int) -> ImageRef:
        return self.source, self.image_ids[index], partial(read_rgb, self.images[index])

    def label(self, index: int) -> np.ndarray:
        """The remapped (H, W) label map of image `index`: class indices, IGNORE_INDEX elsewhere."""
        if self._last is not None and self._last[0] == index:
            return self._last[1]
        label = self.remap(read_label(self.labels[index]).astype(np.int64))
        bad = (label != IGNORE_INDEX) & ((label < 0) | (label >= len(self.classes)))
        if bad.any():
            raise ValueError(
                f"{self.labels[index]}: label values {sorted(set(label[bad].tolist()))[:5]} are outside the "
                f"{len(self.classes)} classes of {self.name}"
            )
        self._last = (index, label)
        return label

    def targets(self, index: int) -> list[SegSample]:
        present = [int(v) for v in np.unique(self.label(index)) if v != IGNORE_INDEX]
        source, image_id, load_image = self.image_of(index)
        return [
            SegSample(
                image_id=image_id,
                texts=[self.classes[value]],
                load_image=load_image,
                load_mask=partial(self._mask, index, self._first_of[self.classes[value]]),
                source=source,
                phrase=True,
                target=f"class {value}",
            )
            for value in present
        ]

    def _mask(self, index: int, value: int) -> np.ndarray:
        return (self.label(index) == value).astype(np.uint8)


def _ade20k_remap(label: np.ndarray) -> np.ndarray:
    out = label - 1
    out[label == 0] = IGNORE_INDEX
    return out


def _ignore_values(label: np.ndarray, values: tuple[int, ...]) -> np.ndarray:
    label = label.copy()
    label[np.isin(label, values)] = IGNORE_INDEX
    return label


def _unchanged(label: np.ndarray) -> np.ndarray:
    return label


def _all_present(paths: Sequence[Path], name: str, what: str) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{name}: {len(missing)} {what} are missing, e.g. {missing[0]}")


def ade20k(root: str | Path) -> LabelMapDataset:
    """ADE20K training split: ade20k/images/training/<id>.jpg + ade20k/annotations/training/<id>.png."""
    folder = _require(Path(root) / "ade20k" / "images" / "training", "ADE20K training images")
    images = sorted(p for p in folder.iterdir() if p.suffix == ".jpg")
    labels = [Path(root) / "ade20k" / "annotations" / "training" / f"{p.stem}.png" for p in images]
    _all_present(labels, "ade20k", "label maps of its images")
    return LabelMapDataset("ade20k", "ade20k", [p.stem for p in images], images, labels, ADE20K_CLASSES, _ade20k_remap)


def cocostuff(root: str | Path) -> LabelMapDataset:
    """COCO-Stuff label maps cocostuff/train2017/<id>.png over coco/train2017/<id>.jpg."""
    folder = _require(Path(root) / "cocostuff" / "train2017", "COCO-Stuff label maps")
    labels = sorted(folder.glob("*.png"))
    images = [Path(root) / "coco" / "train2017" / f"{p.stem}.jpg" for p in labels]
    _all_present(images, "cocostuff", "COCO images of its label maps")
    ignored = tuple(k for k, c in enumerate(COCO_STUFF_CLASSES) if "-" in c)
    ids = [f"train2017/{p.stem}" for p in labels]
    remap = partial(_ignore_values, values=ignored)
    return LabelMapDataset("cocostuff", "coco2017", ids, images, labels, COCO_STUFF_CLASSES, remap)


def mapillary_classes(config_path: str | Path) -> list[str]:
    """Class names of a Mapillary Vistas config_v*.json: each label's `readable` name, lower-cased."""
    data = json.loads(Path(config_path).read_text())
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, list) or not all(isinstance(x, dict) and isinstance(x.get("readable"), str) for x in labels):
        raise ValueError(f"{config_path}: expected {{'labels': [{{'readable': ...}}, ...]}}")
    return [x["readable"].lower() for x in labels]


def mapillary(root: str | Path, version: str = "v2.0") -> LabelMapDataset:
    """Mapillary Vistas training split: mapillary/training/<version>/labels/<id>.png over
    mapillary/training/images/<id>.jpg, names from mapillary/config_<version>.json. The published
    reader uses v2.0 (124 classes); v1.2 (66 classes) lies beside it in the same download."""
    if version not in MAPILLARY_VERSIONS:
        raise ValueError(f"mapillary version must be one of {MAPILLARY_VERSIONS}, got {version!r}")
    base = Path(root) / "mapillary"
    classes = mapillary_classes(_require(base / f"config_{version}.json", "Mapillary config"))
    labels = sorted(_require(base / "training" / version / "labels", "Mapillary label maps").glob("*.png"))
    images = [base / "training" / "images" / f"{p.stem}.jpg" for p in labels]
    _all_present(images, "mapillary", "images of its label maps")
    return LabelMapDataset(f"mapillary {version}", "mapillary", [p.stem for p in labels], images, labels, classes, _unchanged)


@dataclass
class _PartImage:
    image_id: str
    path: Path
    height: int
    width: int
    annotations: list[tuple[int, int, Any]]  # (annotation id, category id, segmentation)


class PartDataset(RecordDataset):
    """A COCO-style part annotation file; one candidate query per annotation (one instance)."""

    def __init__(self, name: str, source: str, json_path: Path, image_dir: Path, names: Callable[[str], list[str]]) -> None:
        self.name = name
        self.source = source
        data = json.loads(_require(json_path, f"{name} annotations").read_text())
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key) if isinstance(data, dict) else None, list):
                raise ValueError(f"{json_path}: missing the COCO list {key!r}")
        self.category_texts = {int(c["id"]): names(str(c["name"])) for c in data["categories"]}
        by_image: dict[int, list[tuple[int, int, Any]]] = {}
        for ann in data["annotations"]:
            if int(ann["category_id"]) not in self.category_texts:
                raise ValueError(f"{json_path}: annotation {ann.get('id')} has unknown category {ann['category_id']}")
            by_image.setdefault(int(ann["image_id"]), []).append((int(ann["id"]), int(ann["category_id"]), ann["segmentation"]))
        self.records = [
            _PartImage(
                image_id=str(Path(info["file_name"]).with_suffix("")),
                path=image_dir / info["file_name"],
                height=int(info["height"]),
                width=int(info["width"]),
                annotations=by_image[int(info["id"])],
            )
            for info in data["images"]
            if int(info["id"]) in by_image
        ]
        logger.info("%s: %d images with parts (of %d), %d annotations", name, len(self.records), len(data["images"]), len(data["annotations"]))

    def targets(self, index: int) -> list[SegSample]:
        record = self.records[index]
        return [
            SegSample(
                image_id=record.image_id,
                texts=list(self.category_texts[category]),
                load_image=partial(read_rgb, record.path),
                load_mask=partial(segmentation_mask, segmentation, record.height, record.width, f"{self.name} annotation {ann_id}"),
                source=self.source,
                phrase=True,
                target=f"annotation {ann_id}",
            )
            for ann_id, category, segmentation in record.annotations
        ]


def part_texts(obj: str, part: str) -> list[str]:
    """The two published wordings of a part: "car wheel" and "the wheel of the car"."""
    return [f"{obj} {part}", f"the {part} of the {obj}"]


def pascal_part_names(name: str) -> list[str]:
    """PASCAL-Part categories are "object:part"."""
    pieces = name.strip().split(":")
    if len(pieces) != 2:
        raise ValueError(f"PASCAL-Part category {name!r} is not 'object:part'")
    return part_texts(*pieces)


def paco_names(name: str) -> list[str]:
    """PACO-LVIS categories are "object" or "object:part", each maybe with a "_(sense)" qualifier."""
    pieces = [p.split("_(")[0] for p in name.strip().split(":")]
    if len(pieces) == 1:
        return pieces
    if len(pieces) != 2:
        raise ValueError(f"PACO category {name!r} is not 'object' or 'object:part'")
    return part_texts(*pieces)


def pascal_part(root: str | Path) -> PartDataset:
    base = Path(root) / "vlpart" / "pascal_part"
    images = base / "VOCdevkit" / "VOC2010" / "JPEGImages"
    return PartDataset("pascal_part", "voc2010", base / "train.json", images, pascal_part_names)


def paco_lvis(root: str | Path) -> PartDataset:
    json_path = Path(root) / "vlpart" / "paco" / "annotations" / "paco_lvis_v1_train.json"
    return PartDataset("paco_lvis", "coco2017", json_path, Path(root) / "coco", paco_names)


def open_semseg(kind: str, root: str | Path, version: str = "") -> ImageDataset:
    """The sem-seg data set `kind` under the data folder `root`."""
    if kind == "ade20k":
        return ade20k(root)
    if kind == "cocostuff":
        return cocostuff(root)
    if kind == "mapillary":
        return mapillary(root, version or "v2.0")
    if kind == "pascal_part":
        return pascal_part(root)
    if kind == "paco_lvis":
        return paco_lvis(root)
    raise ValueError(f"unknown sem-seg data set {kind!r}; choose one of {SEMSEG_KINDS}")
