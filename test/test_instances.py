"""Grouping selected proposals into object instances (llmseg_model.modeling.instances)."""

from __future__ import annotations

import numpy as np
import pytest

from llmseg_model.modeling.instances import InstanceConfig, instance_masks, merge_instances, same_object
from llmseg_model.modeling.proposals import Proposals


def box(y0, y1, x0, x1, shape=(60, 80)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def proposals_of(*masks: np.ndarray) -> tuple[Proposals, list[int]]:
    """Proposals built from masks, and where each given mask landed (from_masks sorts by area)."""
    proposals = Proposals.from_masks(np.stack(masks), 16)
    decoded = proposals.masks()
    position = [next(k for k, d in enumerate(decoded) if np.array_equal(d, m)) for m in masks]
    return proposals, position


# Two objects: a box on the left with a near-duplicate and a part inside it, a box on the right.
WHOLE = box(10, 30, 5, 25)
SHIFTED = box(11, 31, 6, 26)  # IoU with WHOLE 0.82, neither contains the other
PART = box(12, 20, 8, 16)  # inside WHOLE
OTHER = box(35, 55, 50, 70)  # disjoint


def test_duplicates_and_parts_join_and_disjoint_objects_stay_apart():
    proposals, at = proposals_of(WHOLE, SHIFTED, PART, OTHER)
    scores = np.array([0.9, 0.8, 0.95, 0.7], np.float32)
    instances = merge_instances(proposals, np.array(at), scores, InstanceConfig())
    assert len(instances) == 2
    left, right = instances  # best score first
    assert left.score == pytest.approx(0.95) and right.score == pytest.approx(0.7)
    # Raw proposal indices are kept, best score first within an instance.
    assert left.proposal_indices.tolist() == [at[2], at[0], at[1]]
    assert right.proposal_indices.tolist() == [at[3]]
    assert np.array_equal(left.mask(), WHOLE | SHIFTED | PART) and np.array_equal(right.mask(), OTHER)
    assert left.area == int((WHOLE | SHIFTED | PART).sum())
    assert right.box.tolist() == [50, 35, 20, 20]  # XYWH


def test_union_of_instances_is_exactly_the_union_of_the_selection():
    rng = np.random.default_rng(0)
    masks = [box(*sorted(rng.integers(0, 60, 2)), *sorted(rng.integers(0, 80, 2))) for _ in range(12)]
    masks = [m for m in masks if m.any()]
    proposals = Proposals.from_masks(np.stack(masks), 16)
    chosen = np.array([0, 2, 3, 5, 7, 8])
    instances = merge_instances(proposals, chosen, rng.random(len(chosen)), InstanceConfig())
    assert np.array_equal(instance_masks(instances, (60, 80)).any(0), proposals.masks(chosen).any(0))
    # Every selected proposal belongs to exactly one instance.
    assert sorted(i for inst in instances for i in inst.proposal_indices) == chosen.tolist()


def test_grouping_does_not_depend_on_the_order_of_the_selection():
    proposals, at = proposals_of(WHOLE, SHIFTED, PART, OTHER)
    scores = np.array([0.5, 0.5, 0.5, 0.5], np.float32)
    groups = []
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 3, 0, 1]):
        instances = merge_instances(proposals, np.array(at)[order], scores, InstanceConfig())
        groups.append(sorted(sorted(inst.proposal_indices.tolist()) for inst in instances))
    assert groups[0] == groups[1] == groups[2]


def test_thresholds_decide_what_joins():
    def count(*masks: np.ndarray, iou: float, containment: float) -> int:
        proposals, at = proposals_of(*masks)
        config = InstanceConfig(iou_threshold=iou, containment_threshold=containment)
        return len(merge_instances(proposals, np.array(at), np.ones(len(at)), config))

    # WHOLE / SHIFTED: IoU 361/439 = 0.82, each 361/400 = 0.90 inside the other.
    assert count(WHOLE, SHIFTED, iou=0.9, containment=1.0) == 2
    assert count(WHOLE, SHIFTED, iou=0.8, containment=1.0) == 1
    assert count(WHOLE, SHIFTED, iou=0.9, containment=0.9) == 1
    # PART lies wholly inside WHOLE (IoU only 0.16): containment joins it.
    assert count(WHOLE, PART, iou=1.0, containment=1.0) == 1
    # Half of half_out lies inside WHOLE (IoU 1/3, containment 0.5).
    half_out = box(20, 40, 5, 25)
    assert count(WHOLE, half_out, iou=0.5, containment=0.6) == 2
    assert count(WHOLE, half_out, iou=0.5, containment=0.5) == 1
    # The pairwise relation itself is symmetric with a true diagonal.
    proposals, _ = proposals_of(WHOLE, SHIFTED, PART, OTHER)
    joined = same_object(proposals.rles, InstanceConfig())
    assert np.array_equal(joined, joined.T) and joined.diagonal().all() and joined.sum() == 4 + 6


def test_empty_selection_and_bad_input():
    proposals, _ = proposals_of(WHOLE, OTHER)
    assert merge_instances(proposals, np.zeros(0, np.int64), np.zeros(0)) == []
    assert instance_masks([], (60, 80)).shape == (0, 60, 80)
    with pytest.raises(ValueError, match="one length"):
        merge_instances(proposals, np.array([0, 1]), np.array([0.5]))
    with pytest.raises(ValueError, match="out of range"):
        merge_instances(proposals, np.array([2]), np.array([0.5]))
    with pytest.raises(ValueError, match="repeat"):
        merge_instances(proposals, np.array([1, 1]), np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="containment_threshold"):
        InstanceConfig(containment_threshold=0.0)


def test_shipped_model_instances_count_objects_not_proposals():
    """The demo's scene: raw selections count every part and duplicate SAM proposed (24 proposals
    for 8 target objects); merged, each answer is within one of its number of targets."""
    from llmseg_model.config import preset_config
    from llmseg_model.data.procedural import ProceduralDataset
    from llmseg_model.modeling.model import LLMSeg

    model = LLMSeg.from_config(preset_config("tiny"))
    scene = ProceduralDataset("test", 1).scene(0)
    frame = model.prepare(scene.image)
    raw, merged, targets = [], [], []
    for instruction in scene.instructions:
        result = model.query(frame, instruction.text)
        assert np.array_equal(result.instance_masks.any(0), result.mask)
        painted = np.zeros(result.mask.shape, np.uint8)  # better objects own the overlaps
        for k in range(len(result.instances) - 1, -1, -1):
            painted[result.instance_masks[k]] = k + 1
        assert np.array_equal(result.labels, painted)
        assert result.label_areas.tolist() == np.bincount(painted.ravel(), minlength=len(result.instances) + 1)[1:].tolist()
        assert np.array_equal(result.mask, frame.proposals.masks(result.proposal_indices).any(0))
        assert sorted(i for inst in result.instances for i in inst.proposal_indices) == sorted(result.proposal_indices)
        raw.append(len(result.proposal_indices))
        merged.append(len(result.instances))
        targets.append(len(instruction.targets))
    assert sum(raw) > 2 * sum(targets)
    assert all(abs(m - t) <= 1 for m, t in zip(merged, targets)), (merged, targets)
