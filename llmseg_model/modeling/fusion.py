"""The fusion transformer: proposal tokens and the <SEG> token exchange information, then two
heads score every proposal.

- Similarity (the "IoU" score): an embedding per proposal whose cosine with the <SEG> embedding
  ranks proposals by how well they match the target (trained against softmax(gt IoU / T)).
- IoP head: sigmoid probability that a proposal lies inside the target (intersection over
  proposal), which is what the selection rule thresholds, so multi-instance targets work.

Two variants (`FusionConfig.variant`): `PublishedFusion` is LLM-Seg's (model/LISA.py and
LISA_TwoWayAttentionBlock in model/transformer.py of wangjunchi/LLMSeg), with SAM's attention
layers; `JointFusion` is the tiny preset's trained variant. Both take padded batches: padding
proposals are masked out of every attention, so a padded row computes what it would alone.

Both begin with a step that does not see <SEG> (`encode_proposals`: the published first block's
self-attention over the proposals, the joint variant's input projection). A frame computes it once
and every instruction on the frame continues from it (`forward(..., encoded=...)`), as the language
model continues from the frame's cached prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segment_anything.modeling.common import MLPBlock
from segment_anything.modeling.transformer import Attention

from llmseg_model.config import FUSION_VARIANTS, FusionConfig


class MLP(nn.Module):
    """Plain MLP with ReLU between layers."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class TwoWayBlock(nn.Module):
    """The joint variant's block, in the style of SAM's decoder, with padding masks.

    1. self-attention over [SEG; proposals] so proposals can compare with one another
       (largest, left of, ...);
    2. cross-attention SEG -> proposals;
    3. MLP on every token;
    4. cross-attention proposals -> SEG.
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.seg_to_prop = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dim, num_layers=2)
        self.norm3 = nn.LayerNorm(dim)
        self.prop_to_seg = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm4 = nn.LayerNorm(dim)

    def forward(
        self, seg: torch.Tensor, props: torch.Tensor, pad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """seg (B, 1, D), props (B, K, D), pad (B, K) True where a proposal is padding."""
        tokens = torch.cat([seg, props], dim=1)
        token_pad = torch.cat([torch.zeros_like(pad[:, :1]), pad], dim=1)
        tokens = self.norm1(tokens + self.self_attn(tokens, tokens, tokens, key_padding_mask=token_pad)[0])
        seg, props = tokens[:, :1], tokens[:, 1:]
        seg = self.norm2(seg + self.seg_to_prop(seg, props, props, key_padding_mask=pad)[0])
        tokens = torch.cat([seg, props], dim=1)
        tokens = self.norm3(tokens + self.mlp(tokens))
        seg, props = tokens[:, :1], tokens[:, 1:]
        props = self.norm4(props + self.prop_to_seg(props, seg, seg)[0])
        return seg, props


@dataclass
class FusionOutput:
    iou_logits: torch.Tensor  # (B, K) cosine(proposal, SEG); padding = -inf
    iop: torch.Tensor  # (B, K) in [0, 1]; padding = 0


def unmask_empty_rows(pad: torch.Tensor) -> torch.Tensor:
    """A row with no proposal at all must not make attention all-masked (NaN): unmask one pad."""
    all_pad = pad.all(dim=1)
    if all_pad.any():
        pad = pad.clone()
        pad[all_pad, 0] = False
    return pad


def key_padding(valid: torch.Tensor) -> torch.Tensor | None:
    """The published fusion's key padding mask (B, K), True where a proposal is padding; None when
    none is, so attention runs without a mask."""
    pad = unmask_empty_rows(~valid)
    return pad if bool(pad.any()) else None


class JointFusion(nn.Module):
    """The tiny preset's fusion: input projections, SEG inside the self-attention, 3-layer heads,
    cosine against a projection of the fused SEG."""

    def __init__(self, config: FusionConfig, mask_dim: int, seg_dim: int) -> None:
        super().__init__()
        self.config = config
        self.mask_in = nn.Linear(mask_dim, config.dim)
        self.seg_in = nn.Linear(seg_dim, config.dim)
        self.blocks = nn.ModuleList(
            TwoWayBlock(config.dim, config.num_heads, config.mlp_dim, config.dropout) for _ in range(config.depth)
        )
        self.final_attn = nn.MultiheadAttention(config.dim, config.num_heads, batch_first=True)
        self.final_norm = nn.LayerNorm(config.dim)
        self.iou_head = MLP(config.dim, config.dim, 256, num_layers=3)
        self.seg_head = nn.Linear(config.dim, 256)
        self.iop_head = MLP(config.dim, config.dim, 1, num_layers=3)

    def encode_proposals(self, mask_embeddings: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The proposal tokens before they meet <SEG> (B, K, dim): the input projection."""
        return self.mask_in(mask_embeddings)

    def forward(
        self,
        mask_embeddings: torch.Tensor,
        seg_embedding: torch.Tensor,
        valid: torch.Tensor,
        encoded: torch.Tensor | None = None,
    ) -> FusionOutput:
        """mask_embeddings (B, K, Dm), seg_embedding (B, Ds), valid (B, K) bool; `encoded`:
        `encode_proposals(mask_embeddings, valid)` when already computed."""
        pad = unmask_empty_rows(~valid)
        props = self.encode_proposals(mask_embeddings, valid) if encoded is None else encoded
        seg = self.seg_in(seg_embedding).unsqueeze(1)
        for block in self.blocks:
            seg, props = block(seg, props, pad)
        props = self.final_norm(props + self.final_attn(props, seg, seg)[0])
        iou_embed = F.normalize(self.iou_head(props), dim=-1)
        seg_embed = F.normalize(self.seg_head(seg), dim=-1)
        cosine = (iou_embed * seg_embed).sum(-1)
        iop = torch.sigmoid(self.iop_head(props).squeeze(-1))
        return FusionOutput(
            iou_logits=cosine.masked_fill(~valid, float("-inf")),
            iop=iop.masked_fill(~valid, 0.0),
        )


