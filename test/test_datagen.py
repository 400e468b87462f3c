"""LLM-Seg40K-style data generator: tiny LVIS / EgoObjects files made here, offline backend end to end,
resume after a crash, validation rules, and SAM box-prompt masks from a real (tiny, random) SAM."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from llmseg_model.datagen.annotations import BoxMasker, Category, load_annotation_set
from llmseg_model.datagen.config import BoxMaskConfig, DatagenConfig, PromptConfig, SourceConfig
from llmseg_model.datagen.generate import Generator, main
from llmseg_model.datagen.prompts import ResponseFormatError, parse_response
from llmseg_model.datagen.selection import build_scene, plan_objects
from llmseg_model.datagen.validate import mentions_category, validate_items
from llmseg_model.datagen.writer import PROGRESS_FILE

CATEGORIES = [
    {"id": 1, "name": "mug", "synonyms": ["mug", "coffee_mug"], "def": "a cup with a handle for hot drinks"},
    {"id": 2, "name": "knife", "synonyms": ["knife"], "def": "a blade with a handle for cutting food"},
    {"id": 3, "name": "apple", "synonyms": ["apple"], "def": "fruit with red or yellow or green skin and crisp flesh"},
    {"id": 4, "name": "bow_(weapon)", "synonyms": ["bow_(weapon)"], "def": "a weapon for shooting arrows"},
    {"id": 5, "name": "chair", "synonyms": ["chair"], "def": "a seat for one person, with a support for the back"},
    {"id": 6, "name": "book", "synonyms": ["book"], "def": "a written work bound between covers"},
    {"id": 7, "name": "lamp", "synonyms": ["lamp"], "def": "a piece of furniture holding electric light bulbs"},
    {"id": 8, "name": "spoon", "synonyms": ["spoon"], "def": "a utensil with a small shallow bowl on a handle"},
]


def _rect_polygon(x: float, y: float, w: float, h: float) -> list[float]:
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def write_tiny_lvis(folder: Path, seed: int = 0, extra: bool = True) -> Path:
    """A small LVIS-format file: random images with 1-7 categories of rectangle/triangle objects.

    Image i holds categories with strictly decreasing sizes so "obj1" is predictable. The names
    follow LVIS v1 (coco_url only, no file_name).
    """
    rng = random.Random(seed)
    images, annotations = [], []
    category_counts = [2, 3, 6, 4, 1, 2, 7, 3, 5, 2, 3, 6]
    for index, count in enumerate(category_counts):
        image_id = 100 + index
        width, height = 160 + 8 * index, 120
        images.append(
            {
                "id": image_id,
                "width": width,
                "height": height,
                "coco_url": f"http://images.cocodataset.org/train2017/{image_id:012d}.jpg",
                "not_exhaustive_category_ids": [8] if index == 3 else [],
                "neg_category_ids": [],
            }
        )
        cats = rng.sample(range(1, 9), count)
        for rank, cat in enumerate(cats):
            instances = 2 if (cat == 3 and rank > 0) else 1
            for k in range(instances):
                w = max(6.0, 70.0 - 9 * rank - 3 * k)
                h = max(6.0, 50.0 - 6 * rank - 2 * k)
                x = rng.uniform(0, width - w - 1)
                y = rng.uniform(0, height - h - 1)
                poly = _rect_polygon(x, y, w, h) if (rank + k) % 2 == 0 else [x, y, x + w, y, x, y + h]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": cat,
                        "segmentation": [poly],
                        "bbox": [x, y, w, h],
                        "area": w * h,
                    }
                )
    path = folder / "lvis_tiny.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path


def offline_config(tmp_path: Path, annotations: Path, **overrides) -> DatagenConfig:
    data = {
        "output_dir": str(tmp_path / "out"),
        "sources": [{"kind": "lvis", "annotations": str(annotations)}],
        "backend": {"kind": "offline", "concurrency": 2},
        "split": {"train": 0.6, "val": 0.2, "test": 0.2},
    }
    data.update(overrides)
    return DatagenConfig.from_dict(data)


def _reference_masks(annotations_path: Path) -> tuple[dict, dict, dict]:
    data = json.loads(annotations_path.read_text())
    images = {f"{im['id']:012d}.jpg": im for im in data["images"]}
    anns = {a["id"]: a for a in data["annotations"]}
    names = {c["id"]: c["name"].replace("_", " ").split(" (")[0] for c in data["categories"]}
    return images, anns, names


def _decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def _polygon_mask(ann: dict, height: int, width: int) -> np.ndarray:
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], height, width))).astype(bool)


def _read_splits(out: Path) -> dict:
    return {name: json.loads((out / f"{name}.json").read_text()) for name in ("train", "val", "test")}


def test_offline_end_to_end_writes_llmseg40k_splits(tmp_path):
    annotations = write_tiny_lvis(tmp_path)
    config = offline_config(tmp_path, annotations)
    report = Generator(config).run()
    out = Path(config.output_dir)
    splits = _read_splits(out)
    images, anns, names = _reference_masks(annotations)

    all_entries = {k: v for split in splits.values() for k, v in split.items()}
    assert len(all_entries) == report["images"]["accepted"] >= 8
    assert sum(len(s) for s in splits.values()) == len(all_entries)  # each image in exactly one split
    assert report["image_rejections"]["too_few_categories"] >= 1  # the 1-category image
    assert report["images"]["considered"] == report["images"]["accepted"] + report["images"]["rejected"]
    assert report["questions"]["accepted"] == sum(len(e["qa_pairs"]) for e in all_entries.values())
    assert set(report["buckets"]) <= {"lvis/simple", "lvis/complex"} and len(report["buckets"]) == 2
    multi = 0
    for name, entry in all_entries.items():
        assert entry["from_dataset"] == "lvis"
        assert entry["image_path"] == f"train2017/{name}"
        image = images[name]
        assert 1 <= len(entry["qa_pairs"]) <= 3
        questions = [qa["question"] for qa in entry["qa_pairs"]]
        assert len(set(questions)) == len(questions)
        targets = {tuple(qa["object_ids"]) for qa in entry["qa_pairs"]}
        assert len(targets) == len(questions)  # the offline backend spreads questions over targets
        for qa in entry["qa_pairs"]:
            assert qa["rle_seg"]["size"] == [image["height"], image["width"]]
            assert isinstance(qa["rle_seg"]["counts"], str) and qa["answer"]
            expected = np.zeros((image["height"], image["width"]), bool)
            for object_id in qa["object_ids"]:
                ann = anns[object_id]
                assert ann["image_id"] == image["id"]
                expected |= _polygon_mask(ann, image["height"], image["width"])
                assert not re.search(rf"\b{names[ann['category_id']]}(s|es)?\b", qa["question"].lower())
            assert np.array_equal(_decode(qa["rle_seg"]), expected) and expected.any()
            multi += len(qa["object_ids"]) > 1
    assert multi > 0  # multi-object answers ("every apple", pairs) occur
    # the not-exhaustive category of image 103 is never an answer there
    if "000000000103.jpg" in all_entries:
        for qa in all_entries["000000000103.jpg"]["qa_pairs"]:
            assert all(anns[i]["category_id"] != 8 for i in qa["object_ids"])
    saved = json.loads((out / "report.json").read_text())
    assert saved["images"] == report["images"]

    # the project's LLM-Seg40K reader consumes the files as written
    from llmseg_model.data.llmseg40k import LLMSeg40KDataset

    dataset = LLMSeg40KDataset(out / "train.json", image_root=tmp_path)
    train_pairs = [qa for entry in splits["train"].values() for qa in entry["qa_pairs"]]
    assert len(dataset) == len(train_pairs) > 0
    for sample, qa in zip(dataset, train_pairs):
        assert sample.texts == [qa["question"]]
        assert np.array_equal(sample.load_mask().astype(bool), _decode(qa["rle_seg"]))


def test_rerun_skips_finished_and_resumes_after_crash(tmp_path):
    annotations = write_tiny_lvis(tmp_path)
    config = offline_config(tmp_path, annotations)
    first = Generator(config).run()
    out = Path(config.output_dir)
    full = _read_splits(out)
    log = (out / PROGRESS_FILE).read_text().splitlines(keepends=True)

    second = Generator(config).run()  # nothing left to do
    assert second["images"].get("considered", 0) == 0
    assert second["images"]["already_done"] == first["images"]["considered"]
    assert (out / PROGRESS_FILE).read_text() == "".join(log)
    assert _read_splits(out) == full

    # crash mid-write: three finished lines and a torn fourth
    (out / PROGRESS_FILE).write_text("".join(log[:3]) + log[3][: len(log[3]) // 2])
    for name in ("train", "val", "test"):
        (out / f"{name}.json").unlink()
    third = Generator(config).run()
    assert third["images"]["already_done"] == 3
    assert third["images"]["considered"] == len(log) - 3
    assert _read_splits(out) == full
    lines = (out / PROGRESS_FILE).read_text().splitlines()
    assert len(lines) == len(log) and all(json.loads(line) for line in lines)


def test_bucket_quota_limit_and_cli(tmp_path):
    annotations = write_tiny_lvis(tmp_path)
    config_path = tmp_path / "datagen.yaml"
    config_path.write_text(
        f"""
