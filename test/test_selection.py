import numpy as np
import pytest

from llmseg_model.config import SelectionConfig
from llmseg_model.modeling.selection import select_proposals, validate_selection_config


def test_union_of_proposals_over_threshold_best_first():
    sel = select_proposals(np.array([0.1, 0.9, 0.3]), np.array([0.6, 0.2, 0.95]), SelectionConfig(iop_threshold=0.5))
    assert sel.indices.tolist() == [2, 0]
    assert sel.scores.tolist() == pytest.approx([0.95, 0.6])


def test_nothing_passes_gives_explicit_empty():
    sel = select_proposals(np.array([0.9, 0.1]), np.array([0.2, 0.4]), SelectionConfig())
    assert sel.indices.size == 0 and sel.scores.size == 0


def test_fallback_to_best_iou_when_enabled():
    cfg = SelectionConfig(iop_threshold=0.5, fallback_min_iop=0.3)
    assert select_proposals(np.array([0.9, 0.1]), np.array([0.35, 0.4]), cfg).indices.tolist() == [0]
    assert select_proposals(np.array([0.9, 0.1]), np.array([0.25, 0.4]), cfg).indices.size == 0


def test_max_instances_and_no_proposals():
    cfg = SelectionConfig(iop_threshold=0.0, max_instances=2)
    assert len(select_proposals(np.ones(5), np.linspace(0.1, 0.9, 5), cfg).indices) == 2
    assert select_proposals(np.zeros(0), np.zeros(0), SelectionConfig()).indices.size == 0


def test_bad_inputs_and_settings():
    with pytest.raises(ValueError):
        select_proposals(np.zeros(3), np.zeros(2), SelectionConfig())
    for name, value in (("iop_threshold", 1.0), ("iop_threshold", -0.1), ("max_instances", 0)):
        with pytest.raises(ValueError, match=name):  # the dataclass refuses it
            SelectionConfig(**{name: value})
        bad = SelectionConfig()
        setattr(bad, name, value)  # set afterwards, as a ROS parameter may
        with pytest.raises(ValueError):
            validate_selection_config(bad)
