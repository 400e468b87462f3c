"""Small data sets in the real on-disk formats of the published training sources, laid out under one
data folder as LISA's data preparation does (ADE20K, COCO-Stuff, Mapillary, PASCAL-Part, PACO-LVIS,
the refer data sets, ReasonSeg). Each writer returns what the reader should find."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from llmseg_model.data.class_names import COCO_STUFF_CLASSES

HEIGHT, WIDTH = 48, 64


def write_image(path: Path, height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> None:
    """A random RGB picture, saved as JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)


def write_label(path: Path, label: np.ndarray, palette: bool = False) -> None:
    """A label map PNG: grey values, or palette indices with a colour palette (Mapillary's kind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = label.shape
    image = Image.frombytes("P" if palette else "L", (width, height), label.astype(np.uint8).tobytes())
    if palette:
        image.putpalette([v for k in range(256) for v in (k, 255 - k, (7 * k) % 256)])
    image.save(path, format="PNG")


def blocks(values: list[int], height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A label map of vertical stripes, one per value."""
    label = np.zeros((height, width), np.int64)
    for k, value in enumerate(values):
        label[:, k * width // len(values) : (k + 1) * width // len(values)] = value
    return label


def rect(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def write_ade20k(root: Path) -> dict[str, np.ndarray]:
    """Two images: 'a' with unlabelled, wall (1), person (13) and floor (4); 'b' only unlabelled."""
    labels = {"ADE_train_00000001": blocks([0, 1, 13, 4]), "ADE_train_00000002": blocks([0])}
    for k, (name, label) in enumerate(labels.items()):
        write_image(root / "ade20k" / "images" / "training" / f"{name}.jpg", seed=k)
        write_label(root / "ade20k" / "annotations" / "training" / f"{name}.png", label)
    return labels


def write_cocostuff(root: Path) -> np.ndarray:
    """One COCO train2017 picture: person (0), building-other (ignored), sky, unlabelled (255)."""
    label = blocks([0, COCO_STUFF_CLASSES.index("building-other"), COCO_STUFF_CLASSES.index("sky"), 255])
    write_image(root / "coco" / "train2017" / "000000000042.jpg", seed=5)
    write_label(root / "cocostuff" / "train2017" / "000000000042.png", label)
    return label


def write_mapillary(root: Path, version: str = "v2.0") -> np.ndarray:
    """Config with three labels and one palette label map using the last two."""
    names = ["Bird", "Lane Marking - General", "Unlabeled"]
    (root / "mapillary").mkdir(parents=True, exist_ok=True)
    config = {"labels": [{"name": n.lower().replace(" ", "-"), "readable": n, "color": [k, k, k]} for k, n in enumerate(names)]}
    (root / "mapillary" / f"config_{version}.json").write_text(json.dumps(config))
    label = blocks([1, 2])
    write_image(root / "mapillary" / "training" / "images" / "m0001.jpg", seed=6)
    write_label(root / "mapillary" / "training" / version / "labels" / "m0001.png", label, palette=True)
    return label


def coco_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def write_parts(root: Path) -> dict[str, np.ndarray]:
    """PASCAL-Part: two car wheels (polygons) and a hand (RLE) on one image, plus an image without
    parts. PACO-LVIS: a bucket handle and a knife on the COCO picture COCO-Stuff also uses."""
    hand = np.zeros((HEIGHT, WIDTH), np.uint8)
    hand[5:20, 30:50] = 1
    pascal = {
        "images": [
            {"id": 7, "file_name": "2008_000007.jpg", "height": HEIGHT, "width": WIDTH},
            {"id": 8, "file_name": "2008_000008.jpg", "height": HEIGHT, "width": WIDTH},
        ],
        "categories": [{"id": 1, "name": "car:wheel"}, {"id": 2, "name": "person:hand"}],
        "annotations": [
            {"id": 11, "image_id": 7, "category_id": 1, "segmentation": [rect(2, 30, 12, 40)], "area": 100, "bbox": [2, 30, 10, 10], "iscrowd": 0},
            {"id": 12, "image_id": 7, "category_id": 1, "segmentation": [rect(20, 30, 30, 40)], "area": 100, "bbox": [20, 30, 10, 10], "iscrowd": 0},
            {"id": 13, "image_id": 7, "category_id": 2, "segmentation": coco_rle(hand), "area": int(hand.sum()), "bbox": [30, 5, 20, 15], "iscrowd": 0},
        ],
    }
    base = root / "vlpart" / "pascal_part"
    base.mkdir(parents=True, exist_ok=True)
    (base / "train.json").write_text(json.dumps(pascal))
    for info in pascal["images"]:
        write_image(base / "VOCdevkit" / "VOC2010" / "JPEGImages" / info["file_name"], seed=info["id"])
    paco = {
        "images": [{"id": 42, "file_name": "train2017/000000000042.jpg", "height": HEIGHT, "width": WIDTH}],
        "categories": [{"id": 3, "name": "bucket_(pail):handle"}, {"id": 4, "name": "knife_(kitchen)"}],
        "annotations": [
            {"id": 21, "image_id": 42, "category_id": 3, "segmentation": [rect(40, 2, 60, 12)], "area": 200, "bbox": [40, 2, 20, 10], "iscrowd": 0},
            {"id": 22, "image_id": 42, "category_id": 4, "segmentation": [rect(5, 5, 15, 25)], "area": 200, "bbox": [5, 5, 10, 20], "iscrowd": 0},
        ],
    }
    annotations = root / "vlpart" / "paco" / "annotations"
    annotations.mkdir(parents=True, exist_ok=True)
    (annotations / "paco_lvis_v1_train.json").write_text(json.dumps(paco))
    if not (root / "coco" / "train2017" / "000000000042.jpg").exists():
        write_image(root / "coco" / "train2017" / "000000000042.jpg", seed=5)
    return {"hand": hand}


def write_refer(root: Path, name: str = "refcoco", split_by: str = "unc") -> dict:
    """A refer data set: image 1 with two train refs (three sentences, polygons), image 2 with a
    val ref only, image 3 with a train ref whose target is an RLE list. Pickled with protocol 2,
    as the toolkit's Python 2 files are."""
    refclef = name == "refclef"
    names = {1: "25/images/25177.jpg", 2: "25/images/25178.jpg", 3: "26/images/26001.jpg"} if refclef else {
        i: f"COCO_train2014_{i:012d}.jpg" for i in (1, 2, 3)
    }
    image_dir = root / "refer_seg" / "images" / ("saiapr_tc-12" if refclef else "mscoco/images/train2014")
    for i, file_name in names.items():
        write_image(image_dir / file_name, seed=10 + i)
    blob = np.zeros((HEIGHT, WIDTH), np.uint8)
    blob[10:30, 40:60] = 1
    instances = {
        "images": [{"id": i, "file_name": f, "height": HEIGHT, "width": WIDTH} for i, f in names.items()],
        "annotations": [
            {"id": 101, "image_id": 1, "category_id": 1, "segmentation": [rect(0, 0, 20, 20)], "area": 400, "bbox": [0, 0, 20, 20], "iscrowd": 0},
            {"id": 102, "image_id": 1, "category_id": 1, "segmentation": [rect(30, 10, 50, 30), rect(0, 40, 10, 47)], "area": 470, "bbox": [0, 10, 50, 37], "iscrowd": 0},
            {"id": 103, "image_id": 2, "category_id": 1, "segmentation": [rect(5, 5, 10, 10)], "area": 25, "bbox": [5, 5, 5, 5], "iscrowd": 0},
            {"id": 104, "image_id": 3, "category_id": 1, "segmentation": [coco_rle(blob)], "area": int(blob.sum()), "bbox": [40, 10, 20, 20], "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
    }

    def ref(ref_id, ann_id, image_id, split, sents):
        sentences = [{"sent_id": ref_id * 10 + k, "sent": s, "raw": s, "tokens": s.split()} for k, s in enumerate(sents)]
        return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": 1, "split": split,
                "sentences": sentences, "sent_ids": [s["sent_id"] for s in sentences], "file_name": names[image_id]}

    refs = [
        ref(1, 101, 1, "train", [" man on the left ", "leftmost guy"]),
        ref(2, 102, 1, "train", ["person in red"]),
        ref(3, 103, 2, "val", ["small thing"]),
        ref(4, 104, 3, "train", ["the big one"]),
    ]
    folder = root / "refer_seg" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"refs({split_by}).p").write_bytes(pickle.dumps(refs, protocol=2))
    (folder / "instances.json").write_text(json.dumps(instances))
    return {"blob": blob, "names": names}


def write_reasonseg(root: Path, split: str, count: int = 2) -> None:
    """ReasonSeg LabelMe pairs under reason_seg/ReasonSeg/<split>."""
    folder = root / "reason_seg" / "ReasonSeg" / split
    for k in range(count):
        write_image(folder / f"{split}_{k}.jpg", seed=30 + k)
        anno = {
            "text": [f"the thing one could sit on number {k}", "where would you rest"],
            "is_sentence": True,
            "shapes": [{"label": "target", "points": [[8, 8], [40, 8], [40, 36], [8, 36]], "shape_type": "polygon"}],
        }
        (folder / f"{split}_{k}.json").write_text(json.dumps(anno))


def write_everything(root: Path) -> None:
    """Every source of the published ReasonSeg recipe, its validation split included."""
    write_ade20k(root)
    write_cocostuff(root)
    write_mapillary(root)
    write_parts(root)
    for name, split_by in (("refclef", "unc"), ("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")):
        write_refer(root, name, split_by)
    write_reasonseg(root, "train")
    write_reasonseg(root, "val")
