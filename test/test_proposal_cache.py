"""Proposal cache with a real tiny SAM: round trip, resume, atomic writes, mismatch errors, CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from llmseg_model.config import ProposalConfig, tiny_config
from llmseg_model.data import proposal_cache as pc
from llmseg_model.data.mixing import DatasetSpec, build_dataset
from llmseg_model.data.procedural import ProceduralConfig, ProceduralDataset
from llmseg_model.data.proposal_cache import CacheMismatchError, ProposalCache, precompute, sam_fingerprint
from llmseg_model.modeling.proposals import Proposals, ProposalGenerator, build_sam

SCENES = ProceduralConfig(height=64, width=80, instructions_per_scene=2)


def small_config():
    config = tiny_config()
    # Random SAM predicts low IoU: let its masks through so there is something to cache.
    config.proposals = dataclasses.replace(
        config.proposals, pred_iou_thresh=0.0, stability_score_thresh=0.0, points_per_side=4
    )
    return config


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    config = small_config()
    return ProposalGenerator(build_sam(config.sam), config.proposals)


def open_cache(root, generator=None, **kwargs):
    config = small_config()
    return ProposalCache(root, config.sam, config.proposals, generator=generator, **kwargs)


def assert_same(a: Proposals, b: Proposals) -> None:
    assert a.rles == b.rles and a.image_size == b.image_size
    torch.testing.assert_close(a.lowres, b.lowres)
    np.testing.assert_array_equal(a.areas, b.areas)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.sam_scores, b.sam_scores)


def test_precompute_resumes_and_round_trips(tmp_path, generator):
    data = ProceduralDataset("val", 2, SCENES)  # 4 samples on 2 images
    cache = open_cache(tmp_path / "cache", generator)
    stats = precompute([data], cache, progress=False)
    assert (stats.computed, stats.skipped) == (2, 0)
    files = sorted((tmp_path / "cache" / "proposals").rglob("*.npz"))
    assert len(files) == 2
    mtimes = [f.stat().st_mtime_ns for f in files]
    # A second run (a new process would do the same) computes nothing.
    again = precompute([data], open_cache(tmp_path / "cache", generator), progress=False)
    assert (again.computed, again.skipped) == (0, 2)
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    # What comes back is what SAM produced, at native resolution.
    sample = data[0]
    stored = open_cache(tmp_path / "cache").get(sample)
    assert_same(stored, generator(sample.load_image()))
    assert stored.image_size == (64, 80) and stored.count >= 1
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_sharded_precompute_fills_one_cache(tmp_path, generator):
    data = ProceduralDataset("train", 4, SCENES)
    computed = 0
    for index in range(2):
        stats = precompute([data], open_cache(tmp_path, generator), shard=(index, 2), progress=False)
        computed += stats.computed
        assert stats.computed + stats.other_shard == 4
    assert computed == 4
    with pytest.raises(ValueError, match="shard"):
        precompute([data], open_cache(tmp_path, generator), shard=(2, 2), progress=False)


def test_precompute_renders_only_the_images_it_computes(tmp_path, generator, scene_renders):
    rendered = scene_renders
    stats = precompute([ProceduralDataset("train", 4, SCENES)], open_cache(tmp_path, generator), shard=(0, 2), progress=False)
    assert len(rendered) == stats.computed < 4  # the other shard's scenes are never drawn
    rendered.clear()
    again = precompute([ProceduralDataset("train", 4, SCENES)], open_cache(tmp_path, generator), shard=(0, 2), progress=False)
    assert again.skipped == stats.computed and not rendered  # cached scenes neither


def test_interrupted_write_leaves_nothing(tmp_path, generator, monkeypatch):
    data = ProceduralDataset("val", 1, SCENES)
    cache = open_cache(tmp_path, generator)

    def broken_save(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # the process is stopped mid-write

    monkeypatch.setattr(pc.np, "savez_compressed", broken_save)
    with pytest.raises(KeyboardInterrupt):
        precompute([data], cache, progress=False)
    monkeypatch.undo()
    assert not list(tmp_path.rglob("*.npz")) and not list(tmp_path.rglob("*.tmp"))
    # A temp file left by a killed process is never read and does not block the resume.
    target = cache.path("procedural", data[0].image_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    (target.parent / f".{target.name}.999.deadbeef.tmp").write_bytes(b"garbage")
    assert precompute([data], cache, progress=False).computed == 1
    assert cache.get(data[0]).image_size == (64, 80)


def test_mismatch_is_a_clear_error(tmp_path, generator):
    config = small_config()
    open_cache(tmp_path, generator)
    other = dataclasses.replace(config.proposals, top_k=7, lowres_size=32)
    with pytest.raises(CacheMismatchError, match=r"proposals.top_k: cache has 16, expected 7(.|\n)*proposals.lowres_size"):
        ProposalCache(tmp_path, config.sam, other)
    torch.manual_seed(1)
    other_sam = ProposalGenerator(build_sam(config.sam), config.proposals)
    assert sam_fingerprint(other_sam.sam) != sam_fingerprint(generator.sam)
    with pytest.raises(CacheMismatchError, match="sam_weights"):
        ProposalCache(tmp_path, config.sam, config.proposals, generator=other_sam)
    bigger = dataclasses.replace(config.sam, encoder_depth=5)
    with pytest.raises(CacheMismatchError, match="sam.encoder_depth"):
        ProposalCache(tmp_path, bigger, config.proposals)
    with pytest.raises(ValueError, match="generator's ProposalConfig"):
        ProposalCache(tmp_path / "new", config.sam, other, generator=generator)


def test_reader_errors(tmp_path, generator):
    data = ProceduralDataset("val", 1, SCENES)
    with pytest.raises(FileNotFoundError, match="no proposal cache"):
        open_cache(tmp_path / "none")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        open_cache(tmp_path / "full", generator)
    cache = open_cache(tmp_path / "c", generator)
    reader = open_cache(tmp_path / "c")
    with pytest.raises(KeyError, match="run python -m llmseg_model.data.proposal_cache"):
        reader.get(data[0])
    # With a generator, a miss is computed and stored.
    computed = cache.get(data[0])
    assert_same(reader.get(data[0]), computed)
    # Same id, other pixels (another procedural seed): refused, not silently reused.
    reseeded = ProceduralDataset("val", 1, dataclasses.replace(SCENES, seed=5))
    assert reseeded[0].image_id == data[0].image_id
    with pytest.raises(ValueError, match="different image"):
        reader.get(reseeded[0])
    assert open_cache(tmp_path / "c", verify=False).get(reseeded[0]).rles == computed.rles
    cache.path("procedural", data[0].image_id).write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="corrupt proposal cache file"):
        reader.get(data[0])


def test_cli_fills_and_resumes(tmp_path):
    config = small_config()
    config.weights.sam_checkpoint = ""
    config_path = tmp_path / "model.json"
    config.save(config_path)
    argv = [
        "--cache-dir", str(tmp_path / "cache"),
        "--preset", str(config_path),
        "--random-sam-weights",
        "--data", "procedural:test,size=2,height=64,width=64,instructions_per_scene=2",
        "--no-progress",
    ]
    stats = pc.run_cli(argv)
    assert (stats.computed, stats.skipped) == (2, 0)
    assert pc.run_cli(argv).skipped == 2
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["proposals"]["points_per_side"] == 4 and len(manifest["sam_weights"]) == 64
    data = build_dataset(DatasetSpec.parse("procedural:test,size=2,height=64,width=64,instructions_per_scene=2"))
    assert ProposalCache(tmp_path / "cache", config.sam, config.proposals).get(data[3]).image_size == (64, 64)
    with pytest.raises(SystemExit) as refused:
        pc.run_cli(["--cache-dir", str(tmp_path / "x"), "--data", "procedural:test,size=1",
                    "--model.weights.sam_checkpoint", str(tmp_path / "missing.safetensors")])
    assert refused.value.code == 2 and not (tmp_path / "x").exists()


def test_cli_takes_everything_from_a_training_config(tmp_path):
    (tmp_path / "train.yaml").write_text(
        f"""
