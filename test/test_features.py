import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import Dinov2Config, Dinov2Model

from llmseg_model.config import FeatureConfig
from llmseg_model.modeling.features import HubInterpolationEmbeddings, MaskFeatureExtractor, letterbox_size


def make(**settings):
    torch.manual_seed(0)
    dino = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, patch_size=16, image_size=64))
    config = FeatureConfig(image_size=64, embed_dim=8, layout="stretch", pool_size=0)
    for key, value in settings.items():
        setattr(config, key, value)
    return MaskFeatureExtractor(dino, config)


def test_dinov2_is_frozen_and_projection_trains():
    ext = make().train()
    assert not any(p.requires_grad for p in ext.dinov2.parameters())
    assert not ext.dinov2.training
    assert all(p.requires_grad for p in ext.proj.parameters())


def test_patch_grid_and_pooling_is_a_weighted_mean():
    ext = make()
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    feats = ext.patch_features(ext.preprocess(image))
    assert feats.shape == (1, 32, 4, 4)
    masks = torch.zeros(1, 3, 16, 16)
    masks[0, 0, :4, :4] = 1  # exactly patch (0, 0)
    masks[0, 1] = 1  # everything
    pooled = ext.pool(feats, masks)
    projected = ext.proj(feats)
    assert torch.allclose(pooled[0, 0], projected[0, :, 0, 0], atol=1e-5)
    assert torch.allclose(pooled[0, 1], projected[0].mean(dim=(1, 2)), atol=1e-5)
    assert torch.equal(pooled[0, 2], torch.zeros(8))  # empty mask pools to zeros, not NaN


def test_letterbox_resizes_the_long_side_and_zero_pads_after_normalising():
    """The published DINOv2 input: ResizeLongestSide (PIL bilinear, int(x * scale + 0.5)),
    (x - 255 mean) / (255 std), zero padding bottom/right (utils/reason_seg_dataset.py)."""
    ext = make(layout="letterbox")
    image = np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    pixels = ext.preprocess(image)[0]
    assert pixels.shape == (3, 64, 64) and letterbox_size(50, 70, 64) == (46, 64)
    resized = np.asarray(Image.fromarray(image).resize((64, 46), Image.BILINEAR)).astype(np.float32)
    mean = np.array([123.675, 116.28, 103.53], np.float32)
    std = np.array([58.395, 57.12, 57.375], np.float32)
    expected = torch.from_numpy((resized - mean) / std).permute(2, 0, 1)
    assert torch.allclose(pixels[:, :46], expected, atol=1e-5)
    assert torch.equal(pixels[:, 46:], torch.zeros(3, 18, 64))


def test_pooling_on_upsampled_features_follows_the_published_formula():
    """pool_size N: features bilinear to N x N, then (W @ F^T) / (sum W + 1e-8) (model/LISA.py)."""
    ext = make(pool_size=32)
    feats = torch.randn(1, 32, 4, 4)
    masks = (torch.rand(1, 5, 32, 32) > 0.6).float()
    pooled = ext.pool(feats, masks)[0]
    up = F.interpolate(ext.proj(feats), size=(32, 32), mode="bilinear", align_corners=False)[0].flatten(1)
    weights = masks[0].flatten(1)
    expected = (weights @ up.T) / (weights.sum(-1, keepdim=True) + 1e-8)
    assert torch.allclose(pooled, expected, atol=1e-5)


def test_hub_position_embedding_rule():
    """torch.hub DINOv2: bicubic with scale factor (grid + 0.1) / pretraining grid."""
    config = Dinov2Config(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, patch_size=4, image_size=20)
    torch.manual_seed(0)
    hub = HubInterpolationEmbeddings(config)
    pos = hub.position_embeddings
    out = hub.interpolate_pos_encoding(torch.zeros(1, 1 + 49, 8), 28, 28)
    patch = pos[:, 1:].reshape(1, 5, 5, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(patch, scale_factor=(7.1 / 5, 7.1 / 5), mode="bicubic").permute(0, 2, 3, 1).reshape(1, 49, 8)
    assert torch.allclose(out[:, 1:], expected) and torch.equal(out[:, :1], pos[:, :1])
    exact = F.interpolate(patch, size=(7, 7), mode="bicubic").permute(0, 2, 3, 1).reshape(1, 49, 8)
    assert not torch.allclose(out[:, 1:], exact, atol=1e-4)  # the two rules do sample differently
