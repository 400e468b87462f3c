import dataclasses
import time

import numpy as np
import pytest
import torch

from llmseg_model.config import LLMSegConfig, paper_config, tiny_config
from llmseg_model.modeling.model import LLMSeg, vlm_dtype
from llmseg_model.data.procedural import ProceduralDataset


def test_prepare_once_query_many(untrained_tiny_model):
    scene = ProceduralDataset("val", 1).scene(0)
    frame = untrained_tiny_model.prepare(scene.image)
    assert frame.proposals.count > 0 and frame.mask_embeddings.shape[0] == frame.proposals.count
    assert set(frame.timings) == {"proposals", "features", "vision", "prompt_prefix"}
    for instruction in scene.instructions[:2]:
        result = untrained_tiny_model.query(frame, instruction.text)
        assert result.mask.shape == scene.image.shape[:2] and result.mask.dtype == bool
        assert result.iop_scores.shape == (frame.proposals.count,)
        assert {"proposals", "llm", "fusion", "selection"} <= set(result.timings)
        if not result.empty:
            assert np.array_equal(result.mask, result.instance_masks.any(0))


def test_selection_threshold_is_live(untrained_tiny_model):
    scene = ProceduralDataset("val", 1).scene(0)
    frame = untrained_tiny_model.prepare(scene.image)
    selection = untrained_tiny_model.config.selection
    old = selection.iop_threshold, selection.fallback_min_iop
    try:
        selection.iop_threshold = 0.0
        everything = untrained_tiny_model.query(frame, "the red ball")
        selection.iop_threshold = 0.999999
        fallback = untrained_tiny_model.query(frame, "the red ball")
        selection.fallback_min_iop = 1.01  # > 1: no fallback, an empty result is reported
        nothing = untrained_tiny_model.query(frame, "the red ball")
    finally:
        selection.iop_threshold, selection.fallback_min_iop = old
    assert len(everything.proposal_indices) == frame.proposals.count
    best = int(np.argmax(fallback.iou_scores))
    if fallback.iop_scores[best] >= old[1]:  # the tiny preset falls back to the best IoU-head proposal
        assert fallback.proposal_indices.tolist() == [best]
    else:
        assert fallback.empty
    assert nothing.empty and not nothing.mask.any()


def test_bad_inputs_raise_value_errors(untrained_tiny_model):
    frame = untrained_tiny_model.prepare(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError):
        untrained_tiny_model.query(frame, "   ")
    with pytest.raises(ValueError):
        untrained_tiny_model.prepare(np.zeros((64, 64), np.uint8))


def test_save_and_load_trained_round_trip(untrained_tiny_model, tmp_path):
    untrained_tiny_model.save_trained(tmp_path / "w")
    state = untrained_tiny_model.trainable_state_dict()
    assert any("lora_A" in k for k in state) and any(k.startswith("fusion.") for k in state)
    assert not any(k.startswith(("sam.", "features.dinov2.")) for k in state)
    untrained_tiny_model.load_trained(tmp_path / "w")
    assert LLMSegConfig.load(tmp_path / "w" / "llmseg_config.json").preset == "tiny"


