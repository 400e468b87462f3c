"""The published ReasonSeg recipe end to end on fixture data in every source's real format: the
shipped config/train_paper_reasonseg.yaml, shrunk to the tiny preset, fills the proposal cache for
all ten data sets in two shards (sharing COCO pictures between sources) and trains an epoch over the 9:3:1
mixture, up to three questions an image, validating on ReasonSeg val."""

import json
from pathlib import Path

import yaml
from lisa_fixtures import write_everything

from llmseg_model.data.proposal_cache import run_cli
from llmseg_model.train import TrainConfig, train

CONFIG = Path(__file__).resolve().parents[1] / "config" / "train_paper_reasonseg.yaml"


def test_published_recipe_trains_over_every_source(untrained_tiny_config, tmp_path):
    root = tmp_path / "lisa_dataset"
    write_everything(root)
    weights = untrained_tiny_config.weights
    recipe = yaml.safe_load(CONFIG.read_text())
    recipe.update(
        preset="tiny",
        model={"weights": {k: getattr(weights, k) for k in ("sam_checkpoint", "dinov2_path", "llava_path")},
               "proposals": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "points_per_side": 4}},
        data_root=str(root), output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
        samples_per_epoch=26, steps=13, batch_size=2, global_batch=2, warmup_steps=2, lr=1e-3,
        num_workers=0, log_every=1, log_samples=True, cpu_threads=1,
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))

    shards = [run_cli(["--train-config", str(path), "--no-progress", "--shard", f"{i}/2"]) for i in (0, 1)]
    # ade20k 2, COCO 2017 1 (COCO-Stuff and PACO-LVIS share it), Mapillary 1, VOC 1, refCLEF 2,
    # COCO 2014 2 (refCOCO, refCOCO+ and refCOCOg share them), ReasonSeg train 2 + val 2
    assert sum(s.computed for s in shards) == 13 and all(s.computed and not s.failed for s in shards)
    again = run_cli(["--train-config", str(path), "--no-progress"])  # resumable: nothing left to do
    assert (again.computed, again.skipped) == (0, 13)

    best = train(TrainConfig.from_yaml(path))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "total" in r]
    assert [r["step"] for r in steps] == list(range(1, 14)) and all(r["epoch"] == 0 for r in steps)
    rows = [row.split("|", 1) for r in steps for row in r["samples"][0]]
    images = {image for image, _ in rows}
    for prefix in ("ADE_train_", "train2017/", "m0001", "2008_000007", "/images/", "COCO_train2014_", "train_"):
        assert any(prefix in image for image in images), prefix
    texts = {text for _, text in rows}
    assert {"wall", "person", "floor"} & texts and any("the wheel of the car" == t or "car wheel" == t for t in texts)
    per_step = [len(r["samples"][0]) for r in steps]
    assert max(per_step) > 2  # several questions about one image (2 images a step)
    validation = [r for r in records if "val_giou" in r]
    assert [r["step"] for r in validation] == [13] and validation[0]["val_samples"] == 2
    assert best == tmp_path / "run" / "best" and (best / "llmseg.safetensors").is_file()
