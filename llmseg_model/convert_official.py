"""Convert the released LLM-Seg checkpoint once into the files the `paper` preset loads.

    python -m llmseg_model.convert_official \\
        --checkpoint LLM-Seg-deepspeed/global_step5000/mp_rank_00_model_states.pt \\
        --llava-base LLaVA-Lightning-7B-v1-1 --out weights/llmseg-paper

Then `LLMSeg.from_config(LLMSegConfig.load("weights/llmseg-paper/llmseg_config.json"))`, or the
node with `preset: paper` and the four `weights.*` parameters pointing into the output folder.

To train the paper preset from the published base instead, convert LLaVA-Lightning on its own:

    python -m llmseg_model.convert_official --llava-base LLaVA-Lightning-7B-v1-1 \
        --clip clip-vit-large-patch14 --out weights/llava-lightning-hf      # -> weights.llava_path
The checkpoint is read memory-mapped with torch's weights-only loader (see
llmseg_model/checkpoints/deepspeed.py); RAM use stays near one 2 GB shard, the output is ~15 GB.
"""

from __future__ import annotations

import argparse
import logging

from llmseg_model.cli import exit_on_bad_input


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llmseg_model.convert_official", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="mp_rank_00_model_states.pt, its global_stepN folder, or the run folder with `latest`")
    parser.add_argument("--clip", help="without --checkpoint: a local CLIP ViT-L/14 (224) folder; converts the LLaVA base alone")
    parser.add_argument("--llava-base", required=True, help="local LLaVA-Lightning-7B-v1-1 folder (its tokenizer and config.json)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--sam", help="use this local SAM checkpoint instead of writing the one inside the release")
    parser.add_argument("--dinov2", help="use this local transformers DINOv2 folder instead of converting the one inside the release")
    parser.add_argument(
        "--allow-global", action="append", default=[], metavar="NAME",
        help="a class the checkpoint holds besides tensors, to keep as an inert placeholder (only for files you trust)",
    )
    return parser


def run(argv: list[str] | None = None) -> None:
    from llmseg_model.checkpoints.official import convert, convert_llava_base

    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.clip is None):
        parser.error("give --checkpoint (the released LLM-Seg) or --clip (the LLaVA base alone), not both")
    if args.checkpoint is None:
        convert_llava_base(args.llava_base, args.clip, args.out)
        return
    convert(args.checkpoint, args.llava_base, args.out, sam=args.sam, dinov2=args.dinov2, allow_globals=tuple(args.allow_global))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    exit_on_bad_input(run, argv)


if __name__ == "__main__":
    main()