output_dir: {tmp_path / "cli_out"}
sources:
  - kind: lvis
    name: lvis_small
    annotations: {annotations}
    bucket_quota: {{simple: 2, complex: 1}}
backend: {{kind: openai}}
"""
    )
    assert main(["--config", str(config_path), "--backend.kind", "offline", "-q"]) == 0
    report = json.loads((tmp_path / "cli_out" / "report.json").read_text())
    assert report["images"]["considered"] == 3 and report["images"]["over_quota"] >= 1
    assert report["buckets"] == {"lvis_small/simple": 2, "lvis_small/complex": 1}
    entries = {k: v for s in _read_splits(tmp_path / "cli_out").values() for k, v in s.items()}
    assert {e["from_dataset"] for e in entries.values()} == {"lvis_small"}

    shutil.rmtree(tmp_path / "cli_out")
    assert main(["--config", str(config_path), "--backend.kind", "offline", "--limit", "1", "-q"]) == 0
    report = json.loads((tmp_path / "cli_out" / "report.json").read_text())
    assert report["images"]["considered"] == 1


def test_dry_run_prints_prompt_without_writing_splits(tmp_path, capsys):
    annotations = write_tiny_lvis(tmp_path)
    config_path = tmp_path / "datagen.yaml"
    config_path.write_text(json.dumps({"output_dir": str(tmp_path / "o"), "sources": [{"annotations": str(annotations)}]}))
    assert main(["--config", str(config_path), "--dry-run", "-q"]) == 0
    text = capsys.readouterr().out
    assert "images to process: 11" in text and "--- system ---" in text and "obj1:" in text
    assert not (tmp_path / "o" / "train.json").exists()


def test_config_errors_name_the_setting(tmp_path):
    with pytest.raises(ValueError, match="unknown setting"):
        DatagenConfig.from_dict({"sources": [], "backend": {"kindd": "x"}})
    with pytest.raises(ValueError, match="sources"):
        DatagenConfig.from_dict({}).validate()
    with pytest.raises(ValueError, match="backend.kind"):
        DatagenConfig.from_dict({"sources": [{"annotations": "a.json"}], "backend": {"kind": "gpt"}}).validate()
    with pytest.raises(ValueError, match="split"):
        DatagenConfig.from_dict({"sources": [{"annotations": "a.json"}], "split": {"train": 0.9}}).validate()
    with pytest.raises(ValueError, match="image_dir"):
        DatagenConfig.from_dict({"sources": [{"kind": "egoobjects", "annotations": "a.json"}]}).validate()
    with pytest.raises(ValueError, match="box_masks.sam_checkpoint"):
        BoxMasker.from_config(BoxMaskConfig(sam_preset="tiny"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(ValueError, match="annotations"):
        load_annotation_set(SourceConfig(annotations=str(bad)))


def test_parse_response_is_strict():
    item = {"question": "q", "answer": "a", "objects": ["obj1"]}
    assert parse_response(json.dumps({"questions": [item]})) == [item]
    assert parse_response("```json\n" + json.dumps({"questions": [item]}) + "\n```") == [item]
    for text, reason in [
        ('{"questions": [{"question": "q"', "malformed_json"),
        ("Here you go: " + json.dumps({"questions": []}), "malformed_json"),
        (json.dumps([item]), "bad_schema"),
        ("", "empty_response"),
    ]:
        with pytest.raises(ResponseFormatError) as error:
            parse_response(text)
        assert error.value.reason == reason


def test_category_mentions_and_question_validation(tmp_path):
    bow = Category(4, "bow (weapon)", ("bow (weapon)",), "a weapon for shooting arrows")
    knife = Category(2, "knife", ("knife", "table knife"), "")
    berry = Category(9, "strawberry", (), "")
    assert mentions_category("Hand me the bow, please", bow)
    assert mentions_category("Which KNIVES are sharp?", knife)
    assert mentions_category("all the strawberries", berry)
    assert not mentions_category("the elbow of the arm", bow)
    assert not mentions_category("what would I shoot arrows with?", bow)

    annotations = write_tiny_lvis(tmp_path)
    annotation_set = load_annotation_set(SourceConfig(annotations=str(annotations)))
    image = next(im for im in annotation_set.images if len({o.category_id for o in im.objects}) == 3)
    selection = DatagenConfig().selection
    plan = plan_objects(image, annotation_set.categories, selection)
    from llmseg_model.datagen.annotations import segmentation_rle

    for obj in plan.objects:
        obj.rle = segmentation_rle(obj.segmentation, image.height, image.width)
    scene = build_scene(image, plan, annotation_set.categories, selection)
    first = scene.objects[0]
    name = first.category.display_name
    prompt = PromptConfig(questions_per_image=3, max_answer_objects=2)
    items = [
        {"question": "What would help me most right now?", "answer": "x", "objects": ["obj1"]},
        {"question": "What would help me most, right now?!", "answer": "x", "objects": ["obj2"]},  # duplicate
        {"question": f"Where is the {name} in this picture?", "answer": "x", "objects": ["OBJ1"]},
        {"question": "Which things could I use for this?", "answer": "x", "objects": ["obj99"]},
        {"question": "Which things could I use here?", "answer": "x", "objects": ["obj1", "obj2", "obj3"]},
        {"question": "short?", "answer": "x", "objects": ["obj1"]},
        {"question": "Which things would I use for that?", "answer": "x", "objects": []},
        {"question": 5, "objects": ["obj1"]},
        "not a dict",
        {"question": "Which two things here belong together?", "answer": "x", "objects": ["obj1", "obj2"]},
        {"question": "And which one is the odd one out?", "answer": "x", "objects": ["obj2"]},
    ]
    seen: set[str] = set()
    accepted, rejected = validate_items(items, scene, prompt, seen, limit=2)
    assert [a.object_keys for a in accepted] == [["obj1"], ["obj1", "obj2"]]
    assert dict(rejected) == {
        "duplicate": 1,
        "names_category": 1,
        "unknown_object": 1,
        "too_many_objects": 1,
        "question_length": 1,
        "no_objects": 1,
        "bad_item": 2,
        "surplus": 1,
    }
    union = mask_utils.decode(accepted[1].rle)
    parts = mask_utils.decode(scene.object("obj1").annotation.rle) | mask_utils.decode(scene.object("obj2").annotation.rle)
    assert np.array_equal(union, parts)
    allowed, rejected = validate_items(items[2:3], scene, PromptConfig(allow_category_names=True), set(), limit=3)
    assert len(allowed) == 1 and not rejected


# -- EgoObjects: boxes -> masks through SAM box prompts ---------------------------------------------


def _tiny_sam_masker(**overrides) -> BoxMasker:
    torch.manual_seed(0)
    return BoxMasker.from_config(BoxMaskConfig(sam_preset="tiny", allow_random_weights=True, **overrides))


def test_box_masker_masks_are_nonempty_and_inside_their_box():
    masker = _tiny_sam_masker(box_margin=0.0)
    image = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    boxes = np.array([[5, 6, 40, 30], [60, 40, 60, 50], [0, 0, 127, 95]], np.float32)
    masks = masker(image, boxes)
    assert len(masks) == 3
    for mask, (x, y, w, h) in zip(masks, boxes):
        assert mask is not None and mask.shape == (96, 128) and mask.dtype == bool and mask.any()
        ys, xs = np.nonzero(mask)
        assert xs.min() >= np.floor(x) and xs.max() <= np.ceil(x + w) and ys.min() >= np.floor(y) and ys.max() <= np.ceil(y + h)
    # a fill threshold no mask can reach: dropped, or the box itself with fallback_to_box
    strict = _tiny_sam_masker(min_box_fill=1.5)
    assert strict(image, boxes[:1]) == [None]
    filled = _tiny_sam_masker(min_box_fill=1.5, fallback_to_box=True)(image, boxes[:1])[0]
    assert filled.sum() == 40 * 30 and filled[6:36, 5:45].all()


def write_tiny_egoobjects(folder: Path) -> Path:
    from PIL import Image

    image_dir = folder / "ego_images"
    image_dir.mkdir()
    rng = np.random.default_rng(1)
    images, annotations = [], []
    layouts = {
        "frame_a.jpg": [(1, [4, 4, 50, 40]), (2, [70, 50, 40, 30]), (3, [10, 60, 30, 25])],
        "frame_b.jpg": [(1, [60, 10, 50, 60]), (4, [5, 5, 30, 30])],
        "frame_c.jpg": [(2, [20, 20, 60, 50])],  # one category: skipped
    }
    for index, (name, objects) in enumerate(layouts.items()):
        Image.fromarray((rng.random((96, 128, 3)) * 255).astype(np.uint8)).save(image_dir / name)
        images.append(
            {"id": index + 1, "width": 128, "height": 96, "url": f"https://example.invalid/ego/{name}", "main_category": "bottle"}
        )
        for cat, box in objects:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": index + 1, "category_id": cat, "bbox": box, "instance_id": f"i{cat}"}
            )
    categories = [{"id": i, "name": n} for i, n in enumerate(["bottle", "laptop", "toothbrush", "remote control"], 1)]
    path = folder / "ego_tiny.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_egoobjects_boxes_through_sam_end_to_end(tmp_path):
    ego = write_tiny_egoobjects(tmp_path)
    config = DatagenConfig.from_dict(
        {
            "output_dir": str(tmp_path / "out"),
            "sources": [{"kind": "egoobjects", "annotations": str(ego), "image_dir": str(tmp_path / "ego_images")}],
            "backend": {"kind": "offline"},
            "box_masks": {"sam_preset": "tiny", "allow_random_weights": True},
        }
    )
    torch.manual_seed(0)
    report = Generator(config).run()
    assert report["images"]["accepted"] == 2 and report["image_rejections"] == {"too_few_categories": 1}
    entries = {k: v for s in _read_splits(Path(config.output_dir)).values() for k, v in s.items()}
    assert set(entries) == {"frame_a.jpg", "frame_b.jpg"}
    boxes = {a["id"]: a["bbox"] for a in json.loads(ego.read_text())["annotations"]}
    for entry in entries.values():
        assert entry["from_dataset"] == "egoobjects"
        for qa in entry["qa_pairs"]:
            mask = _decode(qa["rle_seg"])
            assert mask.shape == (96, 128) and mask.any()
            inside = np.zeros_like(mask)
            for object_id in qa["object_ids"]:
                x, y, w, h = boxes[object_id]
                inside[max(0, int(y - 0.05 * h)) : int(np.ceil(y + 1.05 * h)), max(0, int(x - 0.05 * w)) : int(np.ceil(x + 1.05 * w))] = True
            assert not (mask & ~inside).any()  # SAM's mask stays in (a margin around) the prompt box


def test_two_sources_with_one_image_name_is_an_error(tmp_path):
    annotations = write_tiny_lvis(tmp_path)
    config = offline_config(
        tmp_path,
        annotations,
        sources=[{"kind": "lvis", "name": "a", "annotations": str(annotations)}, {"kind": "lvis", "name": "b", "annotations": str(annotations)}],
    )
    with pytest.raises(ValueError, match="both have an image named"):
        Generator(config).run()


@pytest.mark.parametrize("name", ["datagen.yaml", "datagen_offline.yaml"])
def test_shipped_configs_are_valid(name):
    config = DatagenConfig.load(Path(__file__).resolve().parents[1] / "config" / name)
    config.validate()
    assert config.sources and config.backend.kind in ("openai", "offline")
