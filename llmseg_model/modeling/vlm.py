"""LLaVA with a `<SEG>` token and LoRA: reads the image and the instruction, answers with text that
contains `<SEG>`, and turns the hidden state at `<SEG>` into the fusion space.

The vision tower runs once per frame (`image_features`); every query reuses its output, which is
what lets a robot ask several questions about one frame cheaply.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

from llmseg_model.config import VlmConfig

logger = logging.getLogger(__name__)

IGNORE_LABEL = -100


class SegVLM(nn.Module):
    """LLaVA + `<SEG>` + LoRA (peft) + a Linear-ReLU-Linear projection of the `<SEG>` hidden state."""

    def __init__(self, llava: LlavaForConditionalGeneration, tokenizer, image_processor, config: VlmConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        if config.seg_token not in tokenizer.get_vocab():
            tokenizer.add_tokens([config.seg_token], special_tokens=True)
        self.seg_token_id = tokenizer.convert_tokens_to_ids(config.seg_token)
        if llava.get_input_embeddings().num_embeddings < len(tokenizer):
            llava.resize_token_embeddings(len(tokenizer))
        self.image_token_id = llava.config.image_token_id
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_target_regex,
            bias="none",
        )
        self.llava = get_peft_model(llava, lora)
        for name, param in self.llava.named_parameters():
            if any(part in name for part in config.trainable_modules):
                param.requires_grad_(True)
        hidden = llava.config.text_config.hidden_size
        # Batch norm (optional) removes what every <SEG> state shares, so a small LLM whose states
        # start out nearly identical across instructions still hands the fusion a usable signal.
        norm = nn.BatchNorm1d(hidden) if config.seg_batch_norm else nn.Identity()
        self.seg_proj = nn.Sequential(
            nn.Linear(hidden, hidden), norm, nn.ReLU(inplace=True), nn.Linear(hidden, config.seg_embed_dim)
        )

    @classmethod
    def from_pretrained(cls, path: str | Path, config: VlmConfig, dtype: torch.dtype = torch.float32) -> "SegVLM":
        """Load a llava-hf style folder (model, tokenizer, image processor) from local disk only."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no LLaVA checkpoint (config.json) in {path}")
        llava = LlavaForConditionalGeneration.from_pretrained(str(path), local_files_only=True, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        image_processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
        return cls(llava, tokenizer, image_processor, config)

    @property
    def base(self) -> LlavaForConditionalGeneration:
        """The LLaVA model inside the peft wrapper."""
        return self.llava.get_base_model()

    def pixel_values(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> LLaVA pixel values (1, 3, S, S)."""
        return self.image_processor(images=[image], return_tensors="pt")["pixel_values"]

    @torch.no_grad()
    def vision_states(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen vision tower: (B, 3, S, S) -> the selected layer's patch states (B, N, C)."""
        cfg = self.base.config
        out = self.base.model.vision_tower(pixel_values.to(self.base.dtype), output_hidden_states=True, return_dict=True)
        states = out.hidden_states[cfg.vision_feature_layer]
        if cfg.vision_feature_select_strategy == "default":
            states = states[:, 1:]  # drop CLS, as LLaVA does
        return states

    def image_features(self, pixel_values: torch.Tensor | None = None, vision_states: torch.Tensor | None = None) -> torch.Tensor:
        """Vision tower + trainable projector -> (B, N, hidden). Frozen states may be passed in
        directly (training caches them per image)."""
        if vision_states is None:
            vision_states = self.vision_states(pixel_values)
        return self.base.model.multi_modal_projector(vision_states)

    def prompt_ids(self, instruction: str, num_image_tokens: int) -> list[int]:
        """Token ids of the chat prompt with the single <image> placeholder expanded to N tokens."""
        prompt = self.config.prompt_template.format(instruction=clean_instruction(instruction, self.config))
        ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        at = ids.index(self.image_token_id)
        return ids[:at] + [self.image_token_id] * num_image_tokens + ids[at + 1 :]

    def answer_ids(self, instruction: str) -> list[int]:
        """Token ids of the training answer; `{instruction}` in answer_text restates the request."""
        text = self.config.answer_text.format(instruction=clean_instruction(instruction, self.config))
        ids = self.tokenizer(" " + text, add_special_tokens=False)["input_ids"]
        return ids + [self.tokenizer.eos_token_id]

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the image placeholders replaced by the frame's image features."""
        embeds = self.llava.get_input_embeddings()(input_ids)
        mask = (input_ids == self.image_token_id).unsqueeze(-1).expand_as(embeds)
        return embeds.masked_scatter(mask, image_features.to(embeds.dtype))

    def forward(self, image_features: torch.Tensor, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced training pass: returns (answer CE loss, projected <SEG> embeddings (B, D))."""
        num_image_tokens = image_features.shape[1]
        rows, labels = [], []
        for text in instructions:
            prompt = self.prompt_ids(text, num_image_tokens)
            answer = self.answer_ids(text)
            rows.append(prompt + answer)
            labels.append([IGNORE_LABEL] * len(prompt) + answer)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        label_ids = torch.tensor([l + [IGNORE_LABEL] * (width - len(l)) for l in labels])
        attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        device = image_features.device
        input_ids, label_ids, attention = input_ids.to(device), label_ids.to(device), attention.to(device)
        out = self.llava(
            inputs_embeds=self.embed(input_ids, image_features),
            attention_mask=attention,
            labels=label_ids,
            output_hidden_states=True,
        )
        hidden = out.hidden_states[-1]
        seg_pos = (input_ids == self.seg_token_id).int().argmax(dim=1)  # first <SEG> of each row
        seg_hidden = hidden[torch.arange(len(rows), device=device), seg_pos]
        return out.loss, self.seg_proj(seg_hidden.float())

    @torch.inference_mode()
    def answer(self, image_features: torch.Tensor, instruction: str) -> tuple[str, torch.Tensor]:
        """Generate the answer for one frame (image_features (1, N, hidden)).

        Returns the answer text and the projected <SEG> embedding (1, D). If the model does not emit
        <SEG>, it is appended so the fusion still gets an embedding; the answer text shows it.
        """
        prompt = torch.tensor([self.prompt_ids(instruction, image_features.shape[1])], device=image_features.device)
        embeds = self.embed(prompt, image_features)
        generated = self.llava.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=self.config.max_new_tokens,
            do_sample=False,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new_ids = generated[0].tolist()  # with inputs_embeds, generate returns only the new tokens
        if self.tokenizer.eos_token_id in new_ids:
            new_ids = new_ids[: new_ids.index(self.tokenizer.eos_token_id)]
        if self.seg_token_id not in new_ids:
            logger.warning("answer had no %s token; appending it", self.config.seg_token)
            new_ids = new_ids + [self.seg_token_id]
        seg_at = new_ids.index(self.seg_token_id)
        full = torch.cat([prompt, torch.tensor([new_ids[: seg_at + 1]], device=prompt.device)], dim=1)
        out = self.llava(
            inputs_embeds=self.embed(full, image_features),
            attention_mask=torch.ones_like(full),
            output_hidden_states=True,
        )
        seg_hidden = out.hidden_states[-1][:, -1]
        text = self.tokenizer.decode(new_ids, skip_special_tokens=False).strip()
        was_training = self.seg_proj.training
        self.seg_proj.eval()  # inference: batch norm uses its running statistics, even for one query
        try:
            return text, self.seg_proj(seg_hidden.float())
        finally:
            self.seg_proj.train(was_training)


def clean_instruction(text: str, config: VlmConfig) -> str:
    """Validate and normalise a user instruction; raise ValueError with the reason if unusable."""
    if not isinstance(text, str):
        raise ValueError(f"instruction must be a string, got {type(text).__name__}")
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        raise ValueError("instruction is empty")
    if len(text) > config.max_instruction_chars:
        raise ValueError(f"instruction is {len(text)} characters; the limit is {config.max_instruction_chars}")
    for token in (config.seg_token, "<image>"):
        if token in text:
            raise ValueError(f"instruction must not contain the special token {token}")
    return text
