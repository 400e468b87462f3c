"""The conversation around an instruction and its token ids, exactly as the model was trained.

The published LLM-Seg (LLaVA-v1 / LISA code, transformers 4.29) built its ids with a *slow* Llama
tokenizer, one piece at a time: the prompt is cut at `<image>` (`tokenizer_image_token`), every
added token (`<im_start>`, `<im_end>`, `[SEG]`) cuts it again, whitespace next to an added token
is stripped, and each text piece is encoded on its own (so each gets SentencePiece's leading
"▁"). `PromptBuilder.encode` reproduces that with any tokenizer, which is what lets converted
weights see the ids they were trained on. The tiny preset's word-level tokenizer gives the same
ids whether a text is cut or not.
"""

from __future__ import annotations

import functools
import random
import re

from llmseg_model.config import VlmConfig

IMAGE_PLACEHOLDER = "<image>"


def clean_instruction(text: str, config: VlmConfig, forbidden: tuple[str, ...] = ()) -> str:
    """Validate and normalise a user instruction; raise ValueError with the reason if unusable."""
    if not isinstance(text, str):
        raise ValueError(f"instruction must be a string, got {type(text).__name__}")
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        raise ValueError("instruction is empty")
    if len(text) > config.max_instruction_chars:
        raise ValueError(f"instruction is {len(text)} characters; the limit is {config.max_instruction_chars}")
    for token in (config.seg_token, IMAGE_PLACEHOLDER, *forbidden):
        if token in text:
            raise ValueError(f"instruction must not contain the special token {token}")
    return text


class PromptBuilder:
    """Questions, answers and their token ids for one tokenizer and one `VlmConfig`."""

    def __init__(self, tokenizer, config: VlmConfig, image_token_id: int) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.image_token_id = image_token_id
        self.special_ids = {token: int(i) for token, i in tokenizer.get_added_vocab().items()}
        self.special_ids[IMAGE_PLACEHOLDER] = image_token_id
        # Added tokens a user must not type (they would change the prompt's structure).
        self.forbidden = tuple(t for t in self.special_ids if t.startswith("<") or t == config.seg_token)
        names = sorted(self.special_ids, key=len, reverse=True)
        self._cut = re.compile("(" + "|".join(re.escape(name) for name in names) + ")")
        # What the tokenizer puts in front of a text on its own: BOS for Llama, nothing for the
        # tiny word-level tokenizer.
        self.bos = list(tokenizer("", add_special_tokens=True)["input_ids"])
        # The system prompt, the template pieces and the answers recur in every prompt: their ids
        # are kept (a tokenizer call costs about as much as a small model's forward).
        self._piece_ids = functools.lru_cache(maxsize=4096)(self._tokenize)

    # ------------------------------------------------------------------ texts
    def clean(self, text: str) -> str:
        return clean_instruction(text, self.config, self.forbidden)

    def question(self, text: str, phrase: bool = False, rng: random.Random | None = None) -> str:
        """The question for an instruction: the inference template, or (with `rng`) a training
        template drawn uniformly; phrases are lower-cased in training, as published."""
        text = self.clean(text)
        if rng is None:
            template = self.config.phrase_question if phrase else self.config.sentence_question
        else:
            templates = self.config.train_phrase_questions if phrase else self.config.train_sentence_questions
            template = rng.choice(templates)
            text = text.lower() if phrase else text
        return template.format(text=text)

    def answer(self, text: str, rng: random.Random | None = None) -> str:
        """The answer: the inference one, or (with `rng`) one drawn from the training answers."""
        template = self.config.answer if rng is None else rng.choice(self.config.train_answers)
        return template.format(text=self.clean(text))

    def conversation(self, question: str) -> str:
        return self.config.prompt_template.format(system=self.config.system_prompt, question=question)

    # ------------------------------------------------------------------ ids
    def encode(self, text: str) -> list[int]:
        """Token ids of a text piece, cut at special tokens (no BOS)."""
        pieces = self._cut.split(text)
        ids: list[int] = []
        strip = self.config.strip_around_special
        for k, piece in enumerate(pieces):
            if k % 2 == 1:  # a special token
                ids.append(self.special_ids[piece])
                continue
            if strip:
                if k > 0:
                    piece = piece.lstrip()
                if k < len(pieces) - 1:
                    piece = piece.rstrip()
            if piece:
                ids.extend(self._piece_ids(piece))
        return ids

    def _tokenize(self, piece: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(piece, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, question: str, num_image_tokens: int) -> list[int]:
        """The whole prompt up to and including "ASSISTANT:", the image placeholder expanded to
        `num_image_tokens` ids (filled with the image features at embedding time)."""
        return self._expand(self.bos + self.encode(self.conversation(question)), num_image_tokens)

    def prefix_ids(self, num_image_tokens: int) -> list[int]:
        """The ids of the conversation before the question (system prompt and image): the part
        every prompt of a frame shares. Callers check that a prompt really starts with them (a
        tokenizer may merge the text around the cut differently)."""
        before = self.config.prompt_template.split("{question}")[0].replace("{system}", self.config.system_prompt)
        return self._expand(self.bos + self.encode(before), num_image_tokens)

    def _expand(self, ids: list[int], num_image_tokens: int) -> list[int]:
        if ids.count(self.image_token_id) != 1:
            raise ValueError(f"the prompt template must hold {IMAGE_PLACEHOLDER} exactly once, before {{question}}")
        at = ids.index(self.image_token_id)
        return ids[:at] + [self.image_token_id] * num_image_tokens + ids[at + 1 :]

    def answer_ids(self, answer: str) -> list[int]:
        """The answer's ids as they follow "ASSISTANT: " in one conversation, then EOS.

        The answer is encoded on its own: SentencePiece's leading "▁" stands for the space after
        "ASSISTANT:", and its pieces never merge across that space."""
        return self.encode(answer) + [self.tokenizer.eos_token_id]
