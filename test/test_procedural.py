"""Procedural reasoning-segmentation data set: determinism, splits, targets, uniqueness."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmseg_model.data.procedural import (
    FUNCTIONS,
    SUPERLATIVES,
    ProceduralConfig,
    ProceduralDataset,
    _clear_extreme,
    _Descriptor,
    _matching,
    vocabulary_texts,
)
from llmseg_model.data.sample import SegSample


@pytest.fixture(scope="module")
def train() -> ProceduralDataset:
    return ProceduralDataset("train", 40)


def test_sequence_of_seg_samples(train: ProceduralDataset) -> None:
    n = train.config.instructions_per_scene
    assert len(train) == 40 * n
    sample = train[n + 1]
    assert isinstance(sample, SegSample)
    assert sample.image_id == "train/000001"
    assert sample.source == "procedural"
    assert sample.texts == [train.scene(1).instructions[1].text]
    image, mask = sample.load_image(), sample.load_mask()
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    assert mask.shape == (256, 256) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}
    assert train[-1].image_id == "train/000039"
    with pytest.raises(IndexError):
        train[len(train)]


def test_deterministic() -> None:
    a, b = ProceduralDataset("val", 5), ProceduralDataset("val", 5)
    for i in (0, 4):
        sa, sb = a.scene(i), b.scene(i)
        assert np.array_equal(sa.image, sb.image)
        assert np.array_equal(sa.masks, sb.masks)
        assert [x.text for x in sa.instructions] == [x.text for x in sb.instructions]
    other_seed = ProceduralDataset("val", 5, ProceduralConfig(seed=1))
    assert not np.array_equal(a.scene(0).image, other_seed.scene(0).image)


def test_splits_are_disjoint() -> None:
    hashes = {}
    for split in ("train", "val", "test"):
        ds = ProceduralDataset(split, 30)
        hashes[split] = {ds.scene(i).image.tobytes() for i in range(30)}
        assert len(hashes[split]) == 30
    assert not hashes["train"] & hashes["val"]
    assert not hashes["train"] & hashes["test"]
    assert not hashes["val"] & hashes["test"]


def test_masks_match_targets(train: ProceduralDataset) -> None:
    n = train.config.instructions_per_scene
    for i in range(10):
        scene = train.scene(i)
        assert scene.masks.shape == (len(scene.objects), 256, 256)
        assert scene.masks.sum(0).max() <= 1, "objects overlap"
        for obj, mask in zip(scene.objects, scene.masks):
            assert obj.area == int(mask.sum()) > 0
            ys, xs = np.nonzero(mask)
            assert obj.bbox == (xs.min(), ys.min(), xs.max(), ys.max())
        for k, instruction in enumerate(scene.instructions):
            expected = np.zeros((256, 256), np.uint8)
            for t in instruction.targets:
                expected |= scene.masks[t]
            assert np.array_equal(train[i * n + k].load_mask(), expected)
        # Object pixels carry the object's colour family, not the background.
        for obj, mask in zip(scene.objects, scene.masks):
            mean = scene.image[mask > 0].astype(float).mean(0)
            assert mean.std() > 30, f"{obj.colour} object looks grey: {mean}"


def test_kinds_and_multi_instance_present(train: ProceduralDataset) -> None:
    kinds, multi = set(), 0
    for i in range(train.num_scenes):
        for instruction in train.scene(i).instructions:
            kinds.add(instruction.kind)
            multi += len(instruction.targets) > 1
    assert kinds == {"attribute", "function", "relation", "superlative", "multi"}
    assert multi >= 0.1 * len(train)
    texts = [x.text for i in range(train.num_scenes) for x in train.scene(i).instructions]
    assert any(t.endswith("?") for t in texts) and any(not t.endswith("?") for t in texts)


def test_group_is_the_instruction_kind(train: ProceduralDataset) -> None:
    per_scene = train.config.instructions_per_scene
    for index in range(len(train)):
        scene_index, k = divmod(index, per_scene)
        instruction = train.scene(scene_index).instructions[k]
        assert train.group(index) == instruction.kind
        assert train[index].texts == [instruction.text]


def _words(text: str) -> set[str]:
    return set(text.lower().replace("?", " ").replace(".", " ").replace(";", " ").replace(",", " ").split())


def test_single_targets_are_unambiguous(train: ProceduralDataset) -> None:
    """Re-derive every single-target attribute / superlative / function instruction from the text."""
    checked = 0
    for i in range(train.num_scenes):
        scene = train.scene(i)
        for instruction in scene.instructions:
            if instruction.kind == "multi":
                assert len(instruction.targets) >= 2
                continue
            assert len(instruction.targets) == 1
            words = _words(instruction.text)
            if instruction.kind == "attribute":
                d = _Descriptor(
                    size=next((w for w in ("small", "medium", "large") if w in words), None),
                    colour=next((w for w in ("red", "green", "blue", "yellow", "purple", "orange") if w in words), None),
                    category=next((w for w in ("ball", "box", "wedge", "ring", "bar") if w in words), None),
                )
                assert _matching(scene.objects, d) == list(instruction.targets), instruction.text
                checked += 1
            elif instruction.kind == "function":
                target = scene.objects[instruction.targets[0]]
                phrases = FUNCTIONS[target.category]["clauses"] + FUNCTIONS[target.category]["needs"]
                assert any(p.lower() in instruction.text.lower() for p in phrases), instruction.text
                same = [o for o in scene.objects if o.category == target.category]
                if len(same) > 1:  # narrowed by colour or size, which must then be unique
                    value = target.colour if target.colour in words else target.size
                    assert value in words, instruction.text
                    assert sum(value in (o.colour, o.size) for o in same) == 1, instruction.text
                checked += 1
            elif instruction.kind == "superlative" and "the object" not in instruction.text and "thing" not in instruction.text:
                name = next(k for k, ws in SUPERLATIVES.items() if any(w in words for w in ws))
                category = next((w for w in ("ball", "box", "wedge", "ring", "bar") if w in words), None)
                colour = next((w for w in ("red", "green", "blue", "yellow", "purple", "orange") if w in words), None)
                size = next((w for w in ("small", "medium", "large") if w in words), None)
                pool = _matching(scene.objects, _Descriptor(size, colour, category))
                assert _clear_extreme(scene.objects, pool, name, (256, 256)) == instruction.targets[0]
                checked += 1
    assert checked > 50


def test_non_square_images() -> None:
    config = ProceduralConfig(height=160, width=320, instructions_per_scene=3)
    ds = ProceduralDataset("test", 3, config)
    assert len(ds) == 9
    for i in range(3):
        scene = ds.scene(i)
        assert scene.image.shape == (160, 320, 3)
        assert scene.masks.shape[1:] == (160, 320)
        assert len(scene.instructions) == 3
    assert ds[4].load_mask().shape == (160, 320)


def test_vocabulary_covers_generated_words(train: ProceduralDataset) -> None:
    vocab = set()
    for text in vocabulary_texts():
        vocab |= _words(text)
    for i in range(train.num_scenes):
        for instruction in train.scene(i).instructions:
            missing = _words(instruction.text) - vocab
            assert not missing, f"{instruction.text!r}: {missing}"


def test_write_split(tmp_path) -> None:
    from PIL import Image

    ds = ProceduralDataset("val", 2)
    path = ds.write(tmp_path)
    data = json.loads(path.read_text())
    assert [s["image_id"] for s in data["scenes"]] == ["val/000000", "val/000001"]
    record = data["scenes"][1]
    image = np.asarray(Image.open(tmp_path / record["image"]))
    instances = np.asarray(Image.open(tmp_path / record["instances"]))
    assert np.array_equal(image, ds.scene(1).image)
    assert instances.max() == len(record["objects"])
    assert np.array_equal(instances == 1, ds.scene(1).masks[0] > 0)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="split"):
        ProceduralDataset("training", 3)
    with pytest.raises(ValueError, match="min_objects"):
        ProceduralConfig(min_objects=4, max_objects=2)
    with pytest.raises(ValueError, match="64x64"):
        ProceduralConfig(height=32)


def test_samples_do_not_re_render_evicted_scenes(scene_renders) -> None:
    """Random-order training reads samples of thousands of scenes; only pixels need a render."""
    calls = scene_renders
    data = ProceduralDataset("val", 3, cache_size=1)
    texts = [data[i].texts for i in range(len(data))]
    assert len(calls) == 3
    assert [data[i].texts for i in range(len(data))] == texts and [data.group(i) for i in range(len(data))]
    assert len(calls) == 3  # scenes 0 and 1 were evicted, yet texts and kinds came from memory
    data[0].load_image()
    assert len(calls) == 4  # pixels of an evicted scene do need a render
