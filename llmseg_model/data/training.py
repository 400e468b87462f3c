"""Training records: an image, its cached proposals, and up to `queries` questions about it with
their per-proposal IoU / IoP targets.

Items come from target groups (llmseg_model.data.targets): the candidate queries of one image.
An item draws up to `queries` of them without replacement and one wording of each, with a
generator seeded by (seed, epoch, index), so every DataLoader worker, every process and a resumed
run draw the same questions for the same item. `collate` flattens the questions into rows: each
row has its instruction, phrase flag and targets, and carries its image's tensors (repeated for
the image's other rows); `image_index` maps rows back to the batch's images, and `seeds` gives
each row a seed (from the same (seed, epoch, index)) for the model's random choices, such as the
question and answer templates, so that they too repeat across workers, processes and resumes.

Per-proposal IoU / IoP targets are computed where the published loaders compute them: at SAM's
input size (long side at most `target_max_side`, 1024), the ground truth resized to it by nearest
neighbour; an image that small already (the tiny preset's) is scored as it is. At native size a
12-megapixel Mapillary image cost about 40 s a question here (50 full-size masks).

SAM never runs here: proposals come from a lookup (the on-disk proposal cache in practice). The
frozen backbones (DINOv2, the LLaVA vision tower) may run here too, once per image, with their
outputs memoised: then a training step costs only the trainable parts. `TrainingSet.prefill`
fills that memo up front with worker processes, since rendering, decoding and target masks cost
more than the training step itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from llmseg_model.data.sample import IGNORE_INDEX, SegSample
from llmseg_model.data.targets import split_texts
from llmseg_model.modeling.losses import proposal_targets
from llmseg_model.modeling.proposals import Proposals


class TrainingSet(Dataset):
    """Items ready for `LLMSeg.forward` (after `collate`), one per image draw.

    `samples` holds target groups (lists of SegSamples of one image); a plain SegSample counts as
    the group of its texts. `queries` caps the questions an item asks (the published 3).

    `proposals_for(sample)` returns that image's Proposals and `preprocess(image) ->
    (dino_pixels, llava_pixels)` the backbones' inputs (on the CPU). Without `frozen`, items carry
    those pixels; with `frozen(dino_pixels, llava_pixels) -> (dino_features, vision_states)` (batched)
    they carry the frozen outputs instead, and per-image work and per-sample targets are memoised (up
    to `memo_items` images), so only the first epoch, or `prefill`, pays for rendering, decoding and
    backbones. Memoisation lives in this process: use it with a num_workers=0 DataLoader.
    """

    def __init__(
        self,
        samples: Sequence[list[SegSample] | SegSample],
        proposals_for: Callable[[SegSample], Proposals],
        top_k: int,
        preprocess: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]],
        frozen: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        memo_items: int = 20000,
        seed: int = 0,
        queries: int = 1,
        target_max_side: int = 1024,
    ) -> None:
        if queries < 1:
            raise ValueError(f"queries must be >= 1, got {queries}")
        self.samples = samples
        self.proposals_for = proposals_for
        self.top_k = top_k
        self.preprocess = preprocess
        self.frozen = frozen
        self.memo_items = memo_items if frozen is not None else 0
        self.seed = seed
        self.queries = queries
        self.target_max_side = target_max_side
        self.epoch = 0
        self.image_memo: dict[str, dict[str, torch.Tensor]] = {}
        self.target_memo: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch`: a new mixture draw (when `samples` has one) and new question draws."""
        self.epoch = epoch
        set_epoch = getattr(self.samples, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)

    def group(self, index: int) -> list[SegSample]:
        """The candidate queries of item `index` (all about one image)."""
        return _as_group(self.samples[index])

    def draw(self, index: int) -> list[tuple[SegSample, str]]:
        """The (candidate, wording) pairs item `index` asks about in the current epoch."""
        group = self.group(index)
        rng = random.Random(f"{self.seed}:{self.epoch}:{index}")
        chosen = rng.sample(group, min(self.queries, len(group)))
        return [(sample, rng.choice(sample.texts)) for sample in chosen]

    def row_seeds(self, index: int, count: int) -> list[int]:
        """Seeds for the model's per-row random choices of item `index` in the current epoch."""
        rng = random.Random(f"{self.seed}:{self.epoch}:{index}:rows")
        return [rng.getrandbits(63) for _ in range(count)]

    def _pixel_part(self, sample: SegSample) -> tuple[dict[str, torch.Tensor], Proposals]:
        """Proposal masks and backbone input pixels of a sample's image (no backbone run)."""
        image = sample.load_image()
        proposals = self.proposals_for(sample)
        if proposals.image_size != image.shape[:2]:
            raise ValueError(f"{sample.image_id}: proposals are {proposals.image_size}, image is {image.shape[:2]}")
        lowres, valid = proposals.padded_lowres(self.top_k)
        dino_pixels, llava_pixels = self.preprocess(image)
        return {"lowres": lowres, "valid": valid, "dino_pixels": dino_pixels, "llava_pixels": llava_pixels}, proposals

    def _memoise(self, keys: list[str], parts: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        """Run the frozen backbones on a batch of pixel parts; keep the results while the memo has room."""
        dino, vision = self.frozen(
            torch.stack([p["dino_pixels"] for p in parts]), torch.stack([p["llava_pixels"] for p in parts])
        )
        out = []
        for i, (key, part) in enumerate(zip(keys, parts)):
            done = {"lowres": part["lowres"], "valid": part["valid"], "dino_features": dino[i], "vision_states": vision[i]}
            if len(self.image_memo) < self.memo_items:
                self.image_memo[key] = done
            out.append(done)
        return out

    def _keep_targets(self, key: tuple[str, str], targets: tuple[torch.Tensor, torch.Tensor]) -> None:
        if self.memo_items and len(self.target_memo) < 8 * self.memo_items:
            self.target_memo[key] = targets

    def __getitem__(self, index: int) -> dict:
        drawn = self.draw(index)
        first = drawn[0][0]
        key = _keys(first)[0]
        proposals = None
        if key in self.image_memo:
            part = self.image_memo[key]
        else:
            part, proposals = self._pixel_part(first)
            if self.frozen is not None:
                part = self._memoise([key], [part])[0]
        ious, iops = [], []
        masks = None
        for sample, _ in drawn:
            target_key = _keys(sample)[1]
            if target_key in self.target_memo:
                gt_iou, gt_iop = self.target_memo[target_key]
            else:
                masks = masks or self.target_masks(proposals or self.proposals_for(sample))
                gt_iou, gt_iop = self._targets(sample, masks)
                self._keep_targets(target_key, (gt_iou, gt_iop))
            ious.append(gt_iou)
            iops.append(gt_iop)
        return {
            **part,
            "gt_iou": torch.stack(ious),
            "gt_iop": torch.stack(iops),
            "instructions": [text for _, text in drawn],
            "phrases": [sample.phrase for sample, _ in drawn],
            "seeds": self.row_seeds(index, len(drawn)),
            "image_id": first.image_id,
        }

    def prefill(self, num_workers: int, batch_size: int = 16, progress: bool = True) -> None:
        """Memoise every sample before training: `num_workers` processes render, decode and compute
        targets (the bulk of a first epoch), this process runs the frozen backbones in batches.
        Fills exactly what a first epoch would, so training is the same with or without it."""
        if self.frozen is None:
            raise ValueError("prefill needs frozen backbones (a memoising TrainingSet)")
        order = list(range(len(self)))
        locate = getattr(self.samples, "locate", None)  # a MixedDataset: visit each source in its own order
        if locate is not None:
            order.sort(key=locate)
        loader = DataLoader(
            _PrefillWork(self), batch_size=batch_size, sampler=order, num_workers=num_workers, collate_fn=list
        )
        for items in tqdm(loader, desc="prefill", unit="batch", disable=not progress):
            fresh = {}
            for item in items:
                for target_key, targets in item.targets.items():
                    self._keep_targets(target_key, tuple(torch.from_numpy(t) for t in targets))
                if item.part is not None and item.key not in self.image_memo:
                    fresh[item.key] = {name: torch.from_numpy(value) for name, value in item.part.items()}
            if fresh and len(self.image_memo) < self.memo_items:
                self._memoise(list(fresh), list(fresh.values()))

    def target_masks(self, proposals: Proposals) -> "TargetMasks":
        return TargetMasks(proposals, min(proposals.count, self.top_k), self.target_max_side)

    def _targets(self, sample: SegSample, masks: "TargetMasks") -> tuple[torch.Tensor, torch.Tensor]:
        gt = sample.load_mask()
        if gt.shape != masks.proposals.image_size:
            raise ValueError(f"{sample.image_id}: mask {gt.shape} does not match image {masks.proposals.image_size}")
        gt_iou = torch.zeros(self.top_k)
        gt_iop = torch.zeros(self.top_k)
        if masks.kept:
            gt = torch.from_numpy(resize_nearest_centres(gt, masks.shape))
            iou, iop = proposal_targets(masks.stack(), gt, IGNORE_INDEX)
            gt_iou[: masks.kept], gt_iop[: masks.kept] = iou, iop
        return gt_iou, gt_iop


def target_shape(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """Where targets are computed: the image's (H, W), or scaled to a long side of `max_side` with
    the published SAM input's int() truncation; 0 keeps the native size."""
    height, width = size
    if not max_side or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return int(height * scale), int(width * scale)


def resize_nearest_centres(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize sampling pixel centres (skimage `resize(order=0)`, as the published
    targets use for the ground truth); a no-op at the same size."""
    if mask.shape == tuple(shape):
        return mask
    (height, width), (rows, cols) = mask.shape, shape
    y = np.minimum(((np.arange(rows) + 0.5) * height / rows).astype(np.int64), height - 1)
    x = np.minimum(((np.arange(cols) + 0.5) * width / cols).astype(np.int64), width - 1)
    return mask[y[:, None], x[None, :]]


class TargetMasks:
    """An image's first `kept` proposals at the target size, decoded once for all its questions
    and one at a time (50 full-size masks of a 12-megapixel image would take 600 MB at once)."""

    def __init__(self, proposals: Proposals, kept: int, max_side: int) -> None:
        self.proposals = proposals
        self.kept = kept
        self.shape = target_shape(proposals.image_size, max_side)
        self._stack: torch.Tensor | None = None

    def stack(self) -> torch.Tensor:
        if self._stack is None:
            masks = [resize_nearest_centres(self.proposals.masks([k])[0], self.shape) for k in range(self.kept)]
            self._stack = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, *self.shape), dtype=torch.bool)
        return self._stack


def _as_group(item: list[SegSample] | SegSample) -> list[SegSample]:
    group = split_texts(item) if isinstance(item, SegSample) else list(item)
    if not group:
        raise ValueError("a training item has no query (an empty target group)")
    key = _keys(group[0])[0]
    if any(_keys(s)[0] != key for s in group):
        raise ValueError(f"a target group mixes images: {sorted({_keys(s)[0] for s in group})[:3]}")
    return group


def _keys(sample: SegSample) -> tuple[str, tuple[str, str]]:
    """Memo keys of a sample: its image, and its image with its target (named by `target`, else
    by its instructions)."""
    key = f"{sample.source}:{sample.image_id}"
    return key, (key, sample.target or "\n".join(sample.texts))


@dataclass
class _PrefillItem:
    """What a prefill worker sends back. Arrays, not tensors: tensors would travel as one shared
    file descriptor each, and tens of thousands of them exhaust the process's descriptor limit."""

    key: str
    targets: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]  # target key -> (gt_iou, gt_iop)
    part: dict[str, np.ndarray] | None  # None when this worker just sent the same image


class _PrefillWork(Dataset):
    """The CPU half of `TrainingSet.prefill`, run in DataLoader workers. Samples come in their data
    set's order, so samples of one image arrive together: a worker renders and sends that image once."""

    def __init__(self, owner: TrainingSet) -> None:
        self.owner = owner
        self.last_key = ""
        self.proposals: Proposals | None = None  # of the last image, reused by its other samples
        self.masks: TargetMasks | None = None

    def __len__(self) -> int:
        return len(self.owner)

    def __getitem__(self, index: int) -> _PrefillItem:
        drawn = [sample for sample, _ in self.owner.draw(index)]  # what the current epoch asks
        key = _keys(drawn[0])[0]
        part = None
        if key != self.last_key:
            self.last_key, self.proposals, self.masks = key, None, None
            if key not in self.owner.image_memo:
                part, self.proposals = self.owner._pixel_part(drawn[0])
        computed = {}
        for sample in drawn:
            target_key = _keys(sample)[1]
            targets = self.owner.target_memo.get(target_key)
            if targets is None:
                self.proposals = self.proposals or self.owner.proposals_for(sample)
                self.masks = self.masks or self.owner.target_masks(self.proposals)
                targets = self.owner._targets(sample, self.masks)
            computed[target_key] = (targets[0].numpy(), targets[1].numpy())
        arrays = None if part is None else {name: value.numpy() for name, value in part.items()}
        return _PrefillItem(key, computed, arrays)


PER_ROW = ("gt_iou", "gt_iop")  # item tensors with one row per question; the rest are per image


def collate(items: list[dict]) -> dict:
    """One row per question: per-question targets concatenated, per-image tensors repeated for
    each of the image's rows; instructions, phrase flags, seeds and image ids as per-row lists, and
    `image_index` (rows,) giving each row's item in the batch."""
    counts = [len(item["instructions"]) for item in items]
    image_index = torch.repeat_interleave(torch.arange(len(items)), torch.tensor(counts))
    batch: dict = {}
    for key, value in items[0].items():
        if not isinstance(value, torch.Tensor):
            continue
        if key in PER_ROW:
            batch[key] = torch.cat([item[key] for item in items])
        else:
            batch[key] = torch.stack([item[key] for item in items])[image_index]
    batch["instructions"] = [text for item in items for text in item["instructions"]]
    batch["phrases"] = [phrase for item in items for phrase in item["phrases"]]
    batch["seeds"] = [seed for item in items for seed in item["seeds"]]
    batch["image_ids"] = [item["image_id"] for item, count in zip(items, counts) for _ in range(count)]
    batch["image_index"] = image_index
    return batch
