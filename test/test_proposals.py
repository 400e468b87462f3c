import dataclasses

import numpy as np
import pytest
import torch

from llmseg_model.config import ProposalConfig, tiny_config
from llmseg_model.modeling.mask_generator import MaskSet, fresh_points, uncovered_centres
from llmseg_model.modeling.proposals import ProposalGenerator, Proposals, build_sam, check_image, resize_long_side
from llmseg_model.tiny.pretrain import validation_scenes


def test_from_masks_sorts_by_area_and_round_trips():
    masks = np.zeros((3, 20, 30), bool)
    masks[0, :2, :2] = True
    masks[1, :10, :10] = True
    masks[2, 5:8, 5:20] = True
    props = Proposals.from_masks(masks, lowres_size=8)
    assert props.areas.tolist() == [100, 45, 4]
    assert np.array_equal(props.masks([0]), masks[1:2])
    assert props.lowres.shape == (3, 8, 8) and props.lowres.dtype == torch.float16
    again = Proposals.from_dict(props.to_dict())
    assert np.array_equal(again.masks(), props.masks()) and again.image_size == (20, 30)
    padded, valid = props.padded_lowres(5)
    assert padded.shape == (5, 8, 8) and valid.tolist() == [True, True, True, False, False]


def test_real_sam_everything_mode_on_native_resolution():
    config = tiny_config()
    config.proposals.pred_iou_thresh = 0.0
    config.proposals.stability_score_thresh = 0.0
    config.proposals.points_per_side = 4
    config.proposals.max_side = 128  # forces the downscale + upscale path
    torch.manual_seed(0)
    gen = ProposalGenerator(build_sam(config.sam), config.proposals)
    image = np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    props = gen(image)
    assert props.image_size == (150, 200)
    assert 0 < props.count <= config.proposals.top_k
    assert np.all(np.diff(props.areas) <= 0)
    assert props.masks().shape == (props.count, 150, 200)


def test_bad_images_are_rejected():
    for bad in (np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32), np.zeros((1, 10, 3), np.uint8), "x"):
        with pytest.raises(ValueError):
            check_image(bad)


def test_resize_long_side_never_upscales():
    image = np.zeros((100, 50, 3), np.uint8)
    assert resize_long_side(image, 200).shape == (100, 50, 3)
    assert resize_long_side(image, 40).shape == (40, 20, 3)


def stock_and_lean(sam, proposals):
    """The same settings through the stock SamAutomaticMaskGenerator and the lean engine (SAM's decoder)."""
    stock = ProposalGenerator(sam, dataclasses.replace(proposals, engine="segment_anything", decoder="sam"))
    return stock, ProposalGenerator(sam, dataclasses.replace(proposals, engine="lean", decoder="sam"))


def assert_same_masks(a: MaskSet, b: MaskSet) -> None:
    assert a.masks.shape == b.masks.shape and a.prompts == b.prompts
    assert np.array_equal(a.masks, b.masks)
    assert np.array_equal(a.scores, b.scores)


@pytest.fixture(scope="module")
def tiny_sam():
    config = tiny_config()
    return build_sam(config.sam, config.weights.sam_checkpoint)


def test_lean_engine_gives_the_stock_generators_masks(tiny_sam):
    """Dense grid, the tiny preset's thresholds: same masks, scores and order as segment-anything."""
    proposals = dataclasses.replace(tiny_config().proposals, sampling="grid", points_per_side=16)
    stock, lean = stock_and_lean(tiny_sam, proposals)
    for scene in validation_scenes(2):
        theirs, ours = stock.masks(scene.image), lean.masks(scene.image)
        assert len(theirs.masks) > 0
        assert_same_masks(ours, theirs)
        a, b = stock(scene.image), lean(scene.image)
        assert a.rles == b.rles and np.array_equal(a.sam_scores, b.sam_scores)


def test_lean_engine_matches_when_every_mask_passes(tiny_sam):
    """No thresholds, several decoder batches, many overlapping masks: NMS order is the stock's."""
    proposals = dataclasses.replace(
        tiny_config().proposals, sampling="grid", points_per_side=6, points_per_batch=10,
        pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.9,
    )
    stock, lean = stock_and_lean(tiny_sam, proposals)
    scene = validation_scenes(2)[1]  # 192 x 256: non-square
    theirs, ours = stock.masks(scene.image), lean.masks(scene.image)
    assert len(theirs.masks) > 20
    assert_same_masks(ours, theirs)


def best_ious(generator: ProposalGenerator, scenes) -> tuple[np.ndarray, float]:
    """Best proposal IoU of every object, and the mean number of prompts decoded."""
    ious, prompts = [], []
    for scene in scenes:
        proposals, count = generator.propose(scene.image)
        prompts.append(count)
        masks = proposals.masks()
        for gt in scene.masks.astype(bool):
            inter = (masks & gt).reshape(len(masks), -1).sum(1)
            union = (masks | gt).reshape(len(masks), -1).sum(1)
            ious.append(float((inter / np.maximum(union, 1)).max()) if len(masks) else 0.0)
    return np.asarray(ious), float(np.mean(prompts))


