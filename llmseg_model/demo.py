"""The main job on the embedded default: segment a scene from instructions with the tiny preset.

    python -m llmseg_model.demo                      # a held-out procedural scene, its own instructions
    python -m llmseg_model.demo --image photo.png --instruction "the thing I could roll"

Writes an overlay PNG per instruction and a results JSON to --out, and logs masks and timings.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from llmseg_model.config import WeightPaths, preset_config
from llmseg_model.modeling.model import LLMSeg

logger = logging.getLogger("llmseg_model.demo")

COLOURS = np.array([[255, 64, 64], [64, 200, 255], [255, 220, 0], [120, 255, 120], [255, 0, 255]], np.uint8)


def overlay(image: np.ndarray, instance_masks: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Tint each selected instance in its own colour, so several instances stay distinguishable."""
    out = image.astype(np.float32)
    for i, mask in enumerate(instance_masks):
        out[mask] = (1 - alpha) * out[mask] + alpha * COLOURS[i % len(COLOURS)]
    return out.round().astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run LLM-Seg on one image with one or more instructions.")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "paper"])
    parser.add_argument("--image", help="RGB image file; default: a held-out procedural scene")
    parser.add_argument("--instruction", action="append", default=[], help="repeatable; default: the scene's own")
    parser.add_argument("--scene", type=int, default=0, help="index of the procedural test scene")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="outputs/demo")
    for name in WeightPaths.__dataclass_fields__:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=f"override weights.{name}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    config = preset_config(args.preset)
    for name in WeightPaths.__dataclass_fields__:
        if getattr(args, name):
            setattr(config.weights, name, getattr(args, name))
    model = LLMSeg.from_config(config, device=args.device)

    truth: list[np.ndarray | None] = []
    if args.image:
        image = np.asarray(Image.open(args.image).convert("RGB"))
        instructions = args.instruction or ["the object in the middle"]
        truth = [None] * len(instructions)
    else:
        from llmseg_model.data.procedural import ProceduralDataset

        scene = ProceduralDataset("test", args.scene + 1).scene(args.scene)
        image = scene.image
        pairs = [(text, None) for text in args.instruction] or [
            (ins.text, scene.target_mask(ins.targets) > 0) for ins in scene.instructions
        ]
        instructions = [text for text, _ in pairs]
        truth = [mask for _, mask in pairs]

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(out_dir / "image.png")
    frame = model.prepare(image)
    logger.info("%d proposals in %.0f ms", frame.proposals.count, 1000 * sum(frame.timings.values()))
    report = []
    for i, (text, gt) in enumerate(zip(instructions, truth)):
        result = model.query(frame, text)
        Image.fromarray(overlay(image, result.instance_masks)).save(out_dir / f"overlay_{i}.png")
        entry = {
            "instruction": text,
            "answer": result.answer,
            "instances": len(result.proposal_indices),
            "pixels": int(result.mask.sum()),
            "scores": [round(float(s), 3) for s in result.instance_scores],
            "timings_ms": {k: round(1000 * v, 1) for k, v in result.timings.items()},
        }
        if gt is not None:
            union = (result.mask | gt).sum()
            entry["iou"] = round(float((result.mask & gt).sum() / union) if union else 1.0, 3)
        report.append(entry)
        logger.info("%r -> %s", text, {k: v for k, v in entry.items() if k != "instruction"})
    (out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("wrote %s", out_dir)


if __name__ == "__main__":
    main()
