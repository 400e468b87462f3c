"""Attention of an instruction's tokens to a frame's shared prompt prefix, without copying it.

Every instruction on a frame continues the same cached prefix (system prompt and image tokens).
Through transformers' own cache, each row of a batch appends its tokens to a copy of the prefix's
keys and values: a batch of B instructions writes B copies of the whole prefix in every layer
(on LLaVA-7B with 600 prefix tokens in bfloat16, about 0.3 GB a row), and that copy was a fifth of a
batch's forward on the CPU. Here each layer attends to the prefix's single copy and to the rows' own
tokens separately, with one softmax over both (the prefix keys are read once for all rows, as one
matrix product per head). The values equal transformers' attention up to float rounding (tested).

It is an attention implementation of transformers' `AttentionInterface`, named after the one it
wraps (`shared_prefix|sdpa`): calls that bring no `shared_prefix` argument (training, the prefix
itself, generation) run the wrapped implementation unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import repeat_kv

logger = logging.getLogger(__name__)

NAME_PREFIX = "shared_prefix|"
# Implementations it wraps (LLaVA's default): the calls it passes on get the masks transformers makes
# for that implementation.
WRAPPED = ("sdpa",)


def shared_prefix_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    *,
    shared_prefix: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """query (B, H, T, d); key, value (B, Hkv, T, d) of the new tokens only; `shared_prefix[layer]`
    the prefix's keys and values (1, Hkv, P, d); `attention_mask` (B, 1, T, T) bool, True where a
    new token may attend to another (every token attends to the whole prefix). Returns (B, T, H, d)
    as transformers' attention functions do."""
    prefix_keys, prefix_values = shared_prefix[module.layer_idx]
    groups = module.num_key_value_groups
    batch, heads, tokens, width = query.shape
    prefix_keys, prefix_values = repeat_kv(prefix_keys, groups)[0], repeat_kv(prefix_values, groups)[0]  # (H, P, d)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    length = prefix_keys.shape[1]
    # Every row's queries against the prefix's one copy: one product per head.
    stacked = query.transpose(0, 1).reshape(heads, batch * tokens, width)
    to_prefix = torch.bmm(stacked, prefix_keys.transpose(1, 2)).view(heads, batch, tokens, length).transpose(0, 1)
    to_new = torch.matmul(query, key.transpose(2, 3))
    if attention_mask is not None:
        to_new = to_new.masked_fill(~attention_mask, float("-inf"))
    scores = torch.cat([to_prefix, to_new], dim=-1) * scaling
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=module.training)
    from_prefix = probs[..., :length].transpose(0, 1).reshape(heads, batch * tokens, length)
    out = torch.bmm(from_prefix, prefix_values).view(heads, batch, tokens, width).transpose(0, 1)
    out = out + torch.matmul(probs[..., length:], value)
    return out.transpose(1, 2).contiguous(), None


def wrapping(inner: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]]:
    """The attention function registered as `shared_prefix|<inner>`."""

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, shared_prefix=None, **kwargs):
        if shared_prefix is not None:
            return shared_prefix_attention(module, query, key, value, attention_mask, scaling, dropout, shared_prefix=shared_prefix)
        return ALL_ATTENTION_FUNCTIONS[inner](module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)

    return attention


def install(language_model: nn.Module) -> bool:
    """Let `language_model` (a transformers decoder) take `shared_prefix`: register the wrapping
    implementation and switch the model to it. False (nothing changed) when its attention
    implementation is one this cannot wrap (e.g. flash attention's, whose masks differ)."""
    current = language_model.config._attn_implementation
    if current.startswith(NAME_PREFIX):
        return True
    if current not in WRAPPED:
        logger.info("attention %r is not wrapped for the shared prefix; instructions copy the prefix", current)
        return False
    name = NAME_PREFIX + current
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, wrapping(current))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[current])
    language_model.set_attn_implementation(name)
    return True


def suffix_mask(lengths: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """(B, 1, T, T) bool for right-padded rows after the prefix: a token attends to its row's tokens
    up to itself, never to padding."""
    width = max(lengths)
    place = torch.arange(width, device=device)
    valid = place[None, :] < torch.tensor(lengths, device=device)[:, None]
    return (valid[:, None, :] & (place[:, None] >= place[None, :]))[:, None]
