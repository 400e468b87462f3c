import json

import pytest
import yaml

from llmseg_model.train import TrainConfig, lr_lambda, train


def test_schedule_warms_up_then_decays_to_floor():
    values = [lr_lambda(s, 10, 100, 0.1) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[50] < 1.0 and values[-1] == pytest.approx(0.1, abs=1e-3)


def test_config_from_yaml_rejects_unknown_keys(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"steps": 3, "datasets": [{"kind": "procedural", "size": 2}]}))
    assert TrainConfig.from_yaml(path).datasets[0].size == 2
    with pytest.raises(ValueError):
        TrainConfig.from_dict({"stpes": 3})


@pytest.mark.parametrize("name", ["train_tiny.yaml", "train_paper.yaml"])
def test_shipped_train_configs_load_and_are_runnable(name):
    from pathlib import Path

    config = TrainConfig.from_yaml(Path(__file__).resolve().parents[1] / "config" / name)
    config.model_config()  # the preset and its overrides resolve
    assert not (config.memo_images and config.num_workers), "the memo lives in the main process"
    if config.preset == "paper":  # ViT-L features are ~8 MB an image: no memo at this scale
        assert config.memo_images == 0 and config.num_workers > 0


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
    # a rerun with more steps resumes from the checkpoint instead of starting over
    config.steps = 45
    train(config)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 45 and any(r["step"] == 25 for r in log[len(log) - 5 :])
