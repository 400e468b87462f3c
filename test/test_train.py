import json
from pathlib import Path

import pytest
import torch
import yaml

from llmseg_model.train import TrainConfig, build_scheduler, fill_deepspeed_config, train

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


def rates(config: TrainConfig, ticks_per_step: int) -> list[float]:
    """The learning rate each optimizer step uses, with the scheduler ticked as accelerate does."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = build_scheduler(optimizer, config, ticks_per_step)
    used = []
    for _ in range(config.steps):
        used.append(scheduler.get_last_lr()[0])
        optimizer.step()
        for _ in range(ticks_per_step):
            scheduler.step()
    return used


def test_linear_schedule_warms_up_then_decays_to_zero_for_any_process_count():
    config = TrainConfig(lr=1.0, steps=20, warmup_steps=4, lr_schedule="linear")
    one = rates(config, 1)
    assert one[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert one[12] == pytest.approx(8 / 16) and one[-1] == pytest.approx(1 / 16)
    assert rates(config, 2) == pytest.approx(one) and rates(config, 8) == pytest.approx(one)


def test_cosine_schedule_ends_at_its_floor():
    values = rates(TrainConfig(lr=1.0, steps=100, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1), 3)
    assert values[10] == pytest.approx(1.0) and values[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


def test_global_batch_sets_the_accumulation():
    config = TrainConfig(batch_size=1, global_batch=20)
    assert [config.accumulation(n) for n in (1, 2, 4)] == [20, 10, 5]
    with pytest.raises(ValueError, match="not a multiple"):
        config.accumulation(3)
    assert TrainConfig(grad_accum=4).accumulation(8) == 4


def test_relative_data_paths_are_taken_under_data_root():
    config = TrainConfig.from_dict(
        {
            "data_root": "/data/lisa",
            "datasets": [{"kind": "ade20k", "path": "."}, {"kind": "reasonseg", "path": "/elsewhere/train"}],
            "val_datasets": [{"kind": "reasonseg", "path": "reason_seg/ReasonSeg/val"}],
        }
    )
    assert [d.path for d in config.datasets] == ["/data/lisa", "/elsewhere/train"]
    assert config.val_datasets[0].path == "/data/lisa/reason_seg/ReasonSeg/val"


def test_config_from_yaml_rejects_unknown_keys(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"steps": 3, "datasets": [{"kind": "procedural", "size": 2}]}))
    assert TrainConfig.from_yaml(path).datasets[0].size == 2
    with pytest.raises(ValueError):
        TrainConfig.from_dict({"stpes": 3})


@pytest.mark.parametrize(
    "name", ["train_tiny.yaml", "train_paper.yaml", "train_paper_reasonseg.yaml", "train_paper_llmseg40k.yaml"]
)
def test_shipped_train_configs_load_and_are_runnable(name):
    config = TrainConfig.from_yaml(CONFIG_DIR / name)
    config.model_config()  # the preset and its overrides resolve
    assert not (config.memo_images and config.num_workers), "the memo lives in the main process"
    if config.preset.startswith("paper"):  # ViT-L features are ~8 MB an image: no memo at this scale
        assert config.memo_images == 0 and config.num_workers > 0


def test_paper_reasonseg_config_is_the_published_recipe():
    config = TrainConfig.from_yaml(CONFIG_DIR / "train_paper_reasonseg.yaml")
    groups = {"sem": ("ade20k", "cocostuff", "pascal_part", "paco_lvis", "mapillary"),
              "refer": ("refclef", "refcoco", "refcoco+", "refcocog"), "reason": ("reasonseg",)}
    shares = {g: sum(d.ratio for d in config.datasets if d.kind in kinds) for g, kinds in groups.items()}
    assert shares == pytest.approx({"sem": 9.0, "refer": 3.0, "reason": 1.0})
    assert len({d.ratio for d in config.datasets if d.kind in groups["sem"]}) == 1  # uniform within a group
    assert (config.lr, tuple(config.betas), config.weight_decay, config.lr_schedule) == (1e-4, (0.9, 0.95), 0.0, "linear")
    assert (config.warmup_steps, config.steps, config.queries_per_image, config.batch_size) == (100, 5000, 3, 1)
    assert config.accumulation(2) == 10 and config.samples_per_epoch // config.global_batch == 500
    assert config.val_datasets[0].kind == "reasonseg" and config.val_scoring == "resize1024" and config.eval_every == 0
    finetune = TrainConfig.from_yaml(CONFIG_DIR / "train_paper_llmseg40k.yaml")
    assert (finetune.lr, finetune.steps, finetune.eval_every, finetune.val_scoring) == (1e-5, 2500, 500, "native")
    assert finetune.init_from.endswith("best") and [d.kind for d in finetune.datasets] == ["llmseg40k"]


def test_deepspeed_config_takes_accumulation_and_clipping_from_the_training_config(monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin

    launch = load_config_from_file(str(CONFIG_DIR / "accelerate_deepspeed_zero2.yaml"))
    # what `accelerate launch` exports for this config file
    monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", ",".join(launch.deepspeed_config))
    ds_file = Path(__file__).resolve().parents[1] / launch.deepspeed_config["deepspeed_config_file"]
    plugin = DeepSpeedPlugin(hf_ds_config=str(ds_file))
    assert plugin.deepspeed_config["gradient_accumulation_steps"] == "auto"
    fill_deepspeed_config(plugin, TrainConfig(max_grad_norm=0.5), accumulation=10)
    assert plugin.deepspeed_config["gradient_accumulation_steps"] == 10
    assert plugin.deepspeed_config["gradient_clipping"] == 0.5
    fixed = DeepSpeedPlugin(hf_ds_config={**json.loads(ds_file.read_text()), "gradient_accumulation_steps": 1})
    with pytest.raises(ValueError, match="gradient_accumulation_steps=1"):
        fill_deepspeed_config(fixed, TrainConfig(), accumulation=4)


def test_loss_decreases_and_resumes(untrained_tiny_config, tmp_path):
    weights = untrained_tiny_config.weights
    config = TrainConfig.from_dict(
        {
            "preset": "tiny",
            "model": {
                "weights": {"sam_checkpoint": weights.sam_checkpoint, "dinov2_path": weights.dinov2_path, "llava_path": weights.llava_path},
                "proposals": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "points_per_side": 4},
            },
            "output_dir": str(tmp_path / "run"),
            "cache_dir": str(tmp_path / "cache"),
            "datasets": [{"kind": "procedural", "size": 4}],
            "steps": 40,
            "batch_size": 4,
            "lr": 3e-3,
            "warmup_steps": 2,
            "log_every": 5,
            "save_every": 20,
            "prefill_workers": 1,  # the memo is filled by a worker process before the first step
        }
    )
    final = train(config)
    assert (final / "llmseg.safetensors").is_file()
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 40
    assert log[-1]["total"] < 0.7 * log[0]["total"]
    assert (tmp_path / "run" / "checkpoint-20").is_dir()
    assert json.loads((tmp_path / "run" / "checkpoint-20" / "trainer_state.json").read_text())["step"] == 20
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["processes"] == 1
    # a rerun with more steps resumes from the checkpoint instead of starting over
    config.steps = 45
    train(config)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 45 and any(r["step"] == 25 for r in log[len(log) - 5 :])