preset: tiny
model:
  proposals: {{pred_iou_thresh: 0.0, stability_score_thresh: 0.0, points_per_side: 4}}
cache_dir: {tmp_path / 'cache'}
datasets:
  - {{kind: procedural, split: train, size: 1, procedural: {{height: 64, width: 64, instructions_per_scene: 2}}}}
"""
    )
    stats = pc.run_cli(["--train-config", str(tmp_path / "train.yaml"), "--random-sam-weights", "--no-progress"])
    assert stats.computed == 1
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["proposals"]["points_per_side"] == 4


# The proposals section of a tiny-preset manifest as caches recorded it before ProposalConfig had
# lowres_layout / sampling / refine / engine settings: the dense grid must keep this identity.
EARLIER_TINY_DENSE_IDENTITY = {
    "max_side": 256, "top_k": 16, "points_per_side": 16, "points_per_batch": 256, "pred_iou_thresh": 0.7,
    "stability_score_thresh": 0.8, "box_nms_thresh": 0.7, "min_mask_region_area": 0, "lowres_size": 64,
}


def dense_tiny() -> ProposalConfig:
    """The tiny preset's dense grid through segment-anything's decoder, as earlier caches made it."""
    return dataclasses.replace(tiny_config().proposals, sampling="grid", points_per_side=16, decoder="sam")


def test_dense_grid_keeps_the_identity_earlier_caches_recorded():
    sam = tiny_config().sam
    identity = pc.cache_identity(sam, dense_tiny())
    assert identity["proposals"] == EARLIER_TINY_DENSE_IDENTITY
    # The paper preset's copies are padded (not what earlier caches hold), so that is recorded.
    assert pc.cache_identity(sam, ProposalConfig())["proposals"] == {
        **{k: getattr(ProposalConfig(), k) for k in EARLIER_TINY_DENSE_IDENTITY}, "lowres_layout": "pad",
    }
    # How fast (engine) never counts; refine settings only count when refining.
    assert pc.cache_identity(sam, dataclasses.replace(dense_tiny(), engine="segment_anything")) == identity
    assert pc.cache_identity(sam, dataclasses.replace(dense_tiny(), refine_rounds=5)) == identity
    # The fused decoder equals SAM's only up to float rounding: its caches are told apart.
    assert pc.cache_identity(sam, dataclasses.replace(dense_tiny(), decoder="fused"))["proposals"] == {
        **EARLIER_TINY_DENSE_IDENTITY, "decoder": "fused",
    }
    refine = dataclasses.replace(dense_tiny(), sampling="refine", points_per_side=6, refine_rounds=1)
    assert pc.cache_identity(sam, refine)["proposals"] == {
        **EARLIER_TINY_DENSE_IDENTITY, "points_per_side": 6, "sampling": "refine", "refine_rounds": 1,
        **{k: getattr(refine, k) for k in pc.REFINE_PROPOSAL_FIELDS if k != "refine_rounds"},
    }


@pytest.mark.parametrize("recorded", ["before lowres_layout", "with lowres_layout"])
def test_caches_written_before_the_new_settings_still_open(tmp_path, recorded):
    sam = tiny_config().sam
    proposals = dict(EARLIER_TINY_DENSE_IDENTITY)
    if recorded == "with lowres_layout":  # every ProposalConfig field of that time, as asdict wrote it
        proposals["lowres_layout"] = "stretch"
    manifest = {"format": pc.CACHE_FORMAT, "sam": dataclasses.asdict(sam), "proposals": proposals, "sam_weights": "0" * 64}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert ProposalCache(tmp_path, sam, dense_tiny()).manifest["proposals"] == proposals
    with pytest.raises(CacheMismatchError, match="proposals.sampling: missing in cache"):
        ProposalCache(tmp_path, sam, dataclasses.replace(dense_tiny(), sampling="refine"))
    with pytest.raises(CacheMismatchError, match="proposals.lowres_layout: missing in cache"):
        ProposalCache(tmp_path, sam, dataclasses.replace(dense_tiny(), lowres_layout="pad"))


def test_refine_and_dense_caches_are_told_apart(tmp_path):
    config = small_config()
    torch.manual_seed(0)
    sam = build_sam(config.sam)
    refine = dataclasses.replace(config.proposals, sampling="refine")
    ProposalCache(tmp_path, config.sam, refine, generator=ProposalGenerator(sam, refine))
    dense = dataclasses.replace(refine, sampling="grid")
    with pytest.raises(CacheMismatchError, match="proposals.sampling: cache has 'refine', expected the default"):
        ProposalCache(tmp_path, config.sam, dense)
    assert ProposalCache(tmp_path, config.sam, refine).manifest["proposals"]["sampling"] == "refine"
