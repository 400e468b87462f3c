import dataclasses

import numpy as np
import pytest
import torch
from segment_anything.predictor import SamPredictor
from segment_anything.utils.amg import batched_mask_to_box, build_point_grid

from llmseg_model.config import ProposalConfig, SamConfig, tiny_config
from llmseg_model.modeling import mask_generator
from llmseg_model.modeling.fused_decoder import FusedTwoWayTransformer
from llmseg_model.modeling.mask_generator import mask_boxes, point_embeddings
from llmseg_model.modeling.proposals import ProposalGenerator, build_sam
from llmseg_model.tiny.pretrain import validation_scenes


@pytest.fixture(scope="module")
def tiny_sam():
    config = tiny_config()
    return build_sam(config.sam, config.weights.sam_checkpoint)


def point_tokens(sam, predictor: SamPredictor, points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's input tokens for single-point prompts, and SAM's dense (no-mask) embedding."""
    coords = torch.as_tensor(predictor.transform.apply_coords(points, predictor.original_size), dtype=torch.float32)
    labels = torch.ones(len(coords), dtype=torch.int)
    sparse, dense = sam.prompt_encoder(points=(coords[:, None], labels[:, None]), boxes=None, masks=None)
    decoder = sam.mask_decoder
    output = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight]).unsqueeze(0).expand(len(coords), -1, -1)
    return torch.cat((output, sparse), dim=1), dense


@torch.inference_mode()
def assert_matches_sams_transformer(sam, image: np.ndarray, points: np.ndarray) -> None:
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    tokens, dense = point_tokens(sam, predictor, points)
    src = torch.repeat_interleave(predictor.features, len(tokens), dim=0) + dense
    pos = torch.repeat_interleave(sam.prompt_encoder.get_dense_pe(), len(tokens), dim=0)
    expected = sam.mask_decoder.transformer(src, pos, tokens)
    fused = FusedTwoWayTransformer(sam)
    fused.set_image(predictor.features)
    for ours, theirs in zip(fused(tokens), expected):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_fused_transformer_computes_sams_two_way_transformer(tiny_sam):
    scene = validation_scenes(2)[1]  # 192 x 256: padded SAM input
    height, width = scene.image.shape[:2]
    assert_matches_sams_transformer(tiny_sam, scene.image, build_point_grid(5) * np.array([width, height]))


def test_fused_transformer_matches_at_other_depths_and_head_counts():
    """Three blocks (two with per-prompt keys), 2 heads, random weights."""
    torch.manual_seed(0)
    config = SamConfig(
        encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=2, encoder_global_attn_indexes=(0,), image_size=128,
        patch_size=16, window_size=4, prompt_embed_dim=32, decoder_depth=3, decoder_mlp_dim=64, decoder_num_heads=2,
    )
    sam = build_sam(config)
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    assert_matches_sams_transformer(sam, image, build_point_grid(3) * np.array([128, 96]))


def test_fused_transformer_needs_an_image(tiny_sam):
    with pytest.raises(RuntimeError, match="set_image"):
        FusedTwoWayTransformer(tiny_sam)(torch.zeros((1, 7, 64)))


@pytest.mark.parametrize("sampling", [{"sampling": "grid", "points_per_side": 16}, {"sampling": "refine"}])
def test_fused_decoder_gives_sams_masks_on_held_out_scenes(tiny_sam, sampling):
    proposals = dataclasses.replace(tiny_config().proposals, **sampling)
    sams = ProposalGenerator(tiny_sam, dataclasses.replace(proposals, decoder="sam"))
    fused = ProposalGenerator(tiny_sam, dataclasses.replace(proposals, decoder="fused"))
    for scene in validation_scenes(3, seed=5):
        theirs, ours = sams.masks(scene.image), fused.masks(scene.image)
        assert len(theirs.masks) > 0 and ours.prompts == theirs.prompts
        assert np.array_equal(ours.masks, theirs.masks)
        np.testing.assert_allclose(ours.scores, theirs.scores, atol=1e-5)


def test_candidates_past_the_mask_budget_are_upsampled_again(tiny_sam, monkeypatch):
    """Kept full-size masks and masks recomputed from low-res logits are the same masks."""
    proposals = dataclasses.replace(tiny_config().proposals, sampling="grid", points_per_side=8)
    image = validation_scenes(1)[0].image
    kept = ProposalGenerator(tiny_sam, proposals).masks(image)
    monkeypatch.setattr(mask_generator, "MASK_BYTES", 256 * 256)  # one 256x256 mask
    again = ProposalGenerator(tiny_sam, proposals).masks(image)
    assert len(kept.masks) > 1 and np.array_equal(kept.masks, again.masks) and np.array_equal(kept.scores, again.scores)


def test_mask_boxes_are_segment_anythings_boxes():
    masks = torch.rand((6, 17, 23), generator=torch.Generator().manual_seed(1)) > 0.97
    masks[0] = False  # empty: zeros
    masks[1] = False
    masks[1, 16, 22] = True  # one pixel in the last corner
    masks[2] = True
    assert torch.equal(mask_boxes(masks), batched_mask_to_box(masks))


def test_fused_decoder_needs_the_lean_engine():
    with pytest.raises(ValueError, match="decoder"):
        ProposalConfig(decoder="fused", engine="segment_anything")
    with pytest.raises(ValueError, match="decoder"):
        ProposalConfig(decoder="fast")


def test_point_embeddings_are_the_prompt_encoders(tiny_sam):
    coords = torch.tensor([[10.0, 200.5], [0.0, 0.0], [255.0, 17.25]], dtype=torch.float64)
    expected, _ = tiny_sam.prompt_encoder(
        points=(coords[:, None, :], torch.ones((3, 1), dtype=torch.int)), boxes=None, masks=None
    )
    assert torch.equal(point_embeddings(tiny_sam.prompt_encoder, coords), expected)
