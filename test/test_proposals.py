import numpy as np
import pytest
import torch

from llmseg_model.config import tiny_config
from llmseg_model.modeling.proposals import ProposalGenerator, Proposals, build_sam, check_image, resize_long_side


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


def test_filter_first_generator_matches_segment_anything():
    from segment_anything import SamAutomaticMaskGenerator

    config = tiny_config()
    sam = build_sam(config.sam, config.weights.sam_checkpoint)
    gen = ProposalGenerator(sam, config.proposals)
    p = config.proposals
    stock = SamAutomaticMaskGenerator(
        sam, points_per_side=p.points_per_side, points_per_batch=p.points_per_batch, pred_iou_thresh=p.pred_iou_thresh,
        stability_score_thresh=p.stability_score_thresh, box_nms_thresh=p.box_nms_thresh,
    )
    from llmseg_model.data.procedural import ProceduralDataset

    image = ProceduralDataset("val", 1).scene(0).image
    with torch.inference_mode():
        ours, theirs = gen.generator.generate(image), stock.generate(image)
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs):
        assert np.array_equal(a["segmentation"], b["segmentation"])
        assert a["predicted_iou"] == pytest.approx(b["predicted_iou"], abs=1e-5)
