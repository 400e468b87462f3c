import torch

from llmseg_model.config import FusionConfig
from llmseg_model.modeling.fusion import FusionTransformer


def make(dim=32):
    torch.manual_seed(0)
    return FusionTransformer(FusionConfig(dim=dim, depth=2, num_heads=4, mlp_dim=64), mask_dim=24, seg_dim=16).eval()


def test_shapes_ranges_and_padding():
    fusion = make()
    valid = torch.tensor([[True] * 5 + [False] * 3, [True] * 8])
    out = fusion(torch.randn(2, 8, 24), torch.randn(2, 16), valid)
    assert out.iou_logits.shape == out.iop.shape == (2, 8)
    assert torch.isinf(out.iou_logits[0, 5:]).all() and (out.iop[0, 5:] == 0).all()
    real = out.iou_logits[valid]
    assert (real.abs() <= 1.0 + 1e-5).all() and ((out.iop >= 0) & (out.iop <= 1)).all()


def test_padding_content_does_not_change_real_scores():
    fusion = make()
    emb = torch.randn(1, 6, 24)
    valid = torch.tensor([[True, True, True, True, False, False]])
    seg = torch.randn(1, 16)
    a = fusion(emb, seg, valid)
    emb2 = emb.clone()
    emb2[0, 4:] = 100.0
    b = fusion(emb2, seg, valid)
    assert torch.allclose(a.iou_logits[0, :4], b.iou_logits[0, :4], atol=1e-5)
    assert torch.allclose(a.iop[0, :4], b.iop[0, :4], atol=1e-5)


def test_scores_depend_on_seg_and_on_other_proposals():
    fusion = make()
    emb = torch.randn(1, 4, 24)
    valid = torch.ones(1, 4, dtype=torch.bool)
    base = fusion(emb, torch.randn(1, 16), valid).iop
    assert not torch.allclose(base, fusion(emb, torch.randn(1, 16), valid).iop)
    emb2 = emb.clone()
    emb2[0, 3] = torch.randn(24)
    assert not torch.allclose(base[0, :3], fusion(emb2, torch.randn(1, 16), valid).iop[0, :3])


def test_no_proposals_is_finite():
    out = make()(torch.zeros(1, 3, 24), torch.randn(1, 16), torch.zeros(1, 3, dtype=torch.bool))
    assert (out.iop == 0).all() and torch.isinf(out.iou_logits).all()
