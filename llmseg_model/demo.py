"""The main job on the embedded default: segment a scene from instructions with the tiny preset.

    python -m llmseg_model.demo                      # a held-out procedural scene, its own instructions
    python -m llmseg_model.demo --image photo.png --instruction "the thing I could roll"

Writes a picture per instruction (llmseg_model.visualize: the instances the selected proposals
form, each outlined and numbered, under a caption with the instruction and scores) and a results
JSON to --out, and logs instances, IoU and timings. The model is imported and loaded after the
settings, the weight paths and the image are checked.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmseg_model.cli import Command, require_existing
from llmseg_model.config import LLMSegConfig, bounded, check_fields, model_settings

logger = logging.getLogger("llmseg_model.demo")


@dataclass
class DemoConfig:
    """One demo run: a model, an image and the instructions to answer about it."""

    preset: str = "tiny"  # tiny | paper | paper_llava15, or a saved llmseg_config.json
    model: dict = field(default_factory=dict)  # nested overrides of LLMSegConfig, e.g. {weights: {llava_path: ...}}
    image: str = ""  # an RGB image file; empty: a held-out procedural scene
    instruction: list[str] = field(default_factory=list)  # repeatable; default: the scene's own instructions
    scene: int = bounded(0, ge=0)  # index of the procedural test scene (without --image)
    device: str = "cpu"  # torch device, e.g. cuda
    out: str = "outputs/demo"  # folder for image.png, overlay_<i>.png and results.json

    def __post_init__(self) -> None:
        check_fields(self)
        if any(not text.strip() for text in self.instruction):
            raise ValueError("instruction: an instruction is empty")
        self.model_config()  # the preset exists and the model overrides are valid

    def model_config(self) -> LLMSegConfig:
        return model_settings(self.preset, self.model)


def check_paths(config: DemoConfig) -> None:
    """The weights and the image exist before the model loads."""
    config.model_config().weights.check_exist(trained=True, prefix="model.weights.")
    if config.image:
        require_existing("image", config.image, "image file", folder=False)
    if Path(config.out).exists() and not Path(config.out).is_dir():
        raise NotADirectoryError(f"out {config.out!r} is a file")


def run(config: DemoConfig) -> list[dict]:
    """Segment the image for every instruction; write the pictures and results.json."""
    import numpy as np
    from PIL import Image

    from llmseg_model.modeling.model import LLMSeg
    from llmseg_model.visualize import render_instances

    truth: list[np.ndarray | None] = []
    if config.image:
        try:
            image = np.asarray(Image.open(config.image).convert("RGB"))
        except OSError as err:
            raise ValueError(f"image {config.image!r} cannot be read: {err}") from None
        instructions = config.instruction or ["the object in the middle"]
        truth = [None] * len(instructions)
    else:
        from llmseg_model.data.procedural import ProceduralDataset

        scene = ProceduralDataset("test", config.scene + 1).scene(config.scene)
        image = scene.image
        pairs = [(text, None) for text in config.instruction] or [
            (ins.text, scene.target_mask(ins.targets) > 0) for ins in scene.instructions
        ]
        instructions = [text for text, _ in pairs]
        truth = [mask for _, mask in pairs]

    model = LLMSeg.from_config(config.model_config(), device=config.device)
    out_dir = Path(config.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(out_dir / "image.png")
    start = time.perf_counter()
    frame = model.prepare(image)
    logger.info("frame prepared in %.0f ms: %d proposals", 1000 * (time.perf_counter() - start), frame.proposals.count)
    report = []
    for i, (text, gt) in enumerate(zip(instructions, truth)):
        result = model.query(frame, text)
        instances = result.instances
        entry = {
            "instruction": text,
            "answer": result.answer,
            "instances": len(instances),
            "selected_proposals": len(result.proposal_indices),
            "pixels": int(result.mask.sum()),
            "scores": [round(inst.score, 3) for inst in instances],
            "boxes_xywh": [[int(v) for v in inst.box] for inst in instances],
            "instance_proposals": [inst.proposal_indices.tolist() for inst in instances],
            "timings_ms": {k: round(1000 * v, 1) for k, v in result.timings.items()},
        }
        caption = f'"{text}"'
        if gt is not None:
            union = (result.mask | gt).sum()
            entry["iou"] = round(float((result.mask & gt).sum() / union) if union else 1.0, 3)
            caption += f"\nIoU {entry['iou']:.2f} against the scene's ground truth"
        picture = render_instances(image, result.instance_masks, result.instance_scores, caption)
        Image.fromarray(picture).save(out_dir / f"overlay_{i}.png")
        report.append(entry)
        logged = ("instances", "selected_proposals", "iou", "scores", "timings_ms")
        logger.info("%r -> %s", text, {k: entry[k] for k in logged if k in entry})
    (out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("wrote %s", out_dir)
    return report


COMMAND = Command(
    name="llmseg-demo",
    module="llmseg_model.demo",
    config=DemoConfig,
    run=run,
    description="Run LLM-Seg on one image with one or more instructions.",
    model_field="model",
    check=check_paths,
    outputs=lambda config: [config.out],
    uses_transformers=True,
)


main = COMMAND.main


if __name__ == "__main__":
    main()
