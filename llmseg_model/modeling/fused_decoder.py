"""SAM's two-way transformer for many point prompts on one image, with the image-side work shared.

Everything mode runs `TwoWayTransformer` once per prompt, and each run starts from the same image
embedding (the dense prompt is SAM's `no_mask_embed` for every prompt). `segment_anything` copies
that embedding once per prompt and repeats the prompt-independent work on every copy.
`FusedTwoWayTransformer` computes the same function from the same modules' weights without that:

- the first block's image-side projections (token-to-image keys and values, image-to-token
  queries) run once per image, on the one embedding;
- later blocks never project the 256+ image tokens of each prompt: attention scores are products of
  the 7 prompt tokens with the image tokens, so the projection moves to the tokens' side
  (q . W(x + pe) = (W^T q) . (x + pe)), and as softmax weights sum to one the value projection
  moves after the mixing (sum_n w_n (W x_n + b) = W (sum_n w_n x_n) + b). A key bias adds the
  same number to every score a token-to-image softmax normalises, so it is left out there;
- attention runs in layouts that need no per-head copies: the prompt tokens are spread over the
  heads as a block-diagonal matrix, so one batched product gives every head's scores, and the
  image-to-token softmax runs over the token axis in place;
- the image-to-token output projection is applied to the 7 value tokens before they are mixed into
  the image tokens.

The result equals SAM's up to float rounding (about 2e-6 on outputs of order 1; tested), so it is a
named setting (`proposals.decoder: fused`) whose masks are measured against `decoder: sam` in
docs/benchmark.md; `decoder: sam` runs segment-anything's own forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock


def layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def head_blocks(attention: Attention, like: torch.Tensor) -> torch.Tensor:
    """(heads, internal_dim) 0/1 mask: row h selects head h's channels."""
    channel_head = torch.arange(attention.internal_dim, device=like.device) // (attention.internal_dim // attention.num_heads)
    return (channel_head[None] == torch.arange(attention.num_heads, device=like.device)[:, None]).to(like.dtype)


@dataclass
class _SharedImage:
    """One image's prompt-independent terms: the embedding every prompt starts from, the dense
    positional encoding, and the first block's image-side projections."""

    src: torch.Tensor  # (N, C) image embedding + no_mask_embed
    pe: torch.Tensor  # (N, C)
    keys: torch.Tensor  # (N, I) first block, token-to-image keys
    values: torch.Tensor  # (N, I) first block, token-to-image values
    queries: torch.Tensor  # (N, I) first block, image-to-token queries


