import numpy as np
import pytest
import torch

from llmseg_model.config import tiny_config
from llmseg_model.modeling.prompting import clean_instruction
from llmseg_model.modeling.vlm import SegVLM


@pytest.fixture(scope="module")
def vlm(untrained_tiny_config):
    torch.manual_seed(0)
    return SegVLM.from_pretrained(untrained_tiny_config.weights.llava_path, untrained_tiny_config.vlm)


def test_lora_wraps_only_the_language_model_attention(vlm):
    lora = [n for n, _ in vlm.llava.named_modules() if n.endswith("lora_A")]
    assert lora and all("language_model" in n and (".q_proj" in n or ".v_proj" in n) for n in lora)
    assert not any("vision_tower" in n for n in lora)
    vision = [p for n, p in vlm.llava.named_parameters() if "vision_tower" in n]
    assert vision and not any(p.requires_grad for p in vision)


def test_seg_token_is_a_single_token(vlm):
    ids = vlm.tokenizer("Sure, it is <SEG>.", add_special_tokens=False)["input_ids"]
    assert ids.count(vlm.seg_token_id) == 1


def test_training_pass_gives_ce_and_seg_embedding_with_gradients(vlm):
    image = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    feats = vlm.image_features(vlm.pixel_values(image)).repeat(2, 1, 1)
    ce, seg = vlm(feats, ["the red ball", "all the things I could roll across the floor"])
    assert seg.shape == (2, tiny_config().vlm.seg_embed_dim) and ce.item() > 0
    (ce + seg.sum()).backward()
    lora_grads = [p.grad for n, p in vlm.llava.named_parameters() if "lora_B" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in lora_grads)
    vlm.zero_grad()


def test_generation_always_yields_a_seg_embedding(vlm):
    image = np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    feats = vlm.image_features(vlm.pixel_values(image))
    text, seg = vlm.answer(feats, "the blue box")
    assert "<SEG>" in text and seg.shape == (1, tiny_config().vlm.seg_embed_dim)


def test_instruction_validation():
    cfg = tiny_config().vlm
    assert clean_instruction("  the   red\nball ", cfg) == "the red ball"
    for bad in ("", "   ", "x" * (cfg.max_instruction_chars + 1), "find <SEG>", "<image> here", None):
        with pytest.raises(ValueError):
            clean_instruction(bad, cfg)
