"""On-disk cache of SAM everything-mode proposals, so training never runs SAM in the loop.

Layout: <root>/manifest.json records the SAM architecture, the proposal settings and the SAM
weights the cache was made with; <root>/proposals/<hh>/<sha1 of key>.npz holds one image's
`Proposals` (RLEs as JSON, low-res soft masks, areas, boxes, scores) plus the key and a
fingerprint of the image pixels. Each file is written to a temporary name and renamed into place,
so an interrupted precompute leaves only whole files and simply resumes.

CLI: python -m llmseg_model.data.proposal_cache --cache-dir DIR --preset tiny --data SPEC [...]
(torch and SAM are imported when the work starts, after the settings are checked.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from llmseg_model.cli import Command, check_data_paths, data_specs, require_existing
from llmseg_model.config import LLMSegConfig, ProposalConfig, SamConfig, check_fields, model_settings, preset_config
from llmseg_model.data.sample import SegSample
from llmseg_model.data.targets import image_ref

if TYPE_CHECKING:
    import torch

    from llmseg_model.data.mixing import DatasetSpec
    from llmseg_model.modeling.proposals import ProposalGenerator, Proposals

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
MANIFEST = "manifest.json"


class CacheMismatchError(ValueError):
    """The cache on disk was made with other settings than the ones asked for."""


def image_key(source: str, image_id: str) -> str:
    """The stable name of one image in the cache: data set name + image id."""
    if not image_id:
        raise ValueError("image_id must be non-empty to key the proposal cache")
    return f"{source}:{image_id}"


def image_fingerprint(image: np.ndarray) -> str:
    """sha1 of an image's shape and pixels; catches a cache entry made from another image."""
    image = np.ascontiguousarray(image)
    digest = hashlib.sha1(repr((image.shape, image.dtype.str)).encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def sam_fingerprint(sam: torch.nn.Module) -> str:
    """sha256 of SAM's state dict (names, dtypes, shapes, values): the weights as loaded, so a
    .pth and a .safetensors copy of one checkpoint agree and random weights are told apart."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(sam.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ProposalConfig settings added after caches were first written, with the value each implicitly
# had before it existed (low-res copies were area-resized, i.e. "stretch"; prompts were the grid;
# the decoder was segment-anything's own: `decoder: fused` equals it only up to float rounding).
# An identity names such a setting only where it differs from that value, so older caches keep
# their identity: caches from before a setting existed and caches that recorded it agree.
LEGACY_PROPOSAL_VALUES = {"lowres_layout": "stretch", "sampling": "grid", "decoder": "sam"}
# Settings that only matter when refining.
REFINE_PROPOSAL_FIELDS = ("refine_rounds", "refine_iou_thresh", "refine_max_area", "refine_min_distance", "fill_points_per_side")
# Settings that change how fast, not which, proposals come out (tested identical): never in it.
OUTPUT_NEUTRAL_PROPOSAL_FIELDS = ("engine",)


def proposal_identity(proposals: ProposalConfig | dict[str, Any]) -> dict[str, Any]:
    """The proposal settings a cache is keyed by (of a config, or of a manifest's recorded
    settings, which are normalised the same way before they are compared)."""
    values = dataclasses.asdict(proposals) if dataclasses.is_dataclass(proposals) else dict(proposals)
    refining = values.get("sampling", "grid") != "grid"
    return {
        name: value
        for name, value in values.items()
        if name not in OUTPUT_NEUTRAL_PROPOSAL_FIELDS
        and not (name in LEGACY_PROPOSAL_VALUES and value == LEGACY_PROPOSAL_VALUES[name])
        and not (name in REFINE_PROPOSAL_FIELDS and not refining)
    }


def cache_identity(sam: SamConfig, proposals: ProposalConfig, weights: str | None = None) -> dict[str, Any]:
    """What a cache must agree on. Leave `weights` (a `sam_fingerprint`) out to accept any SAM
    weights, e.g. when reading a cache made on another machine without SAM at hand."""
    identity: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "sam": dataclasses.asdict(sam),
        "proposals": proposal_identity(proposals),
    }
    if weights is not None:
        identity["sam_weights"] = weights
    return identity


def _json_normal(value: Any) -> Any:
    """Tuples -> lists, so an identity compares equal to its JSON round trip."""
    return json.loads(json.dumps(value))


def _differences(expected: Any, found: Any, prefix: str = "") -> list[str]:
    """Every setting that differs; below the top level (where e.g. `sam_weights` may be left out
    of what is expected) a setting the cache has and the request lacks is a difference too."""
    if isinstance(expected, dict) and isinstance(found, dict):
        out = []
        for key in expected:
            name = f"{prefix}.{key}" if prefix else key
            if key not in found:
                out.append(f"{name}: missing in cache (expected {expected[key]!r})")
            else:
                out += _differences(expected[key], found[key], name)
        if prefix:
            out += [f"{prefix}.{key}: cache has {_short(found[key])}, expected the default" for key in found if key not in expected]
        return out
    return [] if expected == found else [f"{prefix}: cache has {_short(found)}, expected {_short(expected)}"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _atomic_write(path: Path, write) -> None:
    """Write through `write(file)` into a temporary sibling, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class ProposalCache:
    """One folder of cached proposals, checked against the settings it is opened with.

    With a `generator`, a missing manifest is created, SAM's weights are part of the identity and
    `get` computes (and stores) what is missing. Without one the cache is read-only: it must exist,
    and any SAM weights are accepted unless `weights` (a `sam_fingerprint`) is given. A manifest
    that disagrees raises CacheMismatchError naming every differing setting.
    `verify` checks each entry against the sample's pixels (one extra image load per lookup).
    """

    def __init__(
        self,
        root: str | Path,
        sam: SamConfig,
        proposals: ProposalConfig,
        generator: ProposalGenerator | None = None,
        weights: str | None = None,
        verify: bool = True,
    ) -> None:
        self.root = Path(root)
        self.generator = generator
        self.verify = verify
        if generator is not None:
            if _json_normal(proposal_identity(generator.config)) != _json_normal(proposal_identity(proposals)):
                raise ValueError("the generator's ProposalConfig differs from the cache's proposals config")
            if weights is None:
                weights = sam_fingerprint(generator.sam)
        expect = _json_normal(cache_identity(sam, proposals, weights))
        manifest_path = self.root / MANIFEST
        if manifest_path.is_file():
            try:
                self.manifest = json.loads(manifest_path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{manifest_path}: unreadable proposal cache manifest ({err})") from err
            found = dict(self.manifest)
            if isinstance(found.get("proposals"), dict):
                found["proposals"] = proposal_identity(found["proposals"])
            diffs = _differences(expect, found)
            if diffs:
                raise CacheMismatchError(
                    f"proposal cache {self.root} was made with other settings:\n  "
                    + "\n  ".join(diffs)
                    + "\nuse another cache folder, or delete this one and precompute again"
                )
        elif generator is not None:
            if self.root.exists() and any(not p.name.startswith(".") for p in self.root.iterdir()):
                raise ValueError(f"{self.root} is not empty and has no {MANIFEST}; refusing to use it as a cache")
            self.manifest = expect
            text = json.dumps(expect, indent=2) + "\n"
            _atomic_write(manifest_path, lambda f: f.write(text.encode()))
            logger.info("created proposal cache %s", self.root)
        else:
            raise FileNotFoundError(
                f"no proposal cache at {self.root} (missing {MANIFEST}); fill one first with "
                "python -m llmseg_model.data.proposal_cache --cache-dir ... --data ..."
            )

    def path(self, source: str, image_id: str) -> Path:
        digest = hashlib.sha1(image_key(source, image_id).encode()).hexdigest()
        return self.root / "proposals" / digest[:2] / f"{digest}.npz"

    def contains(self, source: str, image_id: str) -> bool:
        return self.path(source, image_id).is_file()

    def put(self, source: str, image_id: str, proposals: Proposals, image: np.ndarray | None = None) -> Path:
        """Store one image's proposals atomically; `image` adds a pixel fingerprint for checks."""
        data = proposals.to_dict()
        arrays = {
            "key": np.array(image_key(source, image_id)),
            "fingerprint": np.array(image_fingerprint(image) if image is not None else ""),
            "rles": np.array(json.dumps(data["rles"])),
            "lowres": np.asarray(data["lowres"], np.float16),
            "areas": np.asarray(data["areas"], np.int64),
            "boxes": np.asarray(data["boxes"], np.float32).reshape(-1, 4),
            "sam_scores": np.asarray(data["sam_scores"], np.float32),
            "image_size": np.asarray(data["image_size"], np.int64),
        }
        path = self.path(source, image_id)
        _atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
        return path

    def lookup(self, source: str, image_id: str, image: np.ndarray | None = None) -> Proposals | None:
        """The cached proposals, or None when the image was never computed.

        With `image`, the entry must have been made from these very pixels: a stale or aliased
        entry is a ValueError, never a silently wrong answer."""
        path = self.path(source, image_id)
        if not path.is_file():
            return None
        key = image_key(source, image_id)
        try:
            with np.load(path, allow_pickle=False) as data:
                stored = {name: data[name] for name in data.files}
            rles = json.loads(str(stored["rles"]))
        except (zipfile.BadZipFile, OSError, ValueError, KeyError) as err:
            raise ValueError(f"corrupt proposal cache file {path} ({err}); delete it and precompute again") from err
        if str(stored["key"]) != key:
            raise ValueError(f"proposal cache file {path} holds {str(stored['key'])!r}, not {key!r}")
        fingerprint = str(stored["fingerprint"])
        from llmseg_model.modeling.proposals import Proposals

        if image is not None and fingerprint and fingerprint != image_fingerprint(image):
            raise ValueError(
                f"proposal cache entry {key!r} in {self.root} was made from a different image: the data set "
                "changed (e.g. another procedural seed or image size); use one cache folder per data set version"
            )
        return Proposals.from_dict(
            {
                "rles": rles,
                "lowres": stored["lowres"],
                "areas": stored["areas"],
                "boxes": stored["boxes"],
                "sam_scores": stored["sam_scores"],
                "image_size": stored["image_size"].tolist(),
            }
        )

    def get(self, sample: SegSample, image: np.ndarray | None = None) -> Proposals:
        """Proposals of a sample's image: from disk, else computed and stored (with a generator),
        else a KeyError saying how to fill the cache."""
        if image is None and (self.verify or (self.generator is not None and not self.contains(sample.source, sample.image_id))):
            image = sample.load_image()
        proposals = self.lookup(sample.source, sample.image_id, image if self.verify else None)
        if proposals is not None:
            return proposals
        if self.generator is None:
            raise KeyError(
                f"no cached proposals for {image_key(sample.source, sample.image_id)!r} in {self.root}; "
                "run python -m llmseg_model.data.proposal_cache for this data set first"
            )
        proposals = self.generator(image)
        self.put(sample.source, sample.image_id, proposals, image)
        return proposals


@dataclass
class PrecomputeStats:
    computed: int = 0
    skipped: int = 0  # already in the cache
    failed: int = 0
    other_shard: int = 0


def _shard_of(key: str, num_shards: int) -> int:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % num_shards


def precompute(
    datasets: Sequence[Sequence[SegSample]],
    cache: ProposalCache,
    shard: tuple[int, int] = (0, 1),
    skip_errors: bool = False,
    progress: bool = True,
) -> PrecomputeStats:
    """Compute proposals for every image of the data sets that the cache lacks.

    Images shared by several samples are computed once. `shard=(i, n)` keeps the images whose key
    hashes to i mod n, so n processes (one per GPU) can fill one cache side by side.
    """
    if cache.generator is None:
        raise ValueError("precompute needs a ProposalCache opened with a generator")
    index, num_shards = shard
    if num_shards < 1 or not 0 <= index < num_shards:
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    stats = PrecomputeStats()
    seen: set[str] = set()
    total = sum(len(d) for d in datasets)
    with tqdm(total=total, desc="proposals", unit="sample", disable=not progress) as bar:
        for dataset in datasets:
            for i in range(len(dataset)):
                bar.update(1)
                source, image_id, load_image = image_ref(dataset, i)
                key = image_key(source, image_id)
                if key in seen:
                    continue
                seen.add(key)
                if _shard_of(key, num_shards) != index:
                    stats.other_shard += 1
                    continue
                if cache.contains(source, image_id):
                    stats.skipped += 1
                    continue
                try:
                    image = load_image()
                    proposals = cache.generator(image)
                except Exception as err:
                    if not skip_errors:
                        raise RuntimeError(f"proposals for {key!r} failed: {err}") from err
                    logger.error("proposals for %r failed: %s", key, err)
                    stats.failed += 1
                    continue
                cache.put(source, image_id, proposals, image)
                stats.computed += 1
                bar.set_postfix(computed=stats.computed, cached=stats.skipped)
    logger.info("proposal cache %s: %s", cache.root, stats)
    return stats


@dataclass
class PrecomputeConfig:
    """One precompute run: which images, with which SAM, into which cache."""

    # A training YAML: its preset and model settings, data sets (training and validation) and
    # cache folder are used unless given here.
    train_config: str = ""
    cache_dir: str = ""  # cache folder (created if missing)
    # Data sets, repeatable: reasonseg:DIR | llmseg40k:JSON,image_root=DIR[,image_dir.SRC=DIR] |
    # procedural:SPLIT,size=N | ade20k|cocostuff|mapillary|pascal_part|paco_lvis:DATA_DIR |
    # refclef|refcoco|refcoco+|refcocog:DATA_DIR[,split_by=S] (options: limit=N).
    data: list[str] = field(default_factory=list)
    preset: str = ""  # model preset whose SAM and proposal settings to use (default: tiny, or the training config's)
    model: dict = field(default_factory=dict)  # overrides of its sam, proposals and weights settings
    random_sam_weights: bool = False  # randomly initialised SAM (seeded by seed); for timing and tests only
    seed: int = 0  # seed for random_sam_weights
    device: str = "cpu"  # torch device for SAM, e.g. cuda or cuda:1
    shard: str = "0/1"  # I/N: this process fills shard I of N (one process per GPU)
    skip_errors: bool = False  # log and skip images that fail
    progress: bool = True  # a progress bar

    def __post_init__(self) -> None:
        check_fields(self)
        if self.train_config and self.preset:
            raise ValueError("give preset or train_config (which names its preset), not both")
        self.shard_range()
        self.model_config()

    def shard_range(self) -> tuple[int, int]:
        """(I, N) of `shard`."""
        try:
            index, count = (int(x) for x in self.shard.split("/"))
        except ValueError:
            raise ValueError(f"shard must look like I/N, got {self.shard!r}") from None
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"shard {self.shard}: need 0 <= I < N")
        return index, count

    def train(self) -> Any:
        from llmseg_model.train_config import TrainConfig

        return TrainConfig.from_yaml(self.train_config) if self.train_config else None

    def model_config(self) -> LLMSegConfig:
        """The training config's model (or the preset) with this run's overrides."""
        train = self.train()
        return model_settings(train.model_config() if train else self.preset or "tiny", self.model)

    def datasets(self) -> list[DatasetSpec]:
        """The --data specs, else the training config's training and validation data sets."""
        if self.data:
            return data_specs(self.data)
        train = self.train()
        return list(train.datasets) + list(train.val_datasets) if train else []

    def cache_folder(self) -> str:
        train = self.train()
        return self.cache_dir or (train.cache_dir if train else "")


def base_model(found: dict[str, Any]) -> LLMSegConfig:
    """The model the --model.* defaults show: the training config's, else the preset's."""
    if found.get("train_config"):
        from llmseg_model.train_config import TrainConfig

        return TrainConfig.from_yaml(found["train_config"]).model_config()
    return preset_config(found.get("preset") or "tiny")


def check_paths(config: PrecomputeConfig) -> None:
    """A cache folder, data sets and SAM weights are given and exist before SAM loads."""
    if not config.cache_folder():
        raise ValueError("give cache_dir (or train_config)")
    specs = config.datasets()
    if not specs:
        raise ValueError("give at least one data set: --data SPEC (or train_config)")
    check_data_paths(specs, "data" if config.data else "train_config datasets")
    if not config.random_sam_weights:
        checkpoint = config.model_config().weights.sam_checkpoint
        if not checkpoint:
            raise FileNotFoundError("no SAM weights: set model.weights.sam_checkpoint (or random_sam_weights for tests)")
        require_existing("model.weights.sam_checkpoint", checkpoint, "SAM checkpoint file", folder=False)


def run(config: PrecomputeConfig) -> PrecomputeStats:
    """Fill the cache; returns the counts."""
    import torch

    from llmseg_model.data.mixing import build_dataset
    from llmseg_model.modeling.proposals import ProposalGenerator, build_sam

    model = config.model_config()
    if config.random_sam_weights:
        checkpoint = None
        torch.manual_seed(config.seed)
    else:
        checkpoint = model.weights.sam_checkpoint
    sam = build_sam(model.sam, checkpoint).to(config.device)
    cache = ProposalCache(config.cache_folder(), model.sam, model.proposals, generator=ProposalGenerator(sam, model.proposals))
    datasets = [build_dataset(spec) for spec in config.datasets()]
    stats = precompute(datasets, cache, config.shard_range(), config.skip_errors, progress=config.progress)
    logger.info("done: %s", json.dumps(dataclasses.asdict(stats)))
    return stats


def holds_proposals(folder: Path) -> bool:
    """Whether a cache folder holds computed proposals (kept after a failure: the run resumes)."""
    return any((folder / "proposals").rglob("*.npz"))


COMMAND = Command(
    name="llmseg-precompute",
    module="llmseg_model.data.proposal_cache",
    config=PrecomputeConfig,
    run=run,
    description="Precompute SAM everything-mode proposals into a resumable on-disk cache.",
    model_field="model",
    model_sections=("sam", "proposals", "weights"),
    base_model=base_model,
    prescan_keys=("preset", "train_config"),
    check=check_paths,
    outputs=lambda config: [config.cache_folder()],
    keep=holds_proposals,
)


run_cli = COMMAND.run_cli
main = COMMAND.main


if __name__ == "__main__":
    main()
