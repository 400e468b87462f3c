"""Settings of the LLM-Seg40K-style data generator, as dataclasses read from YAML.

One config describes a whole run: which annotation sets to read, how important objects are picked,
how masks are made for box-only sets, which LLM backend writes the questions, how answers are
validated and how images are split. Unknown keys are an error so a typo never silently falls back
to a default.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOURCE_KINDS = ("lvis", "egoobjects")
BACKEND_KINDS = ("offline", "openai")
BUCKETS = ("simple", "complex")


@dataclass
class SourceConfig:
    """One annotation set. `lvis` carries polygon/RLE masks; `egoobjects` carries boxes only."""

    kind: str = "lvis"  # "lvis" (COCO-format with masks) or "egoobjects" (COCO-format, boxes only)
    annotations: str = ""  # path to the annotation JSON
    image_dir: str = ""  # folder with the images; may be empty for lvis (masks need no pixels)
    name: str = ""  # the "from_dataset" value written for its images; defaults to `kind`
    captions: str = ""  # optional COCO-captions JSON (same image ids) added to the scene summary
    max_images: int = 0  # images taken from this set after filtering; 0 = all
    # Images per category bucket ("simple": 2-5 categories, "complex": >= 6); a missing bucket is
    # unlimited. The paper took 6000 simple + 4000 complex LVIS images.
    bucket_quota: dict[str, int] = field(default_factory=dict)

    @property
    def dataset_name(self) -> str:
        return self.name or self.kind


@dataclass
class SelectionConfig:
    """How the objects a question may refer to are picked from an image's annotations."""

    min_categories: int = 2  # images with fewer distinct (kept) categories are skipped
    simple_max_categories: int = 5  # 2..5 categories -> "simple" bucket, more -> "complex"
    max_listed_categories: int = 8  # most important categories listed to the LLM
    max_instances_per_category: int = 6  # categories with more instances are left out (crowds)
    min_area_fraction: float = 0.002  # a category is kept when its largest instance covers this
    main_category_boost: float = 1.0  # importance bonus for EgoObjects' main category
    skip_not_exhaustive: bool = True  # leave out LVIS categories marked not exhaustively annotated


@dataclass
class BoxMaskConfig:
    """SAM box prompts that turn box-only annotations (EgoObjects) into masks."""

    sam_preset: str = "paper"  # architecture from llmseg_model.config presets ("paper" = ViT-H)
    sam_checkpoint: str = ""  # SAM weights (.pth or .safetensors); required for box-only sources
    allow_random_weights: bool = False  # testing only: build SAM without weights
    device: str = "cpu"
    box_margin: float = 0.05  # mask pixels further than this fraction of the box side are cut
    min_box_fill: float = 0.05  # masks covering less of their box are treated as empty
    fallback_to_box: bool = False  # use the filled box when SAM's mask is empty, instead of dropping


@dataclass
class PromptConfig:
    """What is asked of the LLM and what an acceptable question looks like."""

    questions_per_image: int = 3
    min_questions: int = 1  # re-ask until this many are accepted; fewer after all attempts rejects the image
    max_answer_objects: int = 4  # an answer may be the union of at most this many objects
    allow_category_names: bool = False  # allow a question to name an answer's category outright
    min_question_chars: int = 12
    max_question_chars: int = 400
    send_image: bool = False  # also send the image (data URL) to vision-capable models
    extra_instructions: str = ""  # appended to the system prompt


@dataclass
class BackendConfig:
    """Where questions come from: an OpenAI-compatible chat endpoint, or offline templates."""

    kind: str = "offline"  # "openai" or "offline"
    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o"
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key
    temperature: float = 0.7
    max_tokens: int = 1024
    json_mode: bool = True  # send response_format={"type": "json_object"}
    timeout_s: float = 60.0  # per request
    max_retries: int = 4  # transport retries per request (timeouts, 429, 5xx, connection errors)
    backoff_s: float = 1.0  # first retry delay; doubles each retry, with jitter
    backoff_max_s: float = 30.0
    max_attempts: int = 3  # requests per image when the answer is malformed or fully rejected
    requests_per_minute: float = 60.0  # shared by all workers; 0 = unlimited
    concurrency: int = 4  # requests in flight at once


