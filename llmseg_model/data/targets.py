"""Images as the unit of training: each drawn image offers several candidate queries.

The published recipe draws an image, then asks up to `num_classes_per_sample` (3) questions about
it, drawn without replacement from what the image offers: classes present in a label map, part
annotations, referring sentences, or a ReasonSeg image's sentences. A *target group* is that list
of candidates: SegSamples of one image, each with one target mask and the wordings of one query
in `texts` (training draws one wording, e.g. "car wheel" or "the wheel of the car").

`ImageDataset` is the base of readers indexed by image (sem-seg, refer-seg), whose candidates are
only known once the image's annotation is read. `target_groups` turns any data set into groups:
per-sample readers (ReasonSeg, LLM-Seg40K, procedural) give one candidate per text of a sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from llmseg_model.data.image_io import read_rgb
from llmseg_model.data.sample import SegSample

ImageRef = tuple[str, str, Callable[[], np.ndarray]]  # (source, image id, image loader)


class ImageDataset(Sequence):
    """A data set indexed by image; item i is the list of candidate queries (SegSamples) of image i.

    Subclasses give `image_of` (cheap: no annotation read, so the proposal precompute can walk
    the images) and `targets`. An image may offer no candidate (a label map with only ignored
    pixels): training then draws another image (`Redrawn`), as the published loaders do.
    """

    source: str = ""

    def image_of(self, index: int) -> ImageRef:
        raise NotImplementedError

    def targets(self, index: int) -> list[SegSample]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> list[SegSample]:  # type: ignore[override]
        return self.targets(_check_index(index, len(self)))


def image_ref(dataset: Sequence, index: int) -> ImageRef:
    """(source, image id, image loader) of item `index`: from the data set's `image_of` when it has
    one (cheap: ProceduralDataset renders nothing, readers read no annotation), else from the built
    sample. The proposal precompute walks images this way."""
    image_of = getattr(dataset, "image_of", None)
    if image_of is not None:
        return image_of(index)
    sample = dataset[index]
    return sample.source, sample.image_id, sample.load_image


class RecordDataset(ImageDataset):
    """An `ImageDataset` over `records`, one per image, each with `image_id` and `path`: the
    readers that hold their annotations per image (parts, refer) share their indexing here."""

    records: list[Any]

    def __len__(self) -> int:
        return len(self.records)

    def image_of(self, index: int) -> ImageRef:
        record = self.records[index]
        return self.source, record.image_id, partial(read_rgb, record.path)


def _check_index(index: int, length: int) -> int:
    if not -length <= index < length:
        raise IndexError(f"index {index} out of range for {length} images")
    return index % length


def split_texts(sample: SegSample) -> list[SegSample]:
    """One candidate per text of a sample; they keep the sample's target identity (the same mask)."""
    target = sample.target or "\n".join(sample.texts)
    return [dataclasses.replace(sample, texts=[text], target=target) for text in sample.texts]


class SampleGroups(Sequence):
    """A per-sample data set seen as target groups: group i holds sample i, one candidate per text
    (a ReasonSeg image's sentences all point at its one mask)."""

    def __init__(self, dataset: Sequence[SegSample]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> list[SegSample]:  # type: ignore[override]
        return split_texts(self.dataset[index])

    def image_of(self, index: int) -> ImageRef:
        return image_ref(self.dataset, index)

    def group(self, index: int) -> str:
        group = getattr(self.dataset, "group", None)
        return group(index) if group else ""


class Redrawn(Sequence):
    """Target groups of an `ImageDataset` where an image without candidates is replaced by another
    image of the same data set, drawn by a generator seeded with the index (deterministic, so a
    resumed run and every DataLoader worker see the same replacement)."""

    max_draws = 100

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> list[SegSample]:  # type: ignore[override]
        index = _check_index(index, len(self))
        group = self.dataset.targets(index)
        rng = np.random.default_rng(index)
        for _ in range(self.max_draws):
            if group:
                return group
            group = self.dataset.targets(int(rng.integers(len(self))))
        raise ValueError(
            f"{type(self.dataset).__name__}: {self.max_draws} images in a row offer nothing to segment; "
            "check the data set's labels"
        )

    def image_of(self, index: int) -> ImageRef:
        return self.dataset.image_of(index)


def target_groups(dataset: Sequence) -> Sequence[list[SegSample]]:
    """Any data set as a sequence of target groups (see the module docstring)."""
    if isinstance(dataset, ImageDataset):
        return Redrawn(dataset)
    return SampleGroups(dataset)