class FusedTwoWayTransformer:
    """`sam.mask_decoder.transformer` for prompts without a mask input, one image at a time:
    `set_image(features)` once, then `(tokens) -> (hs, keys)` as `TwoWayTransformer.forward`
    returns them for `repeat_interleave(features) + no_mask_embed`."""

    def __init__(self, sam: Sam) -> None:
        self.sam = sam
        self.transformer = sam.mask_decoder.transformer
        self._image: _SharedImage | None = None
        self._blocks: dict[int, torch.Tensor] = {}

    @torch.inference_mode()
    def set_image(self, features: torch.Tensor) -> None:
        """features: (1, C, h, w) SAM image embedding."""
        prompt_encoder = self.sam.prompt_encoder
        src = features + prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        src = src[0].flatten(1).T.contiguous()  # (N, C)
        pe = prompt_encoder.get_dense_pe().to(src.dtype)[0].flatten(1).T.contiguous()
        first = self.transformer.layers[0]
        to_image, to_token = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        self._image = _SharedImage(
            src=src, pe=pe, keys=to_image.k_proj(src + pe), values=to_image.v_proj(src), queries=to_token.q_proj(src + pe)
        )

    def reset_image(self) -> None:
        self._image = None

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens: (B, T, C) output + sparse prompt tokens. Returns hs (B, T, C), keys (B, N, C)."""
        image = self._image
        if image is None:
            raise RuntimeError("set_image must be called before decoding prompts")
        transformer = self.transformer
        queries, keys = tokens, None
        for block in transformer.layers:
            queries, keys = self._block(block, image, queries, keys, tokens)
        attended = self._token_to_image(transformer.final_attn_token_to_image, queries + tokens, keys, keys + image.pe)
        return layer_norm(queries + attended, transformer.norm_final_attn), keys

    def _block(
        self,
        block: TwoWayAttentionBlock,
        image: _SharedImage,
        queries: torch.Tensor,
        keys: torch.Tensor | None,
        point_pe: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`TwoWayAttentionBlock.forward`; keys None means every prompt's keys are the image's."""
        if block.skip_first_layer_pe:
            queries = block.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + point_pe
            queries = queries + block.self_attn(q=q, k=q, v=queries)
        queries = layer_norm(queries, block.norm1)
        if keys is None:
            attended = self._token_to_shared_image(block.cross_attn_token_to_image, queries + point_pe, image)
        else:
            positioned = keys + image.pe
            attended = self._token_to_image(block.cross_attn_token_to_image, queries + point_pe, keys, positioned)
        queries = layer_norm(queries + attended, block.norm2)
        queries = layer_norm(queries + block.mlp(queries), block.norm3)
        attention = block.cross_attn_image_to_token
        if keys is None:
            update = self._image_to_token(attention, queries + point_pe, queries, image.queries)
            update += image.src
        else:
            update = self._image_to_token(attention, queries + point_pe, queries, None, positioned)
            update += keys
        return queries, layer_norm(update, block.norm4)

    def _heads(self, attention: Attention, like: torch.Tensor) -> torch.Tensor:
        blocks = self._blocks.get(id(attention))
        if blocks is None or blocks.device != like.device or blocks.dtype != like.dtype:
            blocks = self._blocks[id(attention)] = head_blocks(attention, like)
        return blocks

    def _spread(self, attention: Attention, projected: torch.Tensor) -> torch.Tensor:
        """(B, T, I) -> (B, H*T, I): row (h, t) holds token t's head-h channels, zeros elsewhere."""
        batch, count, inner = projected.shape
        blocks = self._heads(attention, projected)
        return (projected[:, None] * blocks[None, :, None]).reshape(batch, attention.num_heads * count, inner)

    def _gather(self, attention: Attention, mixed: torch.Tensor) -> torch.Tensor:
        """(B, H*T, I) per-head results -> (B, T, I): each head's own channels."""
        batch, rows, inner = mixed.shape
        blocks = self._heads(attention, mixed)
        return (mixed.view(batch, attention.num_heads, -1, inner) * blocks[None, :, None]).sum(1)

    def _token_to_shared_image(self, attention: Attention, q_tokens: torch.Tensor, image: _SharedImage) -> torch.Tensor:
        """`Attention(q=tokens, k=image, v=image)` against the first block's shared projections."""
        scale = math.sqrt(attention.internal_dim // attention.num_heads)
        scores = self._spread(attention, attention.q_proj(q_tokens)) @ image.keys.T  # (B, H*T, N)
        return attention.out_proj(self._gather(attention, torch.softmax(scores / scale, dim=-1) @ image.values))

    def _token_to_image(
        self, attention: Attention, q_tokens: torch.Tensor, keys: torch.Tensor, positioned: torch.Tensor
    ) -> torch.Tensor:
        """`Attention(q=tokens, k=keys + pe, v=keys)` with per-prompt keys (B, N, C), never
        projecting them: scores from the queries taken back through k_proj, values projected after
        mixing."""
        scale = math.sqrt(attention.internal_dim // attention.num_heads)
        spread = self._spread(attention, attention.q_proj(q_tokens))
        scores = (spread @ attention.k_proj.weight) @ positioned.transpose(1, 2)  # (B, H*T, N)
        mixed = (torch.softmax(scores / scale, dim=-1) @ keys) @ attention.v_proj.weight.T  # (B, H*T, I)
        return attention.out_proj(self._gather(attention, mixed) + attention.v_proj.bias)

    def _image_to_token(
        self,
        attention: Attention,
        k_tokens: torch.Tensor,
        v_tokens: torch.Tensor,
        image_queries: torch.Tensor | None,
        positioned: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`Attention(q=image, k=tokens, v=tokens)` -> (B, N, C): the image's queries given (N, I),
        or from per-prompt keys + pe (B, N, C) through q_proj taken to the tokens' side."""
        batch, count, _ = k_tokens.shape
        heads = attention.num_heads
        token_keys = self._spread(attention, attention.k_proj(k_tokens))  # (B, H*T, I)
        if image_queries is not None:
            scores = token_keys @ image_queries.T
        else:
            offset = (token_keys @ attention.q_proj.bias)[..., None]  # varies over the softmax's tokens: kept
            scores = torch.baddbmm(offset, token_keys @ attention.q_proj.weight, positioned.transpose(1, 2))
        positions = scores.shape[-1]
        scale = math.sqrt(attention.internal_dim // heads)
        weights = torch.softmax(scores.view(batch, heads, count, positions) / scale, dim=2)
        token_values = self._spread(attention, attention.v_proj(v_tokens)) @ attention.out_proj.weight.T  # (B, H*T, C)
        mixed = weights.view(batch, heads * count, positions).transpose(1, 2)
        return torch.baddbmm(attention.out_proj.bias, mixed, token_values)
