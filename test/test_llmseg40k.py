"""LLM-Seg40K reader on a small split json in the released format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from llmseg_model.data.llmseg40k import LLMSeg40KDataset, decode_rle


def coco_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """Column-major run lengths starting with zeros, as COCO's iscrowd annotations store them."""
    flat = mask.astype(np.uint8).ravel(order="F")
    counts, value, run = [], 0, 0
    for pixel in flat.tolist():
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


@pytest.fixture
def split(tmp_path) -> tuple[Path, dict]:
    rng = np.random.default_rng(0)
    masks = {"m1": rng.random((20, 30)) < 0.3, "m2": rng.random((20, 30)) < 0.5, "m3": rng.random((16, 12)) < 0.4}
    (tmp_path / "coco" / "train2017").mkdir(parents=True)
    (tmp_path / "ego").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "coco" / "train2017" / "000000000139.jpg")
    Image.fromarray(np.zeros((16, 12, 3), np.uint8)).save(tmp_path / "ego" / "abc.jpg")
    data = {
        "000000000139.jpg": {
            "from_dataset": "coco",
            "qa_pairs": [
                {"question": "What could I sit on?", "answer": "The chair.", "rle_seg": coco_rle(masks["m1"])},
                {"question": "Where can I put my cup?", "answer": "On the table.", "rle_seg": uncompressed_rle(masks["m2"])},
            ],
        },
        "abc.jpg": {
            "from_dataset": "ego_objects",
            "qa_pairs": [{"question": "What keeps food cold?", "answer": "The fridge.", "rle_seg": coco_rle(masks["m3"])}],
        },
    }
    path = tmp_path / "val.json"
    path.write_text(json.dumps(data))
    return path, masks


def test_samples_per_qa_pair(split, tmp_path):
    path, masks = split
    data = LLMSeg40KDataset(path, image_root=tmp_path, image_dirs={"coco": "coco/train2017", "ego_objects": str(tmp_path / "ego")})
    assert len(data) == 3
    first, second, third = data[0], data[1], data[2]
    assert first.image_id == second.image_id == "000000000139.jpg"  # one image, one proposal-cache entry
    assert first.texts == ["What could I sit on?"] and first.answers == ["The chair."]
    assert first.source == "llmseg40k"
    np.testing.assert_array_equal(first.load_mask(), masks["m1"].astype(np.uint8))
    np.testing.assert_array_equal(second.load_mask(), masks["m2"].astype(np.uint8))
    np.testing.assert_array_equal(third.load_mask(), masks["m3"].astype(np.uint8))
    assert first.load_image().shape == (20, 30, 3)
    assert third.load_image().shape == (16, 12, 3)
    assert data.image_path(data.records[2]) == tmp_path / "ego" / "abc.jpg"


def test_flat_image_root(split, tmp_path):
    path, _ = split
    data = LLMSeg40KDataset(path, image_root=tmp_path / "coco" / "train2017")
    assert data[0].load_image().shape == (20, 30, 3)
    with pytest.raises(FileNotFoundError, match="abc.jpg.*ego_objects.*image_root"):
        data[2].load_image()


def test_image_path_field_as_datagen_writes_it(split, tmp_path):
    path, _ = split
    raw = json.loads(path.read_text())
    raw["000000000139.jpg"]["image_path"] = "train2017/000000000139.jpg"
    raw["000000000139.jpg"]["bucket"] = "simple"
    path.write_text(json.dumps(raw))
    data = LLMSeg40KDataset(path, image_root=tmp_path, image_dirs={"coco": "coco", "ego_objects": "ego"})
    assert data.image_path(data.records[0]) == tmp_path / "coco" / "train2017" / "000000000139.jpg"
    assert data[1].load_image().shape == (20, 30, 3)
    assert data[2].load_image().shape == (16, 12, 3)


def test_bad_input_is_a_clear_error(split, tmp_path):
    path, _ = split
    with pytest.raises(ValueError, match="image_root or image_dirs"):
        LLMSeg40KDataset(path)
    with pytest.raises(ValueError, match="no folder for from_dataset \\['ego_objects'\\]"):
        LLMSeg40KDataset(path, image_dirs={"coco": str(tmp_path)})
    with pytest.raises(ValueError, match="not found"):
        LLMSeg40KDataset(tmp_path / "missing.json", image_root=tmp_path)
    raw = json.loads(path.read_text())
    raw["abc.jpg"]["qa_pairs"][0].pop("rle_seg")
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"abc.jpg.*qa_pairs\[0\].*rle_seg"):
        LLMSeg40KDataset(path, image_root=tmp_path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        LLMSeg40KDataset(path, image_root=tmp_path)


def test_decode_rle_checks():
    with pytest.raises(ValueError, match="size"):
        decode_rle({"size": [0, 3], "counts": "abc"})
    with pytest.raises(ValueError, match="sum to 5"):
        decode_rle({"size": [2, 3], "counts": [2, 3]})
    with pytest.raises(ValueError, match="counts"):
        decode_rle({"size": [2, 3], "counts": 7})
