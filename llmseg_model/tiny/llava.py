"""The tiny preset's LLaVA: a small CLIP vision tower, a small Llama, and an offline word-level
tokenizer trained on the procedural instructions — the same transformers classes as llava-hf
checkpoints, saved in the same folder layout so both presets load through one code path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from llmseg_model.config import VlmConfig

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]


@dataclass
class TinyLlavaConfig:
    """Sizes of the tiny LLaVA."""

    image_size: int = 64
    patch_size: int = 16
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 256
    max_positions: int = 512
    vocab_size: int = 0  # rows of the embeddings and LM head; 0: the tokenizer's size


def special_tokens(vlm: VlmConfig) -> list[str]:
    """The tokenizer's special tokens: padding, unknown, BOS / EOS, the image placeholder, the
    <SEG> token and any other added token the conversation names (e.g. <im_start>)."""
    tokens = [*SPECIAL_TOKENS, vlm.seg_token]
    tokens += [t for t in re.findall(r"<[a-z_]+>", vlm.prompt_template) if t not in tokens]
    return tokens


def train_tokenizer(texts: Iterable[str], vlm: VlmConfig) -> PreTrainedTokenizerFast:
    """A lower-cased word-level tokenizer over every text the procedural generator can emit,
    plus the prompt template and answer; words it never saw map to <unk>."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    specials = special_tokens(vlm)
    trainer = trainers.WordLevelTrainer(special_tokens=specials, min_frequency=1)
    templates = (
        vlm.prompt_template.format(system=vlm.system_prompt, question=""),
        vlm.sentence_question, vlm.phrase_question, vlm.answer,
        *vlm.train_sentence_questions, *vlm.train_phrase_questions, *vlm.train_answers,
    )
    corpus = list(texts) + [t.replace("{text}", "") for t in templates]
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=specials[4:],
    )
    fast.add_bos_token = True
    fast._tokenizer.post_processor = None
    return fast


def build_tiny_llava(tokenizer: PreTrainedTokenizerFast, sizes: TinyLlavaConfig | None = None) -> tuple[LlavaForConditionalGeneration, CLIPImageProcessor]:
    """A randomly initialised small LlavaForConditionalGeneration and its image processor."""
    sizes = sizes or TinyLlavaConfig()
    vision = CLIPVisionConfig(
        hidden_size=sizes.vision_hidden,
        intermediate_size=sizes.vision_hidden * 4,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.vision_heads,
        image_size=sizes.image_size,
        patch_size=sizes.patch_size,
        projection_dim=sizes.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=max(len(tokenizer), sizes.vocab_size),
        hidden_size=sizes.text_hidden,
        intermediate_size=sizes.text_intermediate,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.text_heads,
        num_key_value_heads=sizes.text_heads,
        max_position_embeddings=sizes.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    processor = CLIPImageProcessor(
        size={"shortest_edge": sizes.image_size},
        crop_size={"height": sizes.image_size, "width": sizes.image_size},
    )
    return model, processor


def save_tiny_llava(folder: str | Path, model: LlavaForConditionalGeneration, tokenizer, processor) -> None:
    """Write the llava-hf folder layout: config + safetensors weights + tokenizer + image processor."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