def test_refine_sampling_keeps_the_dense_grids_recall_with_fewer_prompts(tiny_sam):
    """Held-out val scenes: the coarse grid alone misses objects; refining finds them again."""
    scenes = validation_scenes(12, seed=3)
    base = dataclasses.replace(tiny_config().proposals, points_per_side=16, sampling="grid")
    dense, dense_prompts = best_ious(ProposalGenerator(tiny_sam, base), scenes)
    refine = dataclasses.replace(base, sampling="refine", points_per_side=6)
    refined, refined_prompts = best_ious(ProposalGenerator(tiny_sam, refine), scenes)
    coarse, _ = best_ious(ProposalGenerator(tiny_sam, dataclasses.replace(refine, refine_rounds=0)), scenes)
    assert dense_prompts == 256 and 36 < refined_prompts < 256 / 3
    assert refined.mean() >= dense.mean() - 0.03 and (refined >= 0.5).mean() >= (dense >= 0.5).mean() - 0.03
    assert coarse.mean() < refined.mean() - 0.03


def test_fill_prompts_the_finer_grid_where_nothing_is_kept(tiny_sam):
    refine = dataclasses.replace(tiny_config().proposals, sampling="refine", points_per_side=4, refine_rounds=0)
    image = validation_scenes(1)[0].image
    plain = ProposalGenerator(tiny_sam, refine).masks(image)
    filled = ProposalGenerator(tiny_sam, dataclasses.replace(refine, fill_points_per_side=8)).masks(image)
    assert plain.prompts == 16 and 16 < filled.prompts < 16 + 64  # some grid points lie on kept masks
    assert len(filled.masks) >= len(plain.masks)


def test_uncovered_centres_land_on_the_free_part_of_each_mask():
    mask = torch.zeros((20, 30), dtype=torch.bool)
    mask[2:8, 2:12] = True
    covered = torch.zeros_like(mask)
    half = covered.clone()
    half[:, :8] = True
    # centroid (6.5, 4.5); of the four pixels as near, the first in row-major order: (x=6, y=4)
    assert uncovered_centres(mask[None], covered, max_area=0.5) == [(6.5, 4.5)]
    [(x, y)] = uncovered_centres(mask[None], half, max_area=0.5)
    assert mask[int(y), int(x)] and not half[int(y), int(x)]
    assert uncovered_centres(mask[None], torch.ones_like(mask), max_area=0.5) == [None]
    assert uncovered_centres(torch.ones_like(mask)[None], covered, max_area=0.5) == [None]
    assert uncovered_centres(torch.zeros((0, 20, 30), dtype=torch.bool), covered, max_area=0.5) == []


def test_uncovered_centres_match_the_nearest_free_pixel_of_each_mask_alone():
    """Batched over masks, each answer is the free pixel nearest that mask's free centroid."""
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand((12, 24, 32), generator=generator) > 0.7
    covered = torch.rand((24, 32), generator=generator) > 0.5
    for mask, centre in zip(masks, uncovered_centres(masks, covered, max_area=1.0)):
        ys, xs = torch.nonzero(mask & ~covered, as_tuple=True)
        ys_f, xs_f = ys.float(), xs.float()
        nearest = int(torch.argmin((ys_f - ys_f.mean()) ** 2 + (xs_f - xs_f.mean()) ** 2))
        assert centre == (float(xs[nearest]) + 0.5, float(ys[nearest]) + 0.5)


def test_fresh_points_skip_covered_and_near_points():
    covered = torch.zeros((32, 32), dtype=torch.bool)
    covered[:, :10] = True
    prompted = [np.array([[20.0, 20.0]])]
    points = [(5.0, 5.0), (21.0, 20.0), (30.0, 5.0), (30.5, 6.0), (15.0, 28.0)]
    fresh = fresh_points(points, prompted, covered, min_distance=4.0)
    assert fresh.tolist() == [[30.0, 5.0], [15.0, 28.0]]


def test_proposal_settings_are_checked():
    with pytest.raises(ValueError, match="sampling"):
        ProposalConfig(sampling="sparse")
    with pytest.raises(ValueError, match="engine"):
        ProposalConfig(engine="fast")
    with pytest.raises(ValueError, match="needs proposals.engine: lean"):
        ProposalConfig(sampling="refine", engine="segment_anything")
    with pytest.raises(ValueError, match="min_mask_region_area"):
        ProposalConfig(min_mask_region_area=100)
    assert ProposalConfig(min_mask_region_area=100, engine="segment_anything").min_mask_region_area == 100
