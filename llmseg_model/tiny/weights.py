"""Writes the base-weights folder of the tiny preset (SAM, DINOv2, LLaVA + tokenizer).

`write_base_weights` is how the shipped tiny preset starts (with SAM and DINOv2 from
`pretrain_tiny`), and how tests get a complete, untrained tiny model in a temporary folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Dinov2Config, Dinov2Model

from llmseg_model.config import LLMSegConfig, WeightPaths, tiny_config
from llmseg_model.modeling.proposals import build_sam
from llmseg_model.tiny.llava import TinyLlavaConfig, build_tiny_llava, save_tiny_llava, train_tokenizer


# The tiny DINOv2's sizes: pretrain_tiny trains it at these, and tests build it untrained at them.
TINY_DINOV2 = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=4, patch_size=16, image_size=224)


def tiny_dinov2_config(**overrides) -> Dinov2Config:
    """The tiny DINOv2 (patch 16 on a 224 input: a 14x14 feature grid), `overrides` on top."""
    return Dinov2Config(**{**TINY_DINOV2, **overrides})


def write_base_weights(folder: str | Path, seed: int = 0, config: LLMSegConfig | None = None,
                       sam: bool = True, dinov2: bool = True, llava: bool = True) -> WeightPaths:
    """Write randomly initialised tiny SAM / DINOv2 / LLaVA into `folder`; returns their paths.

    The LLaVA tokenizer is trained on every text the procedural generator can emit.
    """
    from llmseg_model.data.procedural import vocabulary_texts

    config = config or tiny_config()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    paths = WeightPaths(
        sam_checkpoint=str(folder / "sam.safetensors"),
        dinov2_path=str(folder / "dinov2"),
        llava_path=str(folder / "llava"),
        llmseg_weights=str(folder / "llmseg"),
    )
    if sam:
        state = {k: v.contiguous() for k, v in build_sam(config.sam).state_dict().items()}
        save_file(state, paths.sam_checkpoint)
    if dinov2:
        Dinov2Model(tiny_dinov2_config()).save_pretrained(paths.dinov2_path)
    if llava:
        tokenizer = train_tokenizer(vocabulary_texts(), config.vlm)
        model, processor = build_tiny_llava(tokenizer, TinyLlavaConfig())
        save_tiny_llava(paths.llava_path, model, tokenizer, processor)
    return paths


def main(argv: list[str] | None = None) -> None:
    import argparse
    import logging

    parser = argparse.ArgumentParser(description="Write the tiny preset's untrained base weights.")
    parser.add_argument("--out", required=True, help="folder (e.g. llmseg_model/weights/tiny)")
    parser.add_argument("--parts", default="sam,dinov2,llava", help="comma list of sam, dinov2, llava")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"sam", "dinov2", "llava"}
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}")
    write_base_weights(args.out, seed=args.seed, sam="sam" in parts, dinov2="dinov2" in parts, llava="llava" in parts)
    logging.getLogger(__name__).info("wrote %s to %s", sorted(parts), args.out)


if __name__ == "__main__":
    main()
