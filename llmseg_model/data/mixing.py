"""Which data sets to read and in what proportions: data set specs and a seeded mixture.

A `DatasetSpec` names one data set (ReasonSeg folder, LLM-Seg40K json + images, a procedural
split, or one of the published recipe's semantic- and referring-segmentation sources under a
LISA-style data folder) so that training, the benchmark and the proposal precompute all build
data the same way. The sem-seg and refer-seg readers are indexed by image: their items are target
groups (llmseg_model.data.targets), and so are a mixture's when it is built `by_image`.
`MixedDataset` draws an epoch from several data sets by ratio, exactly (largest-remainder
counts, every data set walked through in a fresh permutation before any sample repeats), not by
a coin per step, so small data sets are neither starved nor over-sampled by chance.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmseg_model.data.referseg import REFER_KINDS, SPLIT_BYS
from llmseg_model.data.sample import SegSample
from llmseg_model.data.semseg import MAPILLARY_VERSIONS, SEMSEG_KINDS
from llmseg_model.data.targets import ImageRef, image_ref, target_groups

logger = logging.getLogger(__name__)

KINDS = ("reasonseg", "llmseg40k", "procedural") + SEMSEG_KINDS + REFER_KINDS
NEEDS_PATH = ("reasonseg", "llmseg40k") + SEMSEG_KINDS + REFER_KINDS


@dataclass
class DatasetSpec:
    """One data set and its share of a mixture."""

    kind: str  # one of KINDS
    path: str = ""  # ReasonSeg split folder, LLM-Seg40K json, or the data folder of a sem-seg / refer kind
    image_root: str = ""  # LLM-Seg40K: folder of the images (or base of image_dirs)
    image_dirs: dict[str, str] = field(default_factory=dict)  # LLM-Seg40K: from_dataset -> folder
    query_type: str = "all"  # ReasonSeg: all | short | long
    split: str = "train"  # procedural split
    size: int = 0  # procedural: number of scenes
    procedural: dict[str, Any] = field(default_factory=dict)  # ProceduralConfig overrides
    split_by: str = ""  # refer kinds: refs(<split_by>).p; empty: the published one (umd for refcocog, else unc)
    version: str = ""  # mapillary: v2.0 (empty, as published) or v1.2
    ratio: float = 1.0  # share in a mixture
    limit: int = 0  # keep only the first `limit` samples (0 keeps all)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown data set kind {self.kind!r}; choose one of {KINDS}")
        if self.kind in NEEDS_PATH and not self.path:
            raise ValueError(f"{self.kind} data set needs a path")
        if self.split_by and (self.kind not in REFER_KINDS or self.split_by not in SPLIT_BYS):
            raise ValueError(f"split_by {self.split_by!r}: only for {REFER_KINDS}, one of {SPLIT_BYS}")
        if self.version and (self.kind != "mapillary" or self.version not in MAPILLARY_VERSIONS):
            raise ValueError(f"version {self.version!r}: only for mapillary, one of {MAPILLARY_VERSIONS}")
        if self.kind == "procedural" and self.size <= 0:
            raise ValueError(f"procedural data set needs size > 0 (scenes), got {self.size}")
        if not self.ratio >= 0:
            raise ValueError(f"ratio must be >= 0, got {self.ratio}")
        if self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DatasetSpec":
        if not isinstance(data, dict):
            raise ValueError(f"data set spec must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"data set spec: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def parse(cls, text: str) -> "DatasetSpec":
        """Parse the command-line form `kind:target[,key=value...]`:

        reasonseg:/data/ReasonSeg/val[,query_type=long]
        llmseg40k:/data/llmseg40k/val.json,image_root=/data/images[,image_dir.coco=coco/train2017]
        procedural:test,size=50[,height=128,width=128,seed=1]
        ade20k:/data/lisa_dataset  (also cocostuff, pascal_part, paco_lvis, mapillary[,version=v1.2])
        refcocog:/data/lisa_dataset[,split_by=google]  (also refclef, refcoco, refcoco+)
        Common keys: ratio, limit. Paths may not contain commas.
        """
        kind, sep, rest = text.partition(":")
        if not sep or not rest:
            raise ValueError(f"data set spec {text!r} must look like kind:target[,key=value...]; kinds: {KINDS}")
        target, *options = rest.split(",")
        values: dict[str, Any] = {"kind": kind}
        if kind == "procedural":
            values["split"] = target
        else:
            values["path"] = target
        image_dirs: dict[str, str] = {}
        procedural: dict[str, Any] = {}
        for option in options:
            key, eq, value = option.partition("=")
            if not eq:
                raise ValueError(f"data set spec {text!r}: option {option!r} must be key=value")
            if key.startswith("image_dir."):
                image_dirs[key[len("image_dir."):]] = value
            elif key in ("size", "limit"):
                values[key] = _int(value, key, text)
            elif key == "ratio":
                values[key] = _float(value, key, text)
            elif key in ("image_root", "query_type", "split_by", "version"):
                values[key] = value
            elif kind == "procedural":
                procedural[key] = _number(value)
            else:
                raise ValueError(f"data set spec {text!r}: unknown option {key!r}")
        if image_dirs:
            values["image_dirs"] = image_dirs
        if procedural:
            values["procedural"] = procedural
        return cls(**values)

    @property
    def name(self) -> str:
        """A short readable label for logs and reports."""
        if self.kind == "procedural":
            return f"procedural/{self.split}"
        return f"{self.kind}:{self.path}"


def _int(value: str, key: str, text: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"data set spec {text!r}: {key} must be an integer, got {value!r}") from None


def _float(value: str, key: str, text: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"data set spec {text!r}: {key} must be a number, got {value!r}") from None


def _number(value: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


class Subset(Sequence):
    """The first `limit` items of a data set; keeps `group` and `image_of` when the data set has them."""

    def __init__(self, dataset: Sequence, limit: int) -> None:
        self.dataset = dataset
        self.limit = min(limit, len(dataset))

    def __len__(self) -> int:
        return self.limit

    def _index(self, index: int) -> int:
        if not -self.limit <= index < self.limit:
            raise IndexError(f"index {index} out of range for {self.limit} samples")
        return index % self.limit

    def __getitem__(self, index: int):  # type: ignore[override]
        return self.dataset[self._index(index)]

    def group(self, index: int) -> str:
        group = getattr(self.dataset, "group", None)
        return group(index) if group else ""

    def image_of(self, index: int) -> ImageRef:
        """(source, image id, image loader) of item `index`, for the proposal precompute."""
        return image_ref(self.dataset, self._index(index))


def open_dataset(spec: DatasetSpec) -> Sequence:
    """Open the data set a spec names, without its `limit`. Sem-seg and refer kinds give an
    ImageDataset (items: the target groups of one image); the others give SegSamples."""
    if spec.kind == "reasonseg":
        from llmseg_model.data.reasonseg import ReasonSegDataset

        return ReasonSegDataset(spec.path, query_type=spec.query_type)
    if spec.kind == "llmseg40k":
        from llmseg_model.data.llmseg40k import LLMSeg40KDataset

        return LLMSeg40KDataset(spec.path, image_root=spec.image_root, image_dirs=spec.image_dirs)
    if spec.kind in SEMSEG_KINDS:
        from llmseg_model.data.semseg import open_semseg

        return open_semseg(spec.kind, spec.path, spec.version)
    if spec.kind in REFER_KINDS:
        from llmseg_model.data.referseg import ReferDataset

        return ReferDataset(spec.path, spec.kind, spec.split_by)
    from llmseg_model.data.procedural import ProceduralConfig, ProceduralDataset

    overrides = dict(spec.procedural)
    if "kind_weights" in overrides:
        overrides["kind_weights"] = tuple(overrides["kind_weights"])
    try:
        config = ProceduralConfig(**overrides)
    except TypeError as err:
        raise ValueError(f"procedural data set: bad setting ({err})") from None
    # Keep every scene (about 0.6 MB each, up to 2000): samples of one scene come in random
    # order during training, and re-rendering a scene per sample costs more than holding it.
    return ProceduralDataset(spec.split, spec.size, config, cache_size=min(spec.size, 2000))


def build_dataset(spec: DatasetSpec) -> Sequence:
    """Open the data set a spec names, cut to its `limit`."""
    dataset = open_dataset(spec)
    return Subset(dataset, spec.limit) if spec.limit else dataset


def build_groups(spec: DatasetSpec) -> Sequence[list[SegSample]]:
    """The data set a spec names as target groups (one item per image), cut to its `limit`."""
    groups = target_groups(open_dataset(spec))
    return Subset(groups, spec.limit) if spec.limit else groups


def allocate(total: int, ratios: Sequence[float]) -> list[int]:
    """Split `total` into integer counts proportional to `ratios` (largest remainder)."""
    ratios = np.asarray(ratios, dtype=np.float64)
    if ratios.ndim != 1 or len(ratios) == 0:
        raise ValueError("need at least one ratio")
    if np.any(~np.isfinite(ratios)) or np.any(ratios < 0) or ratios.sum() <= 0:
        raise ValueError(f"ratios must be finite, >= 0 and not all zero, got {ratios.tolist()}")
    exact = ratios / ratios.sum() * total
    counts = np.floor(exact).astype(np.int64)
    remainder = total - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:remainder]] += 1
    return counts.tolist()


class MixedDataset(Sequence):
    """`length` samples per epoch drawn from several data sets in the given ratios.

    Deterministic in (seed, epoch); call `set_epoch` between epochs for a new draw. (With
    persistent DataLoader workers, build the mixture per epoch instead, since workers hold
    copies.) `length` defaults to the total size of the data sets with a positive ratio.
    """

    def __init__(
        self,
        datasets: Sequence[Sequence[SegSample]],
        ratios: Sequence[float] | None = None,
        length: int | None = None,
        seed: int = 0,
    ) -> None:
        if not datasets:
            raise ValueError("MixedDataset needs at least one data set")
        ratios = [1.0] * len(datasets) if ratios is None else list(ratios)
        if len(ratios) != len(datasets):
            raise ValueError(f"got {len(datasets)} data sets but {len(ratios)} ratios")
        allocate(1, ratios)  # validates the ratios
        for k, (dataset, ratio) in enumerate(zip(datasets, ratios)):
            if ratio > 0 and len(dataset) == 0:
                raise ValueError(f"data set {k} is empty but has ratio {ratio}")
        self.datasets = list(datasets)
        self.ratios = ratios
        if length is None:
            length = sum(len(d) for d, r in zip(datasets, ratios) if r > 0)
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.length = length
        self.seed = seed
        self.epoch = 0
        self._plan = self._draw()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._plan = self._draw()

    def _draw(self) -> np.ndarray:
        """(length, 2) array of (data set index, sample index)."""
        counts = allocate(self.length, self.ratios)
        parts = []
        for k, (dataset, count) in enumerate(zip(self.datasets, counts)):
            if count == 0:
                continue
            rng = np.random.default_rng([self.seed, self.epoch, k])
            n = len(dataset)
            rounds = -(-count // n)
            indices = np.concatenate([rng.permutation(n) for _ in range(rounds)])[:count]
            parts.append(np.stack([np.full(count, k), indices], axis=1))
        if not parts:
            return np.zeros((0, 2), np.int64)
        plan = np.concatenate(parts)
        np.random.default_rng([self.seed, self.epoch, len(self.datasets)]).shuffle(plan)
        return plan

    def __len__(self) -> int:
        return self.length

    def locate(self, index: int) -> tuple[int, int]:
        """(data set index, sample index) behind mixture sample `index`."""
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        k, i = self._plan[index]
        return int(k), int(i)

    def __getitem__(self, index: int) -> SegSample:  # type: ignore[override]
        k, i = self.locate(index)
        return self.datasets[k][i]


def build_mixture(
    specs: Sequence[DatasetSpec], length: int | None = None, seed: int = 0, by_image: bool = False
) -> MixedDataset:
    """Open every spec and mix them by their `ratio`; `by_image` mixes target groups (training)."""
    datasets = [(build_groups if by_image else build_dataset)(spec) for spec in specs]
    for spec, dataset in zip(specs, datasets):
        logger.info("data set %s: %d samples, ratio %g", spec.name, len(dataset), spec.ratio)
    return MixedDataset(datasets, [spec.ratio for spec in specs], length=length, seed=seed)
