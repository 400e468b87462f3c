"""Sem-seg readers on fixture files in each source's real format: which queries an image offers,
their texts and masks, ignored labels, part wordings, and the draw of up to three per image."""

from collections import Counter

import numpy as np
import pytest
from lisa_fixtures import HEIGHT, WIDTH, write_ade20k, write_cocostuff, write_mapillary, write_parts
from pycocotools import mask as mask_utils

from llmseg_model.data.class_names import ADE20K_CLASSES, COCO_STUFF_CLASSES
from llmseg_model.data.mixing import DatasetSpec, build_groups
from llmseg_model.data.semseg import ade20k, cocostuff, mapillary, paco_lvis, pascal_part
from llmseg_model.data.targets import Redrawn
from llmseg_model.data.training import TrainingSet


def by_text(group):
    return {s.texts[0]: s for s in group}


def test_ade20k_asks_about_each_labelled_class_with_unlabelled_as_background(tmp_path):
    labels = write_ade20k(tmp_path)
    data = ade20k(tmp_path)
    assert len(data) == 2 and data.image_of(0)[:2] == ("ade20k", "ADE_train_00000001")
    group = by_text(data[0])
    assert set(group) == {"wall", "person", "floor"} == {ADE20K_CLASSES[v - 1] for v in (1, 13, 4)}
    label = labels["ADE_train_00000001"]
    for name, value in (("wall", 1), ("person", 13), ("floor", 4)):
        sample = group[name]
        np.testing.assert_array_equal(sample.load_mask(), (label == value).astype(np.uint8))
        assert sample.phrase and sample.source == "ade20k" and sample.load_image().shape == (HEIGHT, WIDTH, 3)
    assert data[1] == []  # only unlabelled pixels: nothing to ask
    assert Redrawn(data)[1][0].image_id == "ADE_train_00000001"  # training draws another image instead


def test_cocostuff_never_asks_about_dashed_classes_and_shares_coco_images_with_paco(tmp_path):
    label = write_cocostuff(tmp_path)
    write_parts(tmp_path)
    data = cocostuff(tmp_path)
    group = by_text(data[0])
    assert set(group) == {"person", "sky"}  # building-other is ignored, 255 is unlabelled
    np.testing.assert_array_equal(group["sky"].load_mask(), (label == COCO_STUFF_CLASSES.index("sky")).astype(np.uint8))
    assert data.image_of(0)[:2] == paco_lvis(tmp_path).image_of(0)[:2] == ("coco2017", "train2017/000000000042")


@pytest.mark.parametrize("version", ["v2.0", "v1.2"])
def test_mapillary_reads_names_from_its_config_and_palette_labels(tmp_path, version):
    label = write_mapillary(tmp_path, version)
    data = mapillary(tmp_path, version)
    group = by_text(data[0])
    assert set(group) == {"lane marking - general", "unlabeled"}  # lower-cased readable names, none ignored
    np.testing.assert_array_equal(group["unlabeled"].load_mask(), (label == 2).astype(np.uint8))
    other = "v1.2" if version == "v2.0" else "v2.0"
    with pytest.raises(FileNotFoundError, match=f"config_{other}"):
        mapillary(tmp_path, other)


def test_part_sources_ask_per_annotation_in_both_published_wordings(tmp_path):
    truth = write_parts(tmp_path)
    parts = pascal_part(tmp_path)
    assert len(parts) == 1 and parts.image_of(0)[:2] == ("voc2010", "2008_000007")  # the image without parts is left out
    group = parts[0]
    assert [s.texts for s in group] == [["car wheel", "the wheel of the car"]] * 2 + [["person hand", "the hand of the person"]]
    assert len({s.target for s in group}) == 3  # the two wheels are two targets
    wheel = group[0].load_mask()
    expected = mask_utils.decode(mask_utils.frPyObjects([[2, 30, 12, 30, 12, 40, 2, 40]], HEIGHT, WIDTH))[:, :, 0]
    np.testing.assert_array_equal(wheel, expected)
    assert wheel[35, 7] == 1 and wheel[35, 25] == 0
    np.testing.assert_array_equal(group[2].load_mask(), truth["hand"])
    paco = paco_lvis(tmp_path)
    assert [s.texts for s in paco[0]] == [["bucket handle", "the handle of the bucket"], ["knife"]]


def test_training_draws_up_to_three_distinct_queries_and_both_part_wordings(tmp_path):
    write_ade20k(tmp_path)
    write_parts(tmp_path)
    unused = lambda *a: (_ for _ in ()).throw(AssertionError("draw needs no pixels"))  # noqa: E731
    ade = TrainingSet(build_groups(DatasetSpec(kind="ade20k", path=str(tmp_path))), unused, 4, unused, queries=3)
    first = ade.draw(0)
    assert len(first) == 3 and sorted(s.texts[0] for s, _ in first) == ["floor", "person", "wall"]
    assert [(s.target, t) for s, t in ade.draw(0)] == [(s.target, t) for s, t in first]  # seeded by (seed, epoch, index)
    orders = set()
    for epoch in range(6):
        ade.set_epoch(epoch)
        orders.add(tuple(text for _, text in ade.draw(0)))
    assert len(orders) > 1
    parts = TrainingSet(build_groups(DatasetSpec(kind="pascal_part", path=str(tmp_path))), unused, 4, unused, queries=1)
    wordings = Counter()
    for epoch in range(200):
        parts.set_epoch(epoch)
        (sample, text), = parts.draw(0)
        assert text in sample.texts
        wordings[text.startswith("the ")] += 1
    assert 60 < wordings[True] < 140  # "the wheel of the car" about half the time
