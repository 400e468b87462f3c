"""Data set specs and ratio mixing, on real procedural data sets."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from llmseg_model.data.mixing import DatasetSpec, MixedDataset, Subset, allocate, build_dataset, build_mixture
from llmseg_model.data.procedural import ProceduralConfig, ProceduralDataset

SMALL = ProceduralConfig(height=64, width=64, instructions_per_scene=2)


def test_allocate_is_exact():
    assert allocate(10, [1, 1]) == [5, 5]
    assert allocate(10, [3, 1]) == [8, 2]  # 7.5 / 2.5: the tie goes to the first
    assert allocate(7, [1, 0, 2]) == [2, 0, 5]
    assert sum(allocate(101, [0.3, 0.3, 0.4])) == 101
    for bad in ([], [-1, 2], [0, 0], [float("nan")]):
        with pytest.raises(ValueError):
            allocate(5, bad)


def test_mixture_follows_ratios_and_walks_each_set():
    a = ProceduralDataset("train", 5, SMALL)  # 10 samples
    b = ProceduralDataset("val", 2, SMALL)  # 4 samples
    mixed = MixedDataset([a, b], [3, 1], length=20, seed=1)
    plan = [mixed.locate(i) for i in range(len(mixed))]
    counts = Counter(k for k, _ in plan)
    assert counts == {0: 15, 1: 5}
    # Each data set is walked through a whole permutation before any sample repeats.
    a_counts = Counter(i for k, i in plan if k == 0)
    assert len(a_counts) == 10 and sorted(a_counts.values()) == [1] * 5 + [2] * 5
    b_counts = Counter(i for k, i in plan if k == 1)
    assert len(b_counts) == 4 and sorted(b_counts.values()) == [1, 1, 1, 2]
    sample = mixed[0]
    assert sample.source == "procedural" and sample.texts
    # Deterministic per (seed, epoch); a new epoch draws a new order.
    again = MixedDataset([a, b], [3, 1], length=20, seed=1)
    assert [again.locate(i) for i in range(20)] == plan
    mixed.set_epoch(1)
    assert [mixed.locate(i) for i in range(20)] != plan
    assert Counter(k for k, _ in (mixed.locate(i) for i in range(20))) == {0: 15, 1: 5}


def test_mixture_default_length_and_zero_ratio():
    a = ProceduralDataset("train", 3, SMALL)
    b = ProceduralDataset("val", 1, SMALL)
    assert len(MixedDataset([a, b])) == 8
    only_a = MixedDataset([a, b], [1, 0])
    assert len(only_a) == 6 and {only_a.locate(i)[0] for i in range(6)} == {0}
    assert sorted(only_a.locate(i)[1] for i in range(6)) == list(range(6))


def test_mixture_errors():
    a = ProceduralDataset("train", 1, SMALL)
    empty = ProceduralDataset("val", 0, SMALL)
    with pytest.raises(ValueError, match="empty but has ratio"):
        MixedDataset([a, empty], [1, 1])
    with pytest.raises(ValueError, match="2 ratios"):
        MixedDataset([a], [1, 1])
    with pytest.raises(ValueError, match="at least one"):
        MixedDataset([])
    with pytest.raises(IndexError):
        MixedDataset([a])[99]


def test_spec_parsing():
    spec = DatasetSpec.parse("reasonseg:/data/ReasonSeg/val,query_type=long,limit=5")
    assert (spec.kind, spec.path, spec.query_type, spec.limit) == ("reasonseg", "/data/ReasonSeg/val", "long", 5)
    spec = DatasetSpec.parse("llmseg40k:/d/val.json,image_root=/img,image_dir.coco=coco/train2017,ratio=0.5")
    assert spec.image_root == "/img" and spec.image_dirs == {"coco": "coco/train2017"} and spec.ratio == 0.5
    spec = DatasetSpec.parse("procedural:test,size=3,height=64,width=64,instructions_per_scene=2")
    assert (spec.split, spec.size, spec.procedural) == ("test", 3, {"height": 64, "width": 64, "instructions_per_scene": 2})
    assert spec.name == "procedural/test"
    assert DatasetSpec.from_dict({"kind": "procedural", "size": 2}).split == "train"
    for bad, message in [
        ("reasonseg", "kind:target"),
        ("imagenet:/x", "unknown data set kind"),
        ("procedural:test", "size > 0"),
        ("procedural:test,size=x", "integer"),
        ("reasonseg:/x,colour=red", "unknown option"),
        ("reasonseg:/x,flag", "key=value"),
    ]:
        with pytest.raises(ValueError, match=message):
            DatasetSpec.parse(bad)
    with pytest.raises(ValueError, match="unknown key"):
        DatasetSpec.from_dict({"kind": "procedural", "size": 2, "shuffle": True})


def test_build_dataset_and_mixture():
    spec = DatasetSpec.parse("procedural:val,size=2,height=64,width=64,instructions_per_scene=2,seed=3")
    data = build_dataset(spec)
    assert isinstance(data, ProceduralDataset) and len(data) == 4
    assert data.config.seed == 3
    reference = ProceduralDataset("val", 2, ProceduralConfig(height=64, width=64, instructions_per_scene=2, seed=3))
    np.testing.assert_array_equal(data[1].load_mask(), reference[1].load_mask())
    limited = build_dataset(DatasetSpec(kind="procedural", split="val", size=2, limit=3, procedural={"height": 64, "width": 64}))
    assert isinstance(limited, Subset) and len(limited) == 3 and limited[-1].image_id == limited[2].image_id
    with pytest.raises(ValueError, match="procedural data set"):
        build_dataset(DatasetSpec(kind="procedural", size=1, procedural={"colour": "red"}))
    mixed = build_mixture(
        [spec, DatasetSpec(kind="procedural", split="train", size=1, ratio=3, procedural={"height": 64, "width": 64})],
        length=8,
    )
    assert Counter(mixed.locate(i)[0] for i in range(8)) == {0: 2, 1: 6}
