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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoImageProcessor, AutoTokenizer, DynamicCache, LlavaForConditionalGeneration

from llmseg_model.config import VlmConfig
from llmseg_model.modeling import prefix_attention
from llmseg_model.modeling.prompting import PromptBuilder

logger = logging.getLogger(__name__)

IGNORE_LABEL = -100


class SegVLM(nn.Module):
    """LLaVA + `<SEG>` + LoRA (peft) + a Linear-ReLU-Linear projection of the `<SEG>` state."""

    def __init__(self, llava: LlavaForConditionalGeneration, tokenizer, image_processor, config: VlmConfig) -> None:
        super().__init__()
        config.__post_init__()  # its own checks again: settings may have changed since it was built
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
        # Draws the training question and answer templates when a batch brings no seeds.
        self.rng = random.Random(0)
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_target_regex,
            bias="none",
        )
        self.llava = get_peft_model(llava, lora)
        # Instructions may read the frame's prefix without copying it (shares_prefix).
        self.can_share_prefix = config.prefix_attention != "copy" and prefix_attention.install(self.language_model)
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
        if not inference or not self.seg_proj.training:
            return self.seg_proj(seg_hidden.float())
        self.seg_proj.eval()  # for this call only: it was in training mode
        try:
            return self.seg_proj(seg_hidden.float())
        finally:
            self.seg_proj.train()

    def forward(
        self,
        image_features: torch.Tensor,
        instructions: list[str],
        phrases: list[bool] | None = None,
        seeds: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced training pass with the training question / answer templates, drawn per
        row from `seeds` (so processes and resumed runs draw alike), else from `self.rng`.

        Returns (answer CE loss, projected <SEG> embeddings (B, D))."""
        phrases = phrases if phrases is not None else [False] * len(instructions)
        num_image_tokens = image_features.shape[1]
        rows, labels, seg_at = [], [], []
        for k, (text, phrase) in enumerate(zip(instructions, phrases)):
            rng = random.Random(seeds[k]) if seeds is not None else self.rng
            prompt = self.prompts.prompt_ids(self.prompts.question(text, phrase, rng), num_image_tokens)
            answer = self.prompts.answer_ids(self.prompts.answer(text, rng))
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
    @property
    def language_model(self) -> nn.Module:
        """The decoder (LoRA layers injected in place), called directly so that only last-layer
        states are kept and the LM head runs only where logits are needed."""
        return self.base.model.language_model

    @torch.inference_mode()
    def encode_prefix(self, image_features: torch.Tensor) -> PromptPrefix:
        """Run the conversation before the question (system prompt, image tokens) once for a
        frame and keep its KV cache: every instruction on the frame continues from it."""
        ids = self.prompts.prefix_ids(image_features.shape[1])
        input_ids = torch.tensor([ids], device=image_features.device)
        out = self.language_model(
            inputs_embeds=self.embed(input_ids, image_features), attention_mask=torch.ones_like(input_ids), use_cache=True
        )
        cache = out.cache
        return PromptPrefix(ids=ids, layers=[(layer.keys, layer.values) for layer in cache.layers])

    def shares_prefix(self, device: torch.device) -> bool:
        """Whether instructions on `device` read the frame's one copy of the prompt prefix
        (`VlmConfig.prefix_attention`) rather than a copy of it per row."""
        mode = self.config.prefix_attention
        return self.can_share_prefix and (mode == "shared" or (mode == "auto" and device.type == "cpu"))

    def forward_rows(
        self, rows: list[list[int]], image_features: torch.Tensor, prefix: PromptPrefix | None, use_cache: bool = False
    ) -> tuple[torch.Tensor, object]:
        """Last-layer states (B, T, H) of right-padded rows that continue `prefix` (or stand alone,
        image tokens included), and the updated cache when `use_cache`. Without a cache to keep, the
        rows read the prefix's one copy where `shares_prefix`; otherwise transformers' cache copies
        it into every row. Every answer mode runs this forward; the latency benchmark times it
        alone as an instruction's lower bound."""
        device = image_features.device
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
        has_image = bool((input_ids == self.image_token_id).any())
        if prefix is not None and not use_cache and not has_image and self.shares_prefix(device):
            out = self.language_model(
                inputs_embeds=self.embed(input_ids, image_features[:, :0]),
                attention_mask=prefix_attention.suffix_mask([len(r) for r in rows], device),
                position_ids=torch.arange(len(prefix.ids), len(prefix.ids) + width, device=device).unsqueeze(0),
                use_cache=False,
                shared_prefix=prefix.layers,
            )
            return out.last_hidden_state, None
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        features = image_features.expand(len(rows), -1, -1) if has_image else image_features[:, :0]
        embeds = self.embed(input_ids, features)
        cache = None
        if prefix is not None:
            cache = DynamicCache(ddp_cache_data=[(k.expand(len(rows), -1, -1, -1), v.expand(len(rows), -1, -1, -1)) for k, v in prefix.layers])
            mask = torch.cat([torch.ones((len(rows), len(prefix.ids)), dtype=mask.dtype, device=device), mask], dim=1)
        out = self.language_model(inputs_embeds=embeds, attention_mask=mask, cache=cache, use_cache=use_cache or prefix is not None)
        return out.last_hidden_state, out.cache

    def after_prefix(self, prompt: list[int], prefix: PromptPrefix | None) -> tuple[list[int], PromptPrefix | None]:
        """The part of a prompt after the frame's cached prefix, or the whole prompt when it does
        not start with the prefix's ids (then nothing is reused)."""
        if prefix is not None and prompt[: len(prefix.ids)] == prefix.ids:
            return prompt[len(prefix.ids) :], prefix
        return prompt, None

    @torch.inference_mode()
    def answer(self, image_features: torch.Tensor, instruction: str, phrase: bool = False) -> tuple[str, torch.Tensor]:
        """Answer one instruction on one frame (image_features (1, N, hidden)) without a cached
        prefix: the plain path. Returns the answer text and the projected <SEG> embedding (1, D)."""
        (text, seg), = self.answer_batch(image_features, [instruction], [phrase], prefix=None)
        return text, seg

    @torch.inference_mode()
    def answer_batch(
        self,
        image_features: torch.Tensor,
        instructions: list[str],
        phrases: list[bool] | None = None,
        prefix: PromptPrefix | None = None,
    ) -> list[tuple[str, torch.Tensor]]:
        """Answer several instructions on one frame, continuing the frame's cached prefix.

        "given" and "verified" run all instructions as one padded forward over instruction +
        answer tokens; "verified" also checks the answer against greedy decoding (LM head only on
        the answer positions) and generates from the first token that differs; "generate"
        decodes greedily and reads <SEG> from the decoding pass."""
        phrases = phrases if phrases is not None else [False] * len(instructions)
        count = image_features.shape[1]
        prompts = [self.prompts.prompt_ids(self.prompts.question(t, p), count) for t, p in zip(instructions, phrases)]
        if self.config.answer_mode == "generate":
            return [self._generate(prompt, image_features, prefix) for prompt in prompts]
        verify = self.config.answer_mode == "verified"
        answers = self.preset_answers(instructions)
        rows, reads = [], []
        for prompt, (_, ids, seg) in zip(prompts, answers):
            fed = ids if verify else ids[: seg + 1 + self.seg_offset()]
            rows.append(prompt + fed)
            reads.append(len(prompt) + seg + self.seg_offset())
        results: list[tuple[str, torch.Tensor] | None] = [None] * len(rows)
        groups: dict[bool, list[int]] = {True: [], False: []}
        tails = [self.after_prefix(row, prefix) for row in rows]
        for i, (_, used) in enumerate(tails):
            groups[used is not None].append(i)
        for cached, members in groups.items():
            if not members:
                continue
            offset = len(prefix.ids) if cached else 0
            hidden, _ = self.forward_rows([tails[i][0] for i in members], image_features, prefix if cached else None)
            # Each row's read-outs (the LM head, the projection) run once for all rows.
            differs: list[int | None] = [None] * len(members)
            if verify:
                starts = [len(prompts[i]) - 1 - offset for i in members]
                differs = self._first_differences(hidden, starts, [answers[i][1] for i in members])
            kept = []
            for row, i in enumerate(members):
                if differs[row] is None:
                    kept.append(row)
                    continue
                logger.debug("answer differs from greedy decoding at token %d; generating from there", differs[row])
                results[i] = self._generate(prompts[i], image_features, prefix, start=answers[i][1][: differs[row]])
            if not kept:
                continue
            at = torch.tensor(kept, device=hidden.device)
            states = hidden[at, torch.tensor([reads[members[row]] - offset for row in kept], device=hidden.device)]
            projected = self.project(states)
            for k, row in enumerate(kept):
                text, ids, _ = answers[members[row]]
                if verify:  # what decoding gives
                    text = self.tokenizer.decode(ids, skip_special_tokens=False).strip()
                results[members[row]] = (text, projected[k : k + 1])
        return results  # type: ignore[return-value]

    def _given_answer(self, text: str) -> tuple[str, list[int], int]:
        """(text, its ids without EOS, index of <SEG>) of an answer text."""
        ids = self.prompts.answer_ids(text)[:-1]
        if self.seg_token_id not in ids:
            raise ValueError(f"vlm.answer must contain {self.config.seg_token}, got {self.config.answer!r}")
        return text, ids, ids.index(self.seg_token_id)

    def preset_answers(self, instructions: list[str]) -> list[tuple[str, list[int], int]]:
        """The preset's answer for each instruction: (text, its ids without EOS, index of <SEG>),
        encoding each distinct answer text once."""
        texts = [self.prompts.answer(instruction) for instruction in instructions]
        encoded = {text: self._given_answer(text) for text in dict.fromkeys(texts)}
        return [encoded[text] for text in texts]

    def _first_differences(self, hidden: torch.Tensor, starts: list[int], answers: list[list[int]]) -> list[int | None]:
        """For each row of `hidden` (B, T, H), the first token of its answer (EOS after it counted)
        where greedy decoding differs, None where they agree; `starts[b]` is the position whose
        state predicts row b's first answer token. One LM-head call over every row's positions."""
        expected = [ids + [self.tokenizer.eos_token_id] for ids in answers]
        rows = torch.tensor([b for b, ids in enumerate(expected) for _ in ids], device=hidden.device)
        positions = [start + k for start, ids in zip(starts, expected) for k in range(len(ids))]
        positions = torch.tensor(positions, device=hidden.device)
        predicted = self.base.lm_head(hidden[rows, positions]).argmax(-1).tolist()
        differs: list[int | None] = []
        at = 0
        for ids in expected:
            got, at = predicted[at : at + len(ids)], at + len(ids)
            differs.append(next((k for k, (a, b) in enumerate(zip(got, ids)) if a != b), None))
        return differs

    def _generate(
        self, prompt: list[int], image_features: torch.Tensor, prefix: PromptPrefix | None, start: list[int] | None = None
    ) -> tuple[str, torch.Tensor]:
        """Greedy decoding after `prompt` + `start` (tokens already known), on the frame's cache.

        The <SEG> state comes from the decoding pass itself. If the model never emits <SEG>, it is
        appended and fed so the fusion still gets an embedding; the answer text shows it."""
        start = list(start or [])
        tail, used = self.after_prefix(prompt + start, prefix)
        hidden, cache = self.forward_rows([tail], image_features, used, use_cache=True)
        states = list(hidden[0, len(tail) - len(start) - 1 :])  # states at the last prompt token and after
        new_ids = list(start)
        eos = self.tokenizer.eos_token_id
        while len(new_ids) < self.config.max_new_tokens:
            token = int(self.base.lm_head(states[-1]).argmax())
            if token == eos:
                break
            new_ids.append(token)
            states.append(self._step(token, cache, image_features.device))
        if self.seg_token_id not in new_ids:
            logger.warning("answer had no %s token; appending it", self.config.seg_token)
            new_ids.append(self.seg_token_id)
            if self.seg_offset() == 0:
                states.append(self._step(self.seg_token_id, cache, image_features.device))
        seg = new_ids.index(self.seg_token_id)
        state = states[seg + 1 + self.seg_offset()]
        text = self.tokenizer.decode(new_ids, skip_special_tokens=False).strip()
        return text, self.project(state.unsqueeze(0))

    def _step(self, token: int, cache, device: torch.device) -> torch.Tensor:
        """Feed one token after `cache` (updated in place); its last-layer state (hidden,)."""
        ids = torch.tensor([[token]], device=device)
        mask = torch.ones((1, cache.get_seq_length() + 1), dtype=torch.long, device=device)
        out = self.language_model(inputs_embeds=self.llava.get_input_embeddings()(ids), attention_mask=mask, cache=cache, use_cache=True)
        return out.last_hidden_state[0, -1]


@dataclass
class PromptPrefix:
    """The conversation before the question of one frame: its ids and, per decoder layer, the
    keys and values (1, heads, P, head_dim) every instruction on the frame continues from."""

    ids: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]
