"""The frame-latency benchmark's structure on tiny shapes (a few frames; speed is not checked)."""

from __future__ import annotations

import json

import pytest

from llmseg_model import latency
from llmseg_model.cli import parse_command
from llmseg_model.evaluation import random_models
from llmseg_model.evaluation.stats import describe_platform
from llmseg_model.latency import LatencyConfig, run_latency

SMALL_MODES = {
    "dense": {"sampling": "grid", "points_per_side": 4},
    "refine": {"sampling": "refine", "points_per_side": 2},
}


def test_random_weight_run_reports_every_quantity_as_a_ratio_to_the_encoder(tmp_path):
    config = LatencyConfig(
        random_weights=True, modes=SMALL_MODES, frames=2, iterations=2, warmup=1, instructions=0,
        frame_height=64, frame_width=80, clock="process", output_dir=str(tmp_path), progress=False,
    )
    report = run_latency(config)
    quantities = report["quantities"]
    assert list(quantities) == ["sam_encoder", "proposals/dense", "proposals/refine", "dinov2"]
    assert quantities["sam_encoder"]["ratio_to_encoder"] == 1.0
    for stats in quantities.values():
        assert stats["count"] == 3 and stats["median_ms"] > 0 and stats["ratio_to_encoder"] > 0
    assert quantities["proposals/dense"]["prompts_per_frame"] == 16
    assert quantities["proposals/refine"]["prompts_per_frame"] >= 4
    assert report["frame_size"] == [64, 80] and report["modes"]["refine"]["sampling"] == "refine"
    assert "recall" not in report
    assert json.loads((tmp_path / "latency.json").read_text())["quantities"].keys() == quantities.keys()
    markdown = (tmp_path / "latency.md").read_text()
    assert "| proposals/refine |" in markdown and "x encoder" in markdown and "process clock" in markdown
    assert f"on {describe_platform(report['platform'])};" in markdown  # the machine is named


def test_shipped_tiny_weights_time_prepare_and_measure_recall(tmp_path):
    config = LatencyConfig(
        modes={"dense": SMALL_MODES["dense"]}, frames=1, iterations=1, warmup=0, recall_scenes=2, instructions=0,
        output_dir=str(tmp_path), progress=False,
    )
    report = run_latency(config)
    prepare = report["quantities"]["prepare/dense"]
    assert {"proposals", "features", "vision"} <= set(prepare["stages"])
    assert prepare["median_ms"] >= prepare["stages"]["proposals"]["median_ms"]
    recall = report["recall"]["dense"]
    assert 0.0 <= recall["recall@0.5"] <= 1.0 and 0.0 <= recall["mean_best_iou"] <= 1.0
    assert "held-out val scenes" in (tmp_path / "latency.md").read_text()


def test_modes_and_settings_are_checked():
    assert latency.parse_modes(["refine:sampling=refine,points_per_side=5", "preset"]) == {
        "refine": {"sampling": "refine", "points_per_side": 5}, "preset": {},
    }
    with pytest.raises(ValueError, match="key=value"):
        latency.parse_modes(["refine:points_per_side"])
    with pytest.raises(ValueError, match="modes.x: .*unknown setting"):
        LatencyConfig(modes={"x": {"grid_size": 3}})
    with pytest.raises(ValueError, match="modes.x: proposals.sampling must be one of"):
        LatencyConfig(mode=["x:sampling=sparse"])
    with pytest.raises(ValueError, match="recall_split"):
        LatencyConfig(recall_split="train")
    with pytest.raises(ValueError, match="clock"):
        LatencyConfig(clock="cpu")
    with pytest.raises(ValueError, match="wall clock on a GPU"):
        LatencyConfig(clock="process", device="cuda")
    with pytest.raises(ValueError, match="warmup"):
        LatencyConfig(frames=1, iterations=1, warmup=1)
    assert set(LatencyConfig().mode_configs()) == set(latency.DEFAULT_MODES["tiny"])


def test_command_line_reaches_the_settings():
    argv = ["--random-weights", "--mode", "dense:points_per_side=4", "--mode", "refine5:points_per_side=5",
            "--model.sam.encoder_depth", "2", "--model.sam.encoder_global_attn_indexes", "[1]",
            "--dinov2", "{num_hidden_layers: 1}", "--clock", "process", "--recall-scenes", "3"]
    config = parse_command(latency.COMMAND, argv, "llmseg-latency").config
    assert config.random_weights and config.clock == "process" and config.recall_scenes == 3
    assert config.modes == {"dense": {"points_per_side": 4}, "refine5": {"points_per_side": 5}}
    assert config.model_config().sam.encoder_depth == 2 and config.dinov2 == {"num_hidden_layers": 1}
    assert config.mode_configs()["refine5"].sampling == "refine"  # the tiny preset's, overridden


