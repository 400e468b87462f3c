"""Validation during training: per-process shares that add up to a single-process run (the
scorings themselves are tested in test_metrics.py)."""


from llmseg_model.data.procedural import ProceduralConfig, ProceduralDataset
from llmseg_model.metrics import IoUAccumulator
from llmseg_model.validation import validate


def test_process_shares_add_up_to_one_run(untrained_tiny_model):
    samples = ProceduralDataset("val", 1, ProceduralConfig(height=96, width=96, instructions_per_scene=3))
    whole = validate(untrained_tiny_model, samples, "native", progress=False)
    shares = [validate(untrained_tiny_model, samples, "native", rank, 2, progress=False) for rank in (0, 1)]
    assert [len(s.unions) for s in shares] == [2, 1]
    merged = IoUAccumulator()
    for share in shares:
        merged.merge(share)
    assert sorted(zip(merged.intersections, merged.unions)) == sorted(zip(whole.intersections, whole.unions))
