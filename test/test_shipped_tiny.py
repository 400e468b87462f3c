"""The shipped tiny preset (the embedded default) on held-out procedural scenes.

The issue's bar is gIoU >= 0.7 on a held-out split; the shipped model reaches 0.84 on 100 test
scenes (llmseg_model/weights/tiny/REPORT.md, with baselines). This holds the first 12 of those
scenes to a bar between the two (measured 0.85 there) and checks that the model beats random proposals from the
same SAM output by a wide margin.
"""

from __future__ import annotations

import numpy as np
import pytest

from llmseg_model.config import preset_config
from llmseg_model.data.procedural import ProceduralDataset
from llmseg_model.metrics import IoUAccumulator
from llmseg_model.modeling.model import LLMSeg

SCENES = 12
MIN_GIOU = 0.78  # measured 0.851 on these 12 scenes (0.838 on 100 test scenes, 0.857 on the first 40)


@pytest.fixture(scope="module")
def shipped():
    return LLMSeg.from_config(preset_config("tiny"))


def test_held_out_giou(shipped):
    test = ProceduralDataset("test", SCENES)
    trained, random = IoUAccumulator(), IoUAccumulator()
    rng = np.random.default_rng(0)
    for i in range(SCENES):
        scene = test.scene(i)
        frame = shipped.prepare(scene.image)
        for instruction in scene.instructions:
            gt = scene.target_mask(instruction.targets)
            result = shipped.query(frame, instruction.text)
            trained.add(result.mask, gt)
            pick = np.flatnonzero(rng.random(frame.proposals.count) < 0.5)
            guess = frame.proposals.masks(pick).any(0) if len(pick) else np.zeros(gt.shape, bool)
            random.add(guess, gt)
    assert trained.giou >= MIN_GIOU, f"held-out gIoU {trained.giou:.3f} (cIoU {trained.ciou:.3f})"
    assert trained.giou > random.giou + 0.25, f"{trained.giou:.3f} vs random {random.giou:.3f}"


def test_answers_with_seg_token_and_one_result_per_instruction(shipped):
    scene = ProceduralDataset("test", 1).scene(0)
    frame = shipped.prepare(scene.image)
    for instruction in scene.instructions:
        result = shipped.query(frame, instruction.text)
        assert "<SEG>" in result.answer
        assert result.mask.shape == scene.image.shape[:2]
