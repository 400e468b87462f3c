"""Every way of answering gives the plain path's <SEG> state, scores and masks.

Plain path: the whole prompt run from scratch for one instruction, the whole fusion per
instruction. Faster paths: the frame's cached prompt prefix and proposal tokens, several
instructions in one padded forward (`query_batch`), the answer given or verified instead of
generated. They must agree within 1e-5 on the shipped tiny preset.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from llmseg_model.config import preset_config
from llmseg_model.data.procedural import ProceduralDataset
from llmseg_model.modeling.model import LLMSeg


@pytest.fixture(scope="module")
def shipped():
    return LLMSeg.from_config(preset_config("tiny"))


@pytest.fixture(scope="module")
def scene():
    return ProceduralDataset("val", 2).scene(1)


def answers(model, frame, texts, mode, cached):
    vlm = model.vlm
    old = vlm.config.answer_mode
    vlm.config.answer_mode = mode
    try:
        return vlm.answer_batch(frame.image_features, texts, prefix=frame.prefix if cached else None)
    finally:
        vlm.config.answer_mode = old


def test_cached_batched_and_verified_answers_equal_free_generation(shipped, scene):
    frame = shipped.prepare(scene.image)
    texts = [instruction.text for instruction in scene.instructions]
    plain = [answers(shipped, frame, [text], "generate", cached=False)[0] for text in texts]
    for mode, cached in [("generate", True), ("verified", True), ("verified", False), ("given", True)]:
        batch = answers(shipped, frame, texts, mode, cached)
        for (text_a, seg_a), (text_b, seg_b) in zip(plain, batch):
            assert torch.allclose(seg_a, seg_b, atol=1e-5), (mode, cached, (seg_a - seg_b).abs().max())
            if mode != "given":  # "given" reports the template, the others what decoding says
                assert text_a == text_b, (mode, cached)


def test_query_batch_equals_one_query_at_a_time_on_an_uncached_frame(shipped, scene):
    texts = [instruction.text for instruction in scene.instructions]
    frame = shipped.prepare(scene.image)
    assert frame.proposal_tokens is not None and frame.proposal_tokens.shape[1] == frame.proposals.count
    batch = shipped.query_batch(frame, texts)
    plain_frame = replace(shipped.prepare(scene.image, cache_prompt=False), proposal_tokens=None)
    assert plain_frame.prefix is None
    for text, result in zip(texts, batch):
        alone = shipped.query(plain_frame, text)
        assert np.allclose(alone.iou_scores, result.iou_scores, atol=1e-5)
        assert np.allclose(alone.iop_scores, result.iop_scores, atol=1e-5)
        assert np.array_equal(alone.proposal_indices, result.proposal_indices)
        assert np.array_equal(alone.mask, result.mask) and alone.answer == result.answer
        assert {"llm", "fusion", "selection", "prompt_prefix"} <= set(result.timings)


def test_an_answer_unlike_the_template_falls_back_to_generation(shipped, scene):
    """With an answer the model would not give, "verified" finds the first differing token and
    generates from there: the result is free generation's."""
    frame = shipped.prepare(scene.image)
    texts = [instruction.text for instruction in scene.instructions[:2]]
    generated = answers(shipped, frame, texts, "generate", cached=True)
    old = shipped.vlm.config.answer
    shipped.vlm.config.answer = "It is <SEG>."  # the tiny model says "sure , ..."
    try:
        verified = answers(shipped, frame, texts, "verified", cached=True)
    finally:
        shipped.vlm.config.answer = old
    for (text_a, seg_a), (text_b, seg_b) in zip(generated, verified):
        assert text_a == text_b and text_a.startswith("sure")
        assert torch.allclose(seg_a, seg_b, atol=1e-5)


def test_a_batch_where_only_some_answers_match_decoding_equals_free_generation(shipped, scene, monkeypatch):
    """The template restates the first instruction only: that row is read from the batch's forward
    and the others generate from where they differ; every row is free generation's result."""
    frame = shipped.prepare(scene.image)
    texts = [instruction.text for instruction in scene.instructions]
    assert len(texts) >= 2
    generated = answers(shipped, frame, texts, "generate", cached=True)
    fallbacks = []
    generate = type(shipped.vlm)._generate
    monkeypatch.setattr(type(shipped.vlm), "_generate", lambda self, prompt, *a, **k: fallbacks.append(prompt) or generate(self, prompt, *a, **k))
    monkeypatch.setattr(shipped.vlm.config, "answer", "Sure, " + shipped.vlm.prompts.clean(texts[0]) + " It is <SEG>.")
    verified = answers(shipped, frame, texts, "verified", cached=True)
    assert len(fallbacks) == len(texts) - 1
    for (text_a, seg_a), (text_b, seg_b) in zip(generated, verified):
        assert text_a == text_b
        assert torch.allclose(seg_a, seg_b, atol=1e-5)


def test_a_prompt_that_does_not_start_with_the_prefix_takes_the_uncached_path(shipped, scene):
    frame = shipped.prepare(scene.image)
    text = scene.instructions[0].text
    expected = answers(shipped, frame, [text], "verified", cached=False)[0]
    frame.prefix.ids[0] = frame.prefix.ids[0] + 1  # a prefix the prompt does not start with
    got = answers(shipped, frame, [text], "verified", cached=True)[0]
    assert got[0] == expected[0] and torch.allclose(got[1], expected[1], atol=1e-6)