@pytest.mark.parametrize("random_weights", [False, True])
def test_instruction_half_reports_ratios_to_the_lower_bound(tmp_path, random_weights):
    """Shipped tiny weights, or a random LLaVA of the preset's shape on synthetic proposals."""
    config = LatencyConfig(
        random_weights=random_weights, modes={"preset": {}}, frames=1, iterations=2, warmup=1, instructions=2,
        batch_sizes=[1, 2], frame_height=96, frame_width=96, output_dir=str(tmp_path), progress=False,
    )
    report = run_latency(config)
    quantities = report["quantities"]
    # The tiny preset verifies its answer (with its weights or random ones) and, on the CPU, shares
    # the prompt prefix.
    assert report["answering"] == {"answer_mode": "verified", "prefix_attention": "auto", "shares_prefix": True}
    for key in ("plain", "lower_bound", "llm", "batch_1", "batch_2", "fusion", "selection"):
        stats = quantities[f"instruction/{key}"]
        assert stats["count"] == 1 and stats["median_ms"] > 0 and stats["ratio_to_lower_bound"] > 0
    assert quantities["instruction/lower_bound"]["ratio_to_lower_bound"] == 1.0
    assert quantities["instruction/batch_1"]["batch_over_one"] == 1.0 and quantities["instruction/batch_2"]["batch_over_one"] > 0
    assert quantities["frame/prompt_prefix"]["median_ms"] > 0
    # The whole prepare is timed for random weights too (a random LLaVA, SAM's own proposals).
    assert quantities["prepare/preset"]["count"] == 1 and quantities["proposals/preset"]["proposals_per_frame"] >= 0
    # On the CPU prepare overlaps its image branch with SAM; the serial order is timed beside it.
    assert quantities["prepare_serial/preset"]["count"] == 1 and quantities["prepare_serial/preset"]["median_ms"] > 0
    markdown = (tmp_path / "latency.md").read_text()
    assert "| instruction/batch_2 |" in markdown and "| prepare_serial/preset |" in markdown
    assert "| instruction/selection |" in markdown
    assert "one after the other" in markdown
    assert "prompt prefix read from its one copy by every row (`vlm.prefix_attention: auto`)" in markdown
    assert "gpu_memory_gib" not in json.loads((tmp_path / "latency.json").read_text())  # CUDA only
    with pytest.raises(ValueError, match="batch_sizes"):
        LatencyConfig(instructions=2, batch_sizes=[1, 4])


def test_random_llava_shapes_compose_and_build_in_the_run_time_dtype():
    """--llava-full puts the 7B's layer sizes over the preset's CPU shape (image size kept), --llava
    overrides either, and the model is built directly in its dtype without leaving it as torch's
    default."""
    import torch

    config = LatencyConfig(
        preset="paper", random_weights=True, llava_full=True, instructions=0,
        llava={"text_hidden": 64, "text_layers": 1, "text_heads": 2, "text_intermediate": 128, "vision_layers": 1, "vision_hidden": 32, "vision_heads": 2},
        model={"vlm": {"dtype": "bfloat16"}, "sam": {"encoder_depth": 1, "encoder_global_attn_indexes": [0], "encoder_embed_dim": 32, "prompt_embed_dim": 32}},
        dinov2={"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2},
    )
    model = latency.random_model(config, latency.build_parts(config), config.model_config().proposals)
    llava = model.vlm.llava
    text, vision = llava.config.text_config, llava.config.vision_config
    assert text.num_hidden_layers == 1 and text.hidden_size == 64 and text.vocab_size >= 32004
    assert vision.image_size == 224 and vision.patch_size == 14  # LLaVA-v1's 256 image tokens
    assert {p.dtype for name, p in llava.named_parameters() if "lora_" not in name} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32
    assert random_models.RANDOM_LLAVA["paper_llava15"]["image_size"] == 336
    assert random_models.llava_shape("paper", full=True)["text_layers"] == 32
    assert random_models.llava_shape("paper", full=True, overrides={"text_layers": 2})["image_size"] == 224
