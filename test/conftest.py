"""Shared fixtures: an untrained but complete tiny model built from the real classes."""

from __future__ import annotations

import logging

import pytest
import torch

from llmseg_model.config import LLMSegConfig, tiny_config
from ros_helpers import ros_env  # noqa: F401  (the session's ROS environment, a fixture of every ROS test)

torch.set_num_threads(1)  # see scripts/run_tests.sh: oversubscribed OpenMP threads are 20x slower


@pytest.fixture(scope="session")
def untrained_tiny_config(tmp_path_factory) -> LLMSegConfig:
    """tiny_config() whose weight paths point at freshly written random base weights."""
    from llmseg_model.tiny.weights import write_base_weights

    logging.getLogger("transformers").setLevel(logging.ERROR)
    config = tiny_config()
    config.weights = write_base_weights(tmp_path_factory.mktemp("tiny_weights"), config=config)
    # Random SAM predicts low IoU; let everything through so there are proposals to work with.
    config.proposals.pred_iou_thresh = 0.0
    config.proposals.stability_score_thresh = 0.0
    config.proposals.points_per_side = 4
    return config


@pytest.fixture(scope="session")
def untrained_tiny_model(untrained_tiny_config):
    from llmseg_model.modeling.model import LLMSeg

    return LLMSeg.from_config(untrained_tiny_config, load_trained=False)


@pytest.fixture
def scene_renders(monkeypatch) -> list:
    """Records every procedural scene render (generate_scene call) made while a test runs."""
    import llmseg_model.data.procedural as procedural

    calls: list = []
    real = procedural.generate_scene
    monkeypatch.setattr(procedural, "generate_scene", lambda *a: calls.append(a) or real(*a))
    return calls
