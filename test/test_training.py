"""TrainingSet: memoised items, a prefill with worker processes that fills exactly that memo,
several questions per image as rows, and targets at SAM's input size."""

import numpy as np
import pytest
import torch

from llmseg_model.data.mixing import DatasetSpec, build_mixture
from llmseg_model.data.procedural import ProceduralDataset
from llmseg_model.data.training import TrainingSet, collate


def make_set(model, memo: bool, size: int = 3, mixed: bool = False) -> TrainingSet:
    samples = build_mixture([DatasetSpec(kind="procedural", size=size)]) if mixed else ProceduralDataset("train", size)
    proposals = {}

    def proposals_for(sample):  # SAM once per image, as the on-disk cache would give it
        if sample.image_id not in proposals:
            proposals[sample.image_id] = model.proposal_generator(sample.load_image())
        return proposals[sample.image_id]

    def preprocess(image):
        return model.features.preprocess(image)[0], model.vlm.pixel_values(image)[0]

    def frozen(dino_pixels, llava_pixels):
        return model.frozen_features(dino_pixels, llava_pixels)

    for i in range(len(samples)):  # fill the proposals here, before any worker forks
        proposals_for(samples[i])
    return TrainingSet(
        samples, proposals_for, model.config.proposals.top_k, preprocess, frozen if memo else None, memo_items=100
    )


def test_items_carry_pixels_or_memoised_features(untrained_tiny_model):
    plain = make_set(untrained_tiny_model, memo=False)
    item = plain[0]
    assert item["dino_pixels"].dim() == 3 and "dino_features" not in item and not plain.image_memo
    memo = make_set(untrained_tiny_model, memo=True)
    first = memo[0]
    assert first["dino_features"].dim() == 3 and "dino_pixels" not in first
    assert len(memo.image_memo) == 1 and len(memo.target_memo) == 1
    again = memo[1]  # same scene, next instruction: image memoised, new target
    assert again["dino_features"] is first["dino_features"] and len(memo.target_memo) == 2
    batch = collate([first, again])
    assert batch["gt_iou"].shape == (2, untrained_tiny_model.config.proposals.top_k)


@pytest.mark.parametrize("workers,mixed", [(0, False), (2, True)])
def test_prefill_fills_what_a_first_epoch_would(untrained_tiny_model, workers, mixed):
    lazy = make_set(untrained_tiny_model, memo=True, mixed=mixed)
    for i in range(len(lazy)):
        lazy[i]
    filled = make_set(untrained_tiny_model, memo=True, mixed=mixed)
    filled.prefill(workers, batch_size=5, progress=False)
    assert filled.image_memo.keys() == lazy.image_memo.keys() and len(filled.image_memo) == 3
    assert filled.target_memo.keys() == lazy.target_memo.keys() and len(filled.target_memo) == len(lazy)
    for key, part in lazy.image_memo.items():
        for name, value in part.items():
            torch.testing.assert_close(filled.image_memo[key][name], value)
    for key, (iou, iop) in lazy.target_memo.items():
        torch.testing.assert_close(filled.target_memo[key][0], iou)
        torch.testing.assert_close(filled.target_memo[key][1], iop)


def test_prefill_needs_a_memoising_set(untrained_tiny_model):
    with pytest.raises(ValueError, match="frozen backbones"):
        make_set(untrained_tiny_model, memo=False, size=1).prefill(0)


def test_several_questions_per_image_become_rows_the_model_trains_on(untrained_tiny_model, tmp_path):
    from lisa_fixtures import write_ade20k

    from llmseg_model.data.mixing import build_groups

    write_ade20k(tmp_path)
    model = untrained_tiny_model
    groups = build_groups(DatasetSpec(kind="ade20k", path=str(tmp_path)))
    training = TrainingSet(
        groups,
        lambda sample: model.proposal_generator(sample.load_image()),
        model.config.proposals.top_k,
        lambda image: (model.features.preprocess(image)[0], model.vlm.pixel_values(image)[0]),
        queries=2,
    )
    first, second = training[0], training[1]  # image 1 offers nothing: image 0 is drawn again
    assert len(first["instructions"]) == 2 and first["gt_iou"].shape == (2, model.config.proposals.top_k)
    batch = collate([first, second])
    assert batch["image_index"].tolist() == [0, 0, 1, 1] and batch["phrases"] == [True] * 4
    assert len(set(batch["seeds"])) == 4 and training[0]["seeds"] == first["seeds"]  # per row, repeatable
    assert batch["dino_pixels"].shape[0] == 4 and torch.equal(batch["dino_pixels"][0], batch["dino_pixels"][1])
    masks = {s.texts[0]: s.load_mask() for s in groups[0]}
    proposals = model.proposal_generator(groups[0][0].load_image())
    kept = min(proposals.count, model.config.proposals.top_k)
    for row, text in enumerate(batch["instructions"][:2]):  # each row's targets are its own class's
        target = masks[text] == 1
        iou = [(p & target).sum() / max((p | target).sum(), 1) for p in proposals.masks(range(kept))]
        torch.testing.assert_close(batch["gt_iou"][row, : len(iou)], torch.tensor(iou, dtype=torch.float32))
    losses = model(batch)
    assert torch.isfinite(losses.total)


def test_targets_of_a_large_image_are_computed_at_sam_input_size(untrained_tiny_model):
    from llmseg_model.data.procedural import ProceduralConfig
    from llmseg_model.data.training import resize_nearest_centres, target_shape

    assert target_shape((3000, 4000), 1024) == (768, 1024) and target_shape((3000, 4000), 0) == (3000, 4000)
    assert target_shape((600, 800), 1024) == (600, 800)
    grid = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(resize_nearest_centres(grid, (6, 8)), grid.repeat(2, 0).repeat(2, 1))
    model = untrained_tiny_model
    samples = ProceduralDataset("val", 1, ProceduralConfig(height=1200, width=1700, instructions_per_scene=2))
    proposals = model.proposal_generator(samples[0].load_image())
    sets = [
        TrainingSet(samples, lambda s: proposals, model.config.proposals.top_k, None, target_max_side=side)
        for side in (1024, 0)
    ]
    reduced = sets[0]._targets(samples[0], sets[0].target_masks(proposals))
    native = sets[1]._targets(samples[0], sets[1].target_masks(proposals))
    assert sets[0].target_masks(proposals).stack().shape[1:] == (722, 1023)  # int() truncation, as published
    for small, full in zip(reduced, native):
        torch.testing.assert_close(small, full, atol=0.02, rtol=0)
