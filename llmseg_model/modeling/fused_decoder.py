"""SAM's two-way transformer for many point prompts on one image, with the image-side work shared.

Everything mode runs `TwoWayTransformer` once per prompt, and each run starts from the same image
embedding (the dense prompt is SAM's `no_mask_embed` for every prompt). `segment_anything` copies
that embedding once per prompt and repeats the prompt-independent work on every copy: the first
block's image-side projections (token-to-image keys and values, image-to-token queries) and the
positional terms of every later projection. `FusedTwoWayTransformer` computes the same function
from the same modules' weights with that work done once per image:

- the first block's image-side projections run on the one embedding, not one copy per prompt;
- later blocks project the image tokens with one matrix product for keys, values and queries, the
  positional encoding's share of each computed once per image (W(x + pe) + b = Wx + (W pe + b));
- attention runs in layouts that need no per-head copies: the prompt tokens are spread over the
  heads as a block-diagonal matrix, so one batched product gives every head's scores, and the
  image-to-token softmax runs over the token axis in place;
- the image-to-token output projection is applied to the 7 value tokens before they are mixed into
  the 256+ image tokens.

The result equals SAM's up to float rounding (about 1e-6 on outputs of order 1; tested), so it is a
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
class _BlockImage:
    """A block's image-side projections: shared (N, I) for the first block; for later blocks the
    fused weight and the per-position bias that turn its (B, N, C) input into keys/values/queries."""

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    queries: torch.Tensor | None = None
    weight: torch.Tensor | None = None  # (3I, C): token-to-image k, v; image-to-token q
    bias: torch.Tensor | None = None  # (N, 3I)


class FusedTwoWayTransformer:
    """`sam.mask_decoder.transformer` for prompts without a mask input, one image at a time:
    `set_image(features)` once, then `(tokens) -> (hs, keys)` as `TwoWayTransformer.forward`
    returns them for `repeat_interleave(features) + no_mask_embed`."""

    def __init__(self, sam: Sam) -> None:
        self.sam = sam
        self.transformer = sam.mask_decoder.transformer
        self._image: list[_BlockImage] = []
        self._final: tuple[torch.Tensor, torch.Tensor] | None = None
        self._src: torch.Tensor | None = None
        self._blocks: dict[int, torch.Tensor] = {}

    @torch.inference_mode()
    def set_image(self, features: torch.Tensor) -> None:
        """features: (1, C, h, w) SAM image embedding."""
        prompt_encoder = self.sam.prompt_encoder
        src = features + prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        src = src[0].flatten(1).T.contiguous()  # (N, C)
        pe = prompt_encoder.get_dense_pe().to(src.dtype)[0].flatten(1).T.contiguous()
        self._src = src
        self._image = []
        for index, block in enumerate(self.transformer.layers):
            to_image, to_token = block.cross_attn_token_to_image, block.cross_attn_image_to_token
            if index == 0:
                self._image.append(
                    _BlockImage(
                        keys=to_image.k_proj(src + pe), values=to_image.v_proj(src), queries=to_token.q_proj(src + pe)
                    )
                )
                continue
            weight = torch.cat([to_image.k_proj.weight, to_image.v_proj.weight, to_token.q_proj.weight])
            bias = torch.cat(
                [to_image.k_proj(pe), to_image.v_proj.bias.expand(len(pe), -1), to_token.q_proj(pe)], dim=1
            )
            self._image.append(_BlockImage(weight=weight, bias=bias))
        final = self.transformer.final_attn_token_to_image
        self._final = (
            torch.cat([final.k_proj.weight, final.v_proj.weight]),
            torch.cat([final.k_proj(pe), final.v_proj.bias.expand(len(pe), -1)], dim=1),
        )

    def reset_image(self) -> None:
        self._image, self._final, self._src = [], None, None

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens: (B, T, C) output + sparse prompt tokens. Returns hs (B, T, C), keys (B, N, C)."""
        if self._src is None or self._final is None:
            raise RuntimeError("set_image must be called before decoding prompts")
        transformer = self.transformer
        queries, keys = tokens, None
        for block, image in zip(transformer.layers, self._image):
            queries, keys = self._block(block, image, queries, keys, tokens)
        weight, bias = self._final
        inner = transformer.final_attn_token_to_image.internal_dim
        projected = keys @ weight.T
        projected += bias
        attended = self._token_to_image(
            transformer.final_attn_token_to_image, queries + tokens, projected[..., :inner], projected[..., inner:]
        )
        return layer_norm(queries + attended, transformer.norm_final_attn), keys

    def _block(
        self,
        block: TwoWayAttentionBlock,
        image: _BlockImage,
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
            image_keys, image_values, image_queries = image.keys, image.values, image.queries
        else:
            inner = block.cross_attn_token_to_image.internal_dim
            projected = keys @ image.weight.T  # one product for the three projections
            projected += image.bias
            image_keys, image_values = projected[..., :inner], projected[..., inner : 2 * inner]
            image_queries = projected[..., 2 * inner :]
        attended = self._token_to_image(block.cross_attn_token_to_image, queries + point_pe, image_keys, image_values)
        queries = layer_norm(queries + attended, block.norm2)
        queries = layer_norm(queries + block.mlp(queries), block.norm3)
        update = self._image_to_token(block.cross_attn_image_to_token, image_queries, queries + point_pe, queries)
        update += self._src if keys is None else keys
        return queries, layer_norm(update, block.norm4)

    def _heads(self, attention: Attention, like: torch.Tensor) -> torch.Tensor:
        blocks = self._blocks.get(id(attention))
        if blocks is None or blocks.device != like.device or blocks.dtype != like.dtype:
            blocks = self._blocks[id(attention)] = head_blocks(attention, like)
        return blocks

    def _token_to_image(
        self, attention: Attention, q_tokens: torch.Tensor, image_keys: torch.Tensor, image_values: torch.Tensor
    ) -> torch.Tensor:
        """`Attention(q=tokens, k=image, v=image)`; image keys/values (N, I) shared or (B, N, I)."""
        batch, count, _ = q_tokens.shape
        heads, inner = attention.num_heads, attention.internal_dim
        blocks = self._heads(attention, q_tokens)
        queries = attention.q_proj(q_tokens)
        spread = (queries[:, None] * blocks[None, :, None]).reshape(batch, heads * count, inner)
        scores = spread @ image_keys.transpose(-1, -2)  # (B, H*T, N): each head's scores in its rows
        weights = torch.softmax(scores / math.sqrt(inner // heads), dim=-1)
        mixed = (weights @ image_values).view(batch, heads, count, inner)
        return attention.out_proj((mixed * blocks[None, :, None]).sum(1))

    def _image_to_token(
        self, attention: Attention, image_queries: torch.Tensor, k_tokens: torch.Tensor, v_tokens: torch.Tensor
    ) -> torch.Tensor:
        """`Attention(q=image, k=tokens, v=tokens)` -> (B, N, C); image queries (N, I) or (B, N, I)."""
        batch, count, _ = k_tokens.shape
        heads, inner = attention.num_heads, attention.internal_dim
        blocks = self._heads(attention, k_tokens)
        token_keys = (attention.k_proj(k_tokens)[:, None] * blocks[None, :, None]).reshape(batch, heads * count, inner)
        scores = token_keys @ image_queries.transpose(-1, -2)  # (B, H*T, N)
        positions = scores.shape[-1]
        weights = torch.softmax(scores.view(batch, heads, count, positions) / math.sqrt(inner // heads), dim=2)
        token_values = (attention.v_proj(v_tokens)[:, None] * blocks[None, :, None]).reshape(batch, heads * count, inner)
        projected = token_values @ attention.out_proj.weight.T  # (B, H*T, C): out_proj before mixing
        return torch.baddbmm(attention.out_proj.bias, weights.view(batch, heads * count, positions).transpose(1, 2), projected)


