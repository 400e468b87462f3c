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

from dataclasses import dataclass, field
from pathlib import Path

from llmseg_model.cli import Command, require_existing
from llmseg_model.config import check_fields


@dataclass
class ConvertConfig:
    """What to convert and where to: the released LLM-Seg checkpoint, or the LLaVA base alone."""

    checkpoint: str = ""  # mp_rank_00_model_states.pt, its global_stepN folder, or the run folder with `latest`
    clip: str = ""  # without checkpoint: a local CLIP ViT-L/14 (224) folder; converts the LLaVA base alone
    llava_base: str = ""  # local LLaVA-Lightning-7B-v1-1 folder (its tokenizer and config.json)
    out: str = ""  # output folder
    sam: str = ""  # use this local SAM checkpoint instead of writing the one inside the release
    dinov2: str = ""  # use this local transformers DINOv2 folder instead of converting the one inside the release
    # Classes the checkpoint holds besides tensors, kept as inert placeholders (only for files you trust).
    allow_global: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_fields(self)
        if bool(self.checkpoint) == bool(self.clip):
            raise ValueError("give checkpoint (the released LLM-Seg) or clip (the LLaVA base alone), not both")
        if not self.llava_base:
            raise ValueError("llava_base is not set: give the LLaVA-Lightning-7B-v1-1 folder")
        if not self.out:
            raise ValueError("out is not set: give the output folder")
        if self.clip and (self.sam or self.dinov2 or self.allow_global):
            raise ValueError("sam, dinov2 and allow_global belong to a checkpoint conversion, not to clip")


def check_paths(config: ConvertConfig) -> None:
    """Every input exists, and `out` is not a file, before the checkpoint is read."""
    if config.checkpoint:
        require_existing("checkpoint", config.checkpoint, "released LLM-Seg DeepSpeed checkpoint")
    else:
        require_existing("clip", config.clip, "CLIP ViT-L/14 folder", folder=True)
    require_existing("llava_base", config.llava_base, "LLaVA-Lightning-7B-v1-1 folder", folder=True)
    if config.sam:
        require_existing("sam", config.sam, "SAM checkpoint file", folder=False)
    if config.dinov2:
        require_existing("dinov2", config.dinov2, "DINOv2 folder", folder=True)
    if Path(config.out).exists() and not Path(config.out).is_dir():
        raise NotADirectoryError(f"out {config.out!r} is a file")


def run(config: ConvertConfig) -> Path:
    """Convert; returns the output folder."""
    from llmseg_model.checkpoints.official import convert, convert_llava_base

    if not config.checkpoint:
        return convert_llava_base(config.llava_base, config.clip, config.out)
    convert(config.checkpoint, config.llava_base, config.out, sam=config.sam or None, dinov2=config.dinov2 or None,
            allow_globals=tuple(config.allow_global))
    return Path(config.out)


COMMAND = Command(
    name="llmseg-convert-official",
    module="llmseg_model.convert_official",
    config=ConvertConfig,
    run=run,
    description=__doc__.split("\n\n")[0],
    check=check_paths,
    outputs=lambda config: [config.out],
    uses_transformers=True,
)


main = COMMAND.main


if __name__ == "__main__":
    main()