class MaskedAttention(Attention):
    """SAM's attention layer (separate q/k/v/out projections, as the published model uses) with an
    optional key padding mask.

    Without gradients two shortcuts give the same values for less work (at tiny scale the fusion's
    small operations cost as much as the language model's forward):
    - attention over a single key (every query attends to the one <SEG> token) returns that key's
      value, since a softmax over one score is exactly 1, so the query and key projections are not
      run. With gradients they run, so every parameter takes part in the graph as published (data
      parallel training expects that);
    - the product, softmax and mixing run as one `scaled_dot_product_attention` call.
    """

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_pad: torch.Tensor | None = None) -> torch.Tensor:
        fast = not torch.is_grad_enabled()
        if fast and k.shape[1] == 1 and key_pad is None:
            return self.out_proj(self.v_proj(v)).expand(-1, q.shape[1], -1)
        if not fast and key_pad is None:
            return super().forward(q, k, v)
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        if fast:
            keep = None if key_pad is None else ~key_pad[:, None, None, :]
            return self.out_proj(self._recombine_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=keep)))
        attn = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        attn = attn.masked_fill(key_pad[:, None, None, :], float("-inf")).softmax(dim=-1)
        return self.out_proj(self._recombine_heads(attn @ v))


class PublishedBlock(nn.Module):
    """LLM-Seg's fusion block: (1) self-attention over the proposals, (2) proposals attend to the
    <SEG> token, (3) an MLP on the proposals, (4) <SEG> attends to the proposals; a residual and a
    LayerNorm after each step."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.self_attn = MaskedAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.props_to_seg = MaskedAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.seg_to_props = MaskedAttention(dim, num_heads)
        self.norm4 = nn.LayerNorm(dim)

    def forward(self, props: torch.Tensor, seg: torch.Tensor, pad: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """props (B, K, D), seg (B, 1, D), pad (B, K) True where a proposal is padding (None: none is)."""
        return self.exchange(self.attend_proposals(props, pad), seg, pad)

    def attend_proposals(self, props: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        """Step (1), which does not see <SEG>."""
        return self.norm1(props + self.self_attn(props, props, props, key_pad=pad))

    def exchange(self, props: torch.Tensor, seg: torch.Tensor, pad: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps (2) to (4), after the self-attention."""
        props = self.norm2(props + self.props_to_seg(props, seg, seg))
        props = self.norm3(props + self.mlp(props))
        seg = self.norm4(seg + self.seg_to_props(seg, props, props, key_pad=pad))
        return props, seg


