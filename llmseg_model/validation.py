"""Validation during training: gIoU / cIoU of the model on held-out samples, for keeping the best
checkpoint as the published training does (after every epoch, on ReasonSeg val).

Each sample is asked its first text (the published validation uses the first sentence of each
image), as a phrase or a sentence as the sample says, and the answer is the model's own selection. Scoring is either `native` (the image's
size) or `resize1024`: prediction and ground truth are first resized to 1024x1024 with nearest
neighbour, as the published ReasonSeg validation does (llmseg_model.metrics.scored_counts).
Work is split across processes by index; the caller merges the accumulators.
"""

from __future__ import annotations

from collections.abc import Sequence

from tqdm import tqdm

from llmseg_model.data.sample import SegSample
from llmseg_model.metrics import IoUAccumulator, scored_counts

def validate(
    model,
    samples: Sequence[SegSample],
    scoring: str = "resize1024",
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    proposals=None,
) -> IoUAccumulator:
    """Score `model` (an LLMSeg: prepare + query) on this process's share of `samples`;
    `proposals` (a ProposalCache) gives cached proposals instead of running SAM."""
    counts = IoUAccumulator()
    indices = range(rank, len(samples), world_size)
    for index in tqdm(indices, desc="validate", unit="sample", disable=not progress):
        sample = samples[index]
        if not sample.texts:
            raise ValueError(f"validation sample {sample.image_id} has no text")
        image = sample.load_image()
        gt = sample.load_mask()
        cached = proposals.get(sample, image) if proposals is not None else None
        result = model.query(model.prepare(image, proposals=cached), sample.texts[0], phrase=sample.phrase)
        counts.add_counts(*scored_counts(result.mask, gt, scoring))
    return counts
