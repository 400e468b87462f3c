"""The fusion transformer: proposal tokens and the <SEG> token exchange information, then two
heads score every proposal.

- IoU head: an embedding per proposal whose cosine with the <SEG> embedding ranks proposals by how
  well they match the target (trained against softmax(gt IoU / T)).
- IoP head: sigmoid probability that a proposal lies inside the target (intersection over
  proposal), which is what the selection rule thresholds, so multi-instance targets work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmseg_model.config import FusionConfig


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
    """One two-way block in the style of SAM's decoder, with padding masks.

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


class FusionTransformer(nn.Module):
    """Mixes K mask embeddings with the <SEG> embedding and scores each proposal."""

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

    def forward(self, mask_embeddings: torch.Tensor, seg_embedding: torch.Tensor, valid: torch.Tensor) -> FusionOutput:
        """mask_embeddings (B, K, Dm), seg_embedding (B, Ds), valid (B, K) bool."""
        pad = ~valid
        # A frame with no proposal at all must not make attention all-masked (NaN): unmask one pad.
        all_pad = pad.all(dim=1)
        if all_pad.any():
            pad = pad.clone()
            pad[all_pad, 0] = False
        props = self.mask_in(mask_embeddings)
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
