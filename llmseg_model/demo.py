"""The main job on the embedded default: segment a scene from instructions with the tiny preset.

    python -m llmseg_model.demo                      # a held-out procedural scene, its own instructions
    python -m llmseg_model.demo --image photo.png --instruction "the thing I could roll"

Writes a picture per instruction (llmseg_model.visualize: the instances the selected proposals
form, each outlined and numbered, under a caption with the instruction and scores) and a results
JSON to --out, and logs instances, IoU and timings.
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
from llmseg_model.visualize import render_instances

logger = logging.getLogger("llmseg_model.demo")


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


if __name__ == "__main__":
    main()
