"""Instructions attending to the frame's one copy of the prompt prefix (vlm.prefix_attention
"shared", and "auto" on the CPU) answer what transformers' cache, which copies the prefix into
every row, answers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import LlavaForConditionalGeneration

from llmseg_model.config import tiny_config
from llmseg_model.data.procedural import vocabulary_texts
from llmseg_model.modeling.prefix_attention import suffix_mask
from llmseg_model.modeling.vlm import SegVLM
from llmseg_model.tiny.llava import TinyLlavaConfig, build_tiny_llava, train_tokenizer

CPU = torch.device("cpu")
TEXTS = ["the red ball", "all the things I could roll across the floor", "the box left of the largest cup"]


def twin_vlms(kv_heads: int, attention: str = "sdpa", modes: tuple[str, str] = ("shared", "copy")) -> tuple[SegVLM, SegVLM]:
    """Two SegVLMs on equal random weights (LoRA included), in two `prefix_attention` modes."""
    config = tiny_config().vlm
    tokenizer = train_tokenizer(vocabulary_texts(), config)
    llava, processor = build_tiny_llava(tokenizer, TinyLlavaConfig(text_heads=4))
    llava.config.text_config.num_key_value_heads = kv_heads
    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(llava.config)
    llava.set_attn_implementation(attention)
    twins = []
    for mode in modes:
        config = copy.deepcopy(config)
        config.prefix_attention = mode
        twins.append(SegVLM(copy.deepcopy(llava), tokenizer, processor, config))
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA starts as a no-op: give it weights, the same in both
        for name, param in twins[0].named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    twins[1].load_state_dict(twins[0].state_dict())
    return twins[0].eval(), twins[1].eval()


def image_features(vlm: SegVLM) -> torch.Tensor:
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    return vlm.image_features(vlm.pixel_values(image)).detach()


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["multi_head", "grouped_query"])
def test_shared_prefix_answers_equal_the_copied_cache(kv_heads):
    shared, copied = twin_vlms(kv_heads)
    assert shared.shares_prefix(CPU) and not copied.shares_prefix(CPU)
    features = image_features(shared)
    prefixes = [vlm.encode_prefix(features) for vlm in (shared, copied)]
    for mode in ("given", "verified"):
        shared.config.answer_mode = copied.config.answer_mode = mode
        for texts in (TEXTS, TEXTS[1:2]):  # rows of different lengths, and one row
            got = shared.answer_batch(features, texts, prefix=prefixes[0])
            want = copied.answer_batch(features, texts, prefix=prefixes[1])
            for (text_a, seg_a), (text_b, seg_b) in zip(got, want):
                assert text_a == text_b
                assert torch.allclose(seg_a, seg_b, atol=1e-5), (mode, (seg_a - seg_b).abs().max())


def test_shared_prefix_states_equal_the_copied_cache_at_every_row_position():
    shared, copied = twin_vlms(kv_heads=2)
    features = image_features(shared)
    prefix = shared.encode_prefix(features)
    rows = [shared.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    got, _ = shared.forward_rows(rows, features, prefix)
    want, _ = copied.forward_rows(rows, features, prefix)
    for b, row in enumerate(rows):
        assert torch.allclose(got[b, : len(row)], want[b, : len(row)], atol=1e-5)


def test_calls_without_a_prefix_run_the_wrapped_attention_unchanged():
    shared, copied = twin_vlms(kv_heads=2)
    assert shared.language_model.config._attn_implementation == "shared_prefix|sdpa"
    assert copied.language_model.config._attn_implementation == "sdpa"
    features = image_features(shared)
    for a, b in zip(shared.encode_prefix(features).layers, copied.encode_prefix(features).layers):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    shared.train(), copied.train()
    torch.manual_seed(2)
    loss_a, seg_a = shared(features.repeat(2, 1, 1), TEXTS[:2], seeds=[0, 1])
    torch.manual_seed(2)
    loss_b, seg_b = copied(features.repeat(2, 1, 1), TEXTS[:2], seeds=[0, 1])
    assert torch.equal(loss_a, loss_b) and torch.equal(seg_a, seg_b)
    shared.eval(), copied.eval()
    assert shared.answer(features, TEXTS[0])[0] == copied.answer(features, TEXTS[0])[0]  # generation


def test_an_attention_it_cannot_wrap_keeps_the_copied_prefix():
    shared, copied = twin_vlms(kv_heads=4, attention="eager")
    assert not shared.shares_prefix(CPU) and shared.language_model.config._attn_implementation == "eager"
    features = image_features(shared)
    got = shared.answer_batch(features, TEXTS, prefix=shared.encode_prefix(features))
    want = copied.answer_batch(features, TEXTS, prefix=copied.encode_prefix(features))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(got, want))


def test_suffix_mask_is_causal_within_a_row_and_never_sees_padding():
    mask = suffix_mask([3, 1], "cpu")
    assert mask.shape == (2, 1, 3, 3)
    assert mask[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert mask[1, 0].tolist() == [[True, False, False]] * 3


def test_auto_shares_the_prefix_on_the_cpu_and_copies_it_on_a_gpu():
    auto, copied = twin_vlms(kv_heads=4, modes=("auto", "copy"))
    shared, _ = twin_vlms(kv_heads=4, modes=("shared", "copy"))
    gpu = torch.device("cuda", 0)  # only the rule is read: no GPU needed
    assert auto.shares_prefix(CPU) and not auto.shares_prefix(gpu)
    assert shared.shares_prefix(CPU) and shared.shares_prefix(gpu)
    assert not copied.shares_prefix(CPU) and not copied.shares_prefix(gpu)
    assert copied.language_model.config._attn_implementation == "sdpa"
    auto.config.prefix_attention = "copy"  # the setting is read at each call, as answer_mode is
    assert not auto.shares_prefix(CPU)
