import pytest
import torch

from llmseg_model.config import FusionConfig
from llmseg_model.modeling.fusion import build_fusion

# (variant, mask_dim, seg_dim): the published fusion has no input projections.
VARIANTS = {"joint": (24, 16), "published": (32, 32)}


@pytest.fixture(params=sorted(VARIANTS))
def variant(request):
    return request.param


def make(variant="joint", dim=32):
    torch.manual_seed(0)
    mask_dim, seg_dim = VARIANTS[variant]
    config = FusionConfig(variant=variant, dim=dim, depth=2, num_heads=4, mlp_dim=64, iop_hidden=16, embedding_hidden=48)
    return build_fusion(config, mask_dim=mask_dim, seg_dim=seg_dim).eval()


def test_shapes_ranges_and_padding(variant):
    fusion = make(variant)
    m, d = VARIANTS[variant]
    valid = torch.tensor([[True] * 5 + [False] * 3, [True] * 8])
    out = fusion(torch.randn(2, 8, m), torch.randn(2, d), valid)
    assert out.iou_logits.shape == out.iop.shape == (2, 8)
    assert torch.isinf(out.iou_logits[0, 5:]).all() and (out.iop[0, 5:] == 0).all()
    real = out.iou_logits[valid]
    assert (real.abs() <= 1.0 + 1e-5).all() and ((out.iop >= 0) & (out.iop <= 1)).all()


def test_padding_content_does_not_change_real_scores(variant):
    fusion = make(variant)
    m, d = VARIANTS[variant]
    emb = torch.randn(1, 6, m)
    valid = torch.tensor([[True, True, True, True, False, False]])
    seg = torch.randn(1, d)
    a = fusion(emb, seg, valid)
    emb2 = emb.clone()
    emb2[0, 4:] = 100.0
    b = fusion(emb2, seg, valid)
    assert torch.allclose(a.iou_logits[0, :4], b.iou_logits[0, :4], atol=1e-5)
    assert torch.allclose(a.iop[0, :4], b.iop[0, :4], atol=1e-5)


def test_scores_depend_on_seg_and_on_other_proposals(variant):
    fusion = make(variant)
    m, d = VARIANTS[variant]
    emb = torch.randn(1, 4, m)
    valid = torch.ones(1, 4, dtype=torch.bool)
    seg = torch.randn(1, d)
    base = fusion(emb, seg, valid).iop
    assert not torch.allclose(base, fusion(emb, torch.randn(1, d), valid).iop)
    emb2 = emb.clone()
    emb2[0, 3] = torch.randn(m)
    assert not torch.allclose(base[0, :3], fusion(emb2, seg, valid).iop[0, :3])


def test_no_proposals_is_finite(variant):
    m, d = VARIANTS[variant]
    out = make(variant)(torch.zeros(1, 3, m), torch.randn(1, d), torch.zeros(1, 3, dtype=torch.bool))
    assert (out.iop == 0).all() and torch.isinf(out.iou_logits).all()


def test_published_fusion_needs_equal_dimensions():
    with pytest.raises(ValueError, match="no input projections"):
        build_fusion(FusionConfig(variant="published", dim=32), mask_dim=24, seg_dim=32)


def test_padded_row_equals_the_row_alone(variant):
    """Padding is masked out of every attention: a padded batch row computes what it would alone."""
    fusion = make(variant)
    m, d = VARIANTS[variant]
    emb, seg = torch.randn(1, 5, m), torch.randn(1, d)
    alone = fusion(emb, seg, torch.ones(1, 5, dtype=torch.bool))
    padded = fusion(torch.cat([emb, torch.randn(1, 3, m)], 1), seg, torch.tensor([[True] * 5 + [False] * 3]))
    assert torch.allclose(alone.iop, padded.iop[:, :5], atol=1e-6)
    assert torch.allclose(alone.iou_logits, padded.iou_logits[:, :5], atol=1e-6)


@pytest.mark.parametrize("padded", [False, True])
def test_published_inference_shortcuts_equal_the_published_computation(padded):
    """Without gradients the published fusion skips the query/key projections of attention to the
    one <SEG> token and runs attention as one SDPA call; with gradients it runs as published."""
    fusion = make("published")
    emb, seg = torch.randn(3, 7, 32), torch.randn(3, 32)
    valid = torch.ones(3, 7, dtype=torch.bool)
    if padded:
        valid[0, 4:] = False
    with torch.enable_grad():
        published = fusion(emb, seg, valid)
    with torch.inference_mode():
        fast = fusion(emb, seg, valid)
    assert torch.allclose(published.iop, fast.iop, atol=1e-6)
    assert torch.equal(torch.isinf(published.iou_logits), torch.isinf(fast.iou_logits))
    assert torch.allclose(published.iou_logits[valid], fast.iou_logits[valid], atol=1e-6)


def test_published_single_key_attention_keeps_every_parameter_in_training():
    """Data-parallel training expects every parameter in the graph: with gradients the query and
    key projections of attention to <SEG> still run (their gradient is exactly zero)."""
    fusion = make("published").train()
    out = fusion(torch.randn(2, 5, 32), torch.randn(2, 32), torch.ones(2, 5, dtype=torch.bool))
    (out.iop.sum() + out.iou_logits.sum()).backward()
    single_key = fusion.layers[0].props_to_seg
    assert all(p.grad is not None for p in fusion.parameters())
    assert torch.count_nonzero(single_key.q_proj.weight.grad) == 0
    assert torch.count_nonzero(single_key.v_proj.weight.grad) > 0


@pytest.mark.parametrize("padded", [False, True])
def test_encoded_proposals_shared_by_a_batch_give_the_whole_fusion(variant, padded):
    """The step before <SEG> (`encode_proposals`) computed once for a frame's proposals and shared
    by every instruction's row gives what the whole fusion gives each row, and equals the first
    step of the computation with gradients (the training path)."""
    fusion = make(variant)
    m, d = VARIANTS[variant]
    emb, seg = torch.randn(1, 6, m), torch.randn(4, d)
    valid = torch.ones(1, 6, dtype=torch.bool)
    if padded:
        valid[0, 4:] = False
    rows, row_valid = emb.expand(4, -1, -1), valid.expand(4, -1)
    with torch.enable_grad():
        whole = fusion(rows, seg, row_valid)
    with torch.inference_mode():
        encoded = fusion.encode_proposals(emb, valid)
        shared = fusion(rows, seg, row_valid, encoded=encoded.expand(4, -1, -1))
    assert encoded.shape == (1, 6, fusion.config.dim)
    assert torch.allclose(whole.iop, shared.iop, atol=1e-6)
    assert torch.equal(torch.isinf(whole.iou_logits), torch.isinf(shared.iou_logits))
    assert torch.allclose(whole.iou_logits[row_valid], shared.iou_logits[row_valid], atol=1e-6)
    assert not torch.allclose(shared.iop[0], shared.iop[1])  # the rows differ by their <SEG> only