@dataclass
class SplitConfig:
    """Fractions of images per split; assignment is a stable hash of the image name."""

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1


@dataclass
class DatagenConfig:
    """One generation run."""

    sources: list[SourceConfig] = field(default_factory=list)
    output_dir: str = "llmseg40k_out"
    seed: int = 0
    limit: int = 0  # total images processed in this run (after resume skips); 0 = all
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    box_masks: BoxMaskConfig = field(default_factory=BoxMaskConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        self.sources = [s if isinstance(s, SourceConfig) else _build(SourceConfig, s, "sources[]") for s in self.sources]

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        if not self.sources:
            raise ValueError("datagen config: `sources` is empty; list at least one annotation set")
        names = set()
        for i, source in enumerate(self.sources):
            where = f"sources[{i}]"
            if source.kind not in SOURCE_KINDS:
                raise ValueError(f"{where}.kind: unknown kind {source.kind!r}; choose one of {SOURCE_KINDS}")
            if not source.annotations:
                raise ValueError(f"{where}.annotations: path to the annotation JSON is required")
            if source.kind == "egoobjects" and not source.image_dir:
                raise ValueError(f"{where}.image_dir: egoobjects masks come from SAM and need the images")
            unknown = set(source.bucket_quota) - set(BUCKETS)
            if unknown:
                raise ValueError(f"{where}.bucket_quota: unknown bucket(s) {sorted(unknown)}; known: {BUCKETS}")
            if source.dataset_name in names:
                raise ValueError(f"{where}.name: two sources share the name {source.dataset_name!r}")
            names.add(source.dataset_name)
        if self.backend.kind not in BACKEND_KINDS:
            raise ValueError(f"backend.kind: unknown backend {self.backend.kind!r}; choose one of {BACKEND_KINDS}")
        if self.backend.concurrency < 1:
            raise ValueError("backend.concurrency must be at least 1")
        if self.backend.max_attempts < 1:
            raise ValueError("backend.max_attempts must be at least 1")
        if self.backend.timeout_s <= 0:
            raise ValueError("backend.timeout_s must be positive")
        fractions = (self.split.train, self.split.val, self.split.test)
        if min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"split: train/val/test must be non-negative and sum to 1, got {fractions}")
        if self.selection.min_categories < 1:
            raise ValueError("selection.min_categories must be at least 1")
        if not 1 <= self.prompt.min_questions <= self.prompt.questions_per_image:
            raise ValueError("prompt: need 1 <= min_questions <= questions_per_image")
        if self.prompt.max_answer_objects < 1:
            raise ValueError("prompt.max_answer_objects must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DatagenConfig":
        return _build(cls, data, "datagen config")

    @classmethod
    def load(cls, path: str | Path) -> "DatagenConfig":
        """Read a YAML (or JSON) file."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"datagen config not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        return cls.from_dict(data)


def _build(cls: type, data: Any, where: str) -> Any:
    """Build a dataclass from a nested mapping; unknown keys are a ValueError naming them."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {sorted(unknown)}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}.{name}")
        elif typing.get_origin(hint) is list:
            if not isinstance(value, list):
                raise ValueError(f"{where}.{name}: expected a list, got {type(value).__name__}")
            (item,) = typing.get_args(hint)
            if dataclasses.is_dataclass(item):
                value = [_build(item, v, f"{where}.{name}[{i}]") for i, v in enumerate(value)]
            kwargs[name] = list(value)
        elif typing.get_origin(hint) is dict:
            if not isinstance(value, dict):
                raise ValueError(f"{where}.{name}: expected a mapping, got {type(value).__name__}")
            kwargs[name] = dict(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)
