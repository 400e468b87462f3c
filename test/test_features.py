import numpy as np
import torch
from transformers import Dinov2Config, Dinov2Model

from llmseg_model.config import FeatureConfig
from llmseg_model.modeling.features import MaskFeatureExtractor


def make():
    torch.manual_seed(0)
    dino = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, patch_size=16, image_size=64))
    return MaskFeatureExtractor(dino, FeatureConfig(image_size=64, embed_dim=8))


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