class PublishedFusion(nn.Module):
    """LLM-Seg's fusion and heads. The cosine is taken against the un-fused <SEG> embedding; the
    IoP head (named `lisa_iou_head` in the published code) ends in a sigmoid."""

    def __init__(self, config: FusionConfig, mask_dim: int, seg_dim: int) -> None:
        super().__init__()
        if not mask_dim == seg_dim == config.dim:
            raise ValueError(
                f"the published fusion has no input projections: features.embed_dim ({mask_dim}), "
                f"vlm.seg_embed_dim ({seg_dim}) and fusion.dim ({config.dim}) must be equal"
            )
        self.config = config
        self.layers = nn.ModuleList(
            PublishedBlock(config.dim, config.num_heads, config.mlp_dim) for _ in range(config.depth)
        )
        self.final_attn = MaskedAttention(config.dim, config.num_heads)
        self.final_norm = nn.LayerNorm(config.dim)
        self.iop_head = nn.Sequential(
            nn.Linear(config.dim, config.iop_hidden), nn.ReLU(inplace=True), nn.Linear(config.iop_hidden, 1), nn.Sigmoid()
        )
        self.embedding_head = nn.Sequential(
            nn.Linear(config.dim, config.embedding_hidden), nn.ReLU(inplace=True), nn.Linear(config.embedding_hidden, config.dim)
        )

    def encode_proposals(self, mask_embeddings: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The proposal tokens before they meet <SEG> (B, K, dim): the first block's self-attention
        over the proposals, which the published block runs before any exchange with <SEG>
        (LISA_TwoWayAttentionBlock in model/transformer.py of wangjunchi/LLMSeg)."""
        return self.layers[0].attend_proposals(mask_embeddings, key_padding(valid))

    def forward(
        self,
        mask_embeddings: torch.Tensor,
        seg_embedding: torch.Tensor,
        valid: torch.Tensor,
        encoded: torch.Tensor | None = None,
    ) -> FusionOutput:
        """mask_embeddings (B, K, D), seg_embedding (B, D), valid (B, K) bool; `encoded`:
        `encode_proposals(mask_embeddings, valid)` when already computed."""
        pad = key_padding(valid)  # once: on a GPU reading whether any row pads waits for the device
        props = self.layers[0].attend_proposals(mask_embeddings, pad) if encoded is None else encoded
        seg = seg_embedding.unsqueeze(1)
        props, seg = self.layers[0].exchange(props, seg, pad)
        for layer in self.layers[1:]:
            props, seg = layer(props, seg, pad)
        props = self.final_norm(props + self.final_attn(props, seg, seg))
        iop = self.iop_head(props).squeeze(-1)
        embedding = F.normalize(self.embedding_head(props), dim=-1)
        cosine = (embedding * F.normalize(seg_embedding, dim=-1).unsqueeze(1)).sum(-1)
        return FusionOutput(
            iou_logits=cosine.masked_fill(~valid, float("-inf")),
            iop=iop.masked_fill(~valid, 0.0),
        )


def build_fusion(config: FusionConfig, mask_dim: int, seg_dim: int) -> nn.Module:
    """The fusion module `config.variant` names."""
    if config.variant == "published":
        return PublishedFusion(config, mask_dim, seg_dim)
    if config.variant == "joint":
        return JointFusion(config, mask_dim, seg_dim)
    raise ValueError(f"fusion.variant must be one of {FUSION_VARIANTS}, got {config.variant!r}")
