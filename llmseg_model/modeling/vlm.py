"""LLaVA with a `<SEG>` token and LoRA: reads the image and the instruction, answers with text that
contains `<SEG>`, and turns one last-layer hidden state into the fusion space.

The vision tower runs once per frame (`image_features`); every query reuses its output, which is
what lets a robot ask several questions about one frame cheaply. Which hidden state becomes the
`<SEG>` embedding (`VlmConfig.seg_state`) and whether the answer is generated or given
(`VlmConfig.answer_mode`) are settings: the published model reads the state that predicts
`[SEG]` and gives the answer "[SEG]." at evaluation, so an instruction costs one forward pass.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

from llmseg_model.config import ANSWER_MODES, SEG_STATES, VlmConfig
from llmseg_model.modeling.prompting import PromptBuilder

logger = logging.getLogger(__name__)

IGNORE_LABEL = -100


class SegVLM(nn.Module):
    """LLaVA + `<SEG>` + LoRA (peft) + a Linear-ReLU-Linear projection of the `<SEG>` state."""

    def __init__(self, llava: LlavaForConditionalGeneration, tokenizer, image_processor, config: VlmConfig) -> None:
        super().__init__()
        if config.seg_state not in SEG_STATES:
            raise ValueError(f"vlm.seg_state must be one of {SEG_STATES}, got {config.seg_state!r}")
        if config.answer_mode not in ANSWER_MODES:
            raise ValueError(f"vlm.answer_mode must be one of {ANSWER_MODES}, got {config.answer_mode!r}")
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
        self.prompts = PromptBuilder(tokenizer, config, self.image_token_id)
        # Draws the training question and answer templates (reseed for reproducible runs).
        self.rng = random.Random(0)
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

    # ------------------------------------------------------------------ image side
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
        """Vision tower + projector -> (B, N, hidden). Frozen states may be passed in directly
        (training caches them per image)."""
        if vision_states is None:
            vision_states = self.vision_states(pixel_values)
        return self.base.model.multi_modal_projector(vision_states)

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the image placeholders replaced by the frame's image features."""
        embeds = self.llava.get_input_embeddings()(input_ids)
        mask = (input_ids == self.image_token_id).unsqueeze(-1).expand_as(embeds)
        return embeds.masked_scatter(mask, image_features.to(embeds.dtype))

    # ------------------------------------------------------------------ the <SEG> state
    def seg_offset(self) -> int:
        """Position of the <SEG> state relative to the <SEG> token (-1: the state predicting it)."""
        return -1 if self.config.seg_state == "before_seg" else 0

    def project(self, seg_hidden: torch.Tensor, inference: bool = True) -> torch.Tensor:
        """The projection of <SEG> states (B, hidden) into the fusion space (B, D), in float32.

        At inference batch norm uses its running statistics, even for one query."""
        if not inference:
            return self.seg_proj(seg_hidden.float())
        was_training = self.seg_proj.training
        self.seg_proj.eval()
        try:
            return self.seg_proj(seg_hidden.float())
        finally:
            self.seg_proj.train(was_training)

    def forward(
        self, image_features: torch.Tensor, instructions: list[str], phrases: list[bool] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced training pass with the training question / answer templates.

        Returns (answer CE loss, projected <SEG> embeddings (B, D))."""
        phrases = phrases if phrases is not None else [False] * len(instructions)
        num_image_tokens = image_features.shape[1]
        rows, labels, seg_at = [], [], []
        for text, phrase in zip(instructions, phrases):
            prompt = self.prompts.prompt_ids(self.prompts.question(text, phrase, self.rng), num_image_tokens)
            answer = self.prompts.answer_ids(self.prompts.answer(text, self.rng))
            if self.seg_token_id not in answer:
                raise ValueError(f"training answer has no {self.config.seg_token}: {self.tokenizer.decode(answer)!r}")
            rows.append(prompt + answer)
            labels.append([IGNORE_LABEL] * len(prompt) + answer)
            seg_at.append(len(prompt) + answer.index(self.seg_token_id) + self.seg_offset())
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        device = image_features.device
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
        label_ids = torch.tensor([lab + [IGNORE_LABEL] * (width - len(lab)) for lab in labels], device=device)
        attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        out = self.llava(
            inputs_embeds=self.embed(input_ids, image_features),
            attention_mask=attention,
            labels=label_ids,
            output_hidden_states=True,
        )
        seg_hidden = out.hidden_states[-1][torch.arange(len(rows), device=device), torch.tensor(seg_at, device=device)]
        return out.loss, self.project(seg_hidden, inference=False)

    # ------------------------------------------------------------------ inference
    def _last_state(self, ids: list[int], image_features: torch.Tensor) -> torch.Tensor:
        """Last-layer hidden state at the last position of one teacher-forced sequence (1, hidden)."""
        input_ids = torch.tensor([ids], device=image_features.device)
        out = self.llava(
            inputs_embeds=self.embed(input_ids, image_features),
            attention_mask=torch.ones_like(input_ids),
            output_hidden_states=True,
        )
        return out.hidden_states[-1][:, -1]

    def _given(self, instruction: str) -> tuple[str, list[int], int]:
        """The preset's answer for an instruction: (text, its ids without EOS, index of <SEG>)."""
        text = self.prompts.answer(instruction)
        ids = self.prompts.answer_ids(text)[:-1]
        if self.seg_token_id not in ids:
            raise ValueError(f"vlm.answer must contain {self.config.seg_token}, got {self.config.answer!r}")
        return text, ids, ids.index(self.seg_token_id)

    @torch.inference_mode()
    def answer(self, image_features: torch.Tensor, instruction: str, phrase: bool = False) -> tuple[str, torch.Tensor]:
        """Answer one instruction on one frame (image_features (1, N, hidden)).

        Returns the answer text and the projected <SEG> embedding (1, D). In "generate" mode, if
        the model does not emit <SEG> it is appended so the fusion still gets an embedding; the
        answer text shows it.
        """
        prompt = self.prompts.prompt_ids(self.prompts.question(instruction, phrase), image_features.shape[1])
        if self.config.answer_mode == "given":
            text, ids, seg = self._given(instruction)
            state = self._last_state(prompt + ids[: seg + 1 + self.seg_offset()], image_features)
            return text, self.project(state)
        return self._generate(prompt, image_features)

    def _generate(self, prompt: list[int], image_features: torch.Tensor) -> tuple[str, torch.Tensor]:
        """Greedy decoding; the <SEG> state comes from the generation pass itself where it can."""
        input_ids = torch.tensor([prompt], device=image_features.device)
        out = self.llava.generate(
            inputs_embeds=self.embed(input_ids, image_features),
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=self.config.max_new_tokens,
            do_sample=False,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            output_hidden_states=True,
            return_dict_in_generate=True,
        )
        new_ids = out.sequences[0].tolist()  # with inputs_embeds, generate returns only the new tokens
        if self.tokenizer.eos_token_id in new_ids:
            new_ids = new_ids[: new_ids.index(self.tokenizer.eos_token_id)]
        if self.seg_token_id not in new_ids:
            logger.warning("answer had no %s token; appending it", self.config.seg_token)
            new_ids = new_ids + [self.seg_token_id]
        seg = new_ids.index(self.seg_token_id)
        # hidden_states[s] holds the states of the tokens fed at step s: the prompt at step 0,
        # generated token s-1 after that; the state "at" generated token k is step k+1's.
        step = seg + 1 + self.seg_offset()
        if step < len(out.hidden_states) and out.sequences.shape[1] > seg and out.sequences[0, seg] == self.seg_token_id:
            state = out.hidden_states[step][-1][:, -1]
        else:  # <SEG> appended, or generation stopped at it: one teacher-forced pass
            state = self._last_state(prompt + new_ids[: step], image_features)
        text = self.tokenizer.decode(new_ids, skip_special_tokens=False).strip()
        return text, self.project(state)