def test_missing_weights_name_the_setting(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights.sam_checkpoint"):
        LLMSeg.from_config(paper_config())
    config = paper_config(sam_checkpoint=str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="weights.sam_checkpoint .* does not exist"):
        LLMSeg.from_config(config)


def test_config_round_trip_and_unknown_keys():
    config = tiny_config()
    again = LLMSegConfig.from_dict(config.to_dict())
    assert dataclasses.asdict(again) == dataclasses.asdict(config)
    with pytest.raises(ValueError, match="unknown setting"):
        LLMSegConfig.from_dict({"fusion": {"depht": 3}})


def test_vlm_dtype_setting():
    assert vlm_dtype("auto", use_cuda=True) == torch.bfloat16
    assert vlm_dtype("auto", use_cuda=False) == torch.float32
    assert vlm_dtype(tiny_config().vlm.dtype, use_cuda=True) == torch.float32  # tiny trains in fp32 on a GPU too
    with pytest.raises(ValueError, match="vlm.dtype must be"):
        vlm_dtype("fp8", use_cuda=False)


def test_vlm_dtype_is_what_the_model_is_built_with(untrained_tiny_config):
    import copy

    config = copy.deepcopy(untrained_tiny_config)
    config.vlm.dtype = "bfloat16"
    model = LLMSeg.from_config(config, load_trained=False)
    assert model.vlm.llava.base_model.model.dtype == torch.bfloat16


def test_trained_state_keeps_norm_running_stats(untrained_tiny_config):
    import copy

    config = copy.deepcopy(untrained_tiny_config)
    config.vlm.seg_batch_norm = True
    model = LLMSeg.from_config(config, load_trained=False)
    state = model.trainable_state_dict()
    assert any(k.endswith("seg_proj.1.running_mean") for k in state)
    assert not any(k.startswith("features.dinov2.") for k in state)


def test_lora_merge_export_loads_and_answers_the_same(untrained_tiny_model, tmp_path):
    torch.manual_seed(0)
    with torch.no_grad():  # make the LoRA deltas non-zero so merging matters
        for name, param in untrained_tiny_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    untrained_tiny_model.export_merged(tmp_path / "export")
    assert (tmp_path / "export" / "llava" / "config.json").is_file()
    again = LLMSeg.from_config(LLMSegConfig.load(tmp_path / "export" / "llmseg_config.json"))
    scene = ProceduralDataset("val", 1).scene(0)
    frame_a = untrained_tiny_model.prepare(scene.image)
    a = untrained_tiny_model.query(frame_a, "the red ball")
    b = again.segment(scene.image, "the red ball")
    assert a.answer == b.answer
    assert np.allclose(a.iop_scores, b.iop_scores, atol=1e-4)


def test_saved_config_is_portable_with_its_weights_folder(tmp_path):
    """Weight paths are stored relative to the config's folder: a copied weights folder loads."""
    import shutil

    from llmseg_model.config import TINY_WEIGHTS_DIR

    copy = tmp_path / "elsewhere" / "tiny"
    shutil.copytree(TINY_WEIGHTS_DIR, copy)
    stored = (copy / "llmseg" / "llmseg_config.json").read_text()
    assert str(TINY_WEIGHTS_DIR) not in stored
    config = LLMSegConfig.load(copy / "llmseg" / "llmseg_config.json")
    assert config.weights.sam_checkpoint == str(copy / "sam.safetensors")
    assert config.weights.llmseg_weights == str(copy / "llmseg")
    model = LLMSeg.from_config(config)
    assert model.config.preset == "tiny"


def test_one_row_per_image_spreads_per_image_work_back_to_rows():
    from llmseg_model.modeling.model import one_row_per_image

    first, rows = one_row_per_image(torch.tensor([0, 0, 0, 1, 2, 2]), 6)
    assert first.tolist() == [0, 3, 4] and rows.tolist() == [0, 0, 0, 1, 2, 2]
    first, rows = one_row_per_image(None, 3)
    assert first.tolist() == rows.tolist() == [0, 1, 2]


def test_prepare_with_given_proposals_skips_sam(untrained_tiny_model):
    scene = ProceduralDataset("val", 1).scene(0)
    computed = untrained_tiny_model.prepare(scene.image)
    given = untrained_tiny_model.prepare(scene.image, proposals=computed.proposals)
    assert "proposals" not in given.timings
    assert torch.allclose(given.mask_embeddings, computed.mask_embeddings)
    with pytest.raises(ValueError, match="proposals are for"):
        untrained_tiny_model.prepare(scene.image[:100], proposals=computed.proposals)


def test_a_bad_instruction_in_a_batch_is_named_by_index(untrained_tiny_model):
    from llmseg_model.modeling.model import InstructionError

    frame = untrained_tiny_model.prepare(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(InstructionError) as error:
        untrained_tiny_model.query_batch(frame, ["the red ball", "  ", "the blue box"])
    assert error.value.index == 1 and "empty" in error.value.reason
    assert untrained_tiny_model.check_instruction("  the   red\nball ") == "the red ball"


def test_overlapped_prepare_gives_what_the_serial_one_gives(untrained_tiny_model):
    """The image branch on the background thread computes the very same frame."""
    scene = ProceduralDataset("val", 1).scene(0)
    serial = untrained_tiny_model.prepare(scene.image, overlap=False)
    overlapped = untrained_tiny_model.prepare(scene.image, overlap=True)
    assert overlapped.proposals.rles == serial.proposals.rles
    assert torch.equal(overlapped.mask_embeddings, serial.mask_embeddings)
    assert torch.equal(overlapped.image_features, serial.image_features)
    assert overlapped.prefix.ids == serial.prefix.ids
    for (k1, v1), (k2, v2) in zip(overlapped.prefix.layers, serial.prefix.layers):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)
    assert set(overlapped.timings) == set(serial.timings) == {"proposals", "features", "vision", "prompt_prefix"}
    text = scene.instructions[0].text
    a, b = untrained_tiny_model.query(overlapped, text), untrained_tiny_model.query(serial, text)
    assert np.array_equal(a.iop_scores, b.iop_scores) and np.array_equal(a.mask, b.mask)


def test_overlapped_prepare_reports_either_branchs_error_and_recovers(untrained_tiny_model, monkeypatch):
    image = ProceduralDataset("val", 1).scene(0).image
    features = untrained_tiny_model.features

    def broken(pixels):
        raise RuntimeError("DINOv2 failed")

    monkeypatch.setattr(features, "patch_features", broken)
    with pytest.raises(RuntimeError, match="DINOv2 failed"):
        untrained_tiny_model.prepare(image, overlap=True)
    monkeypatch.undo()
    finished = []

    def slow_branch(*args):
        time.sleep(0.2)  # still running when the proposal pass fails
        result = LLMSeg._image_branch(untrained_tiny_model, *args)
        finished.append(True)
        return result

    def broken_sam(image):
        raise RuntimeError("SAM failed")

    monkeypatch.setattr(untrained_tiny_model, "_image_branch", slow_branch)
    monkeypatch.setattr(untrained_tiny_model, "proposal_generator", broken_sam)
    with pytest.raises(RuntimeError, match="SAM failed"):
        untrained_tiny_model.prepare(image, overlap=True)
    assert finished == [True]  # waited for, not left running behind the error
    monkeypatch.undo()
    frame = untrained_tiny_model.prepare(image, overlap=True)
    assert frame.proposals.count > 0


def test_a_model_that_has_overlapped_still_deep_copies(untrained_tiny_model):
    """Its background thread is not copied (a thread cannot be): the copy starts its own."""
    import copy
    import pickle

    untrained_tiny_model.prepare(np.zeros((64, 64, 3), np.uint8), overlap=True)
    copied = copy.deepcopy(untrained_tiny_model)
    frame = copied.prepare(np.zeros((64, 64, 3), np.uint8), overlap=True)
    assert frame.mask_embeddings.shape[0] == frame.proposals.count
    assert copied._worker is not untrained_tiny_model._worker
    worker = pickle.loads(pickle.dumps(untrained_tiny_model._worker))
    assert worker.submit(sum, [1, 2]).result() == 3
    worker.shutdown()


def test_the_background_thread_ends_with_release_or_with_its_model(untrained_tiny_model):
    import copy
    import gc
    import threading

    # Threads are followed by identity: other tests' dropped models may still be ending theirs.
    def frame_threads() -> set[threading.Thread]:
        return {thread for thread in threading.enumerate() if thread.name.startswith("llmseg-frame")}

    def started_by(model) -> threading.Thread:
        before = frame_threads()
        model.prepare(np.zeros((64, 64, 3), np.uint8), overlap=True)
        started = frame_threads() - before
        assert len(started) == 1
        return started.pop()

    released = copy.deepcopy(untrained_tiny_model)
    thread = started_by(released)
    released.release()
    assert not thread.is_alive()
    dropped = copy.deepcopy(untrained_tiny_model)
    thread = started_by(dropped)
    del dropped
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()
