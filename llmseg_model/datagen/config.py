"""Settings of the LLM-Seg40K-style data generator, as dataclasses read from YAML.

One config describes a whole run: which annotation sets to read, how important objects are picked,
how masks are made for box-only sets, which LLM backend writes the questions, how answers are
validated and how images are split. Unknown keys are an error so a typo never silently falls back
to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmseg_model.config import PRESET_NAMES, bounded, check_fields, from_mapping, one_of

SOURCE_KINDS = ("lvis", "egoobjects")
BACKEND_KINDS = ("offline", "openai")
BUCKETS = ("simple", "complex")


@dataclass
class SourceConfig:
    """One annotation set. `lvis` carries polygon/RLE masks; `egoobjects` carries boxes only."""

    kind: str = one_of("lvis", SOURCE_KINDS)  # "lvis" (COCO-format with masks) or "egoobjects" (COCO-format, boxes only)
    annotations: str = ""  # path to the annotation JSON
    image_dir: str = ""  # folder with the images; may be empty for lvis (masks need no pixels)
    name: str = ""  # the "from_dataset" value written for its images; defaults to `kind`
    captions: str = ""  # optional COCO-captions JSON (same image ids) added to the scene summary
    max_images: int = bounded(0, ge=0)  # images taken from this set after filtering; 0 = all
    # Images per category bucket ("simple": 2-5 categories, "complex": >= 6); a missing bucket is
    # unlimited. The paper took 6000 simple + 4000 complex LVIS images.
    bucket_quota: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def dataset_name(self) -> str:
        return self.name or self.kind


@dataclass
class SelectionConfig:
    """How the objects a question may refer to are picked from an image's annotations."""

    min_categories: int = bounded(2, ge=1)  # images with fewer distinct (kept) categories are skipped
    simple_max_categories: int = bounded(5, ge=1)  # 2..5 categories -> "simple" bucket, more -> "complex"
    max_listed_categories: int = bounded(8, ge=1)  # most important categories listed to the LLM
    max_instances_per_category: int = bounded(6, ge=1)  # categories with more instances are left out (crowds)
    min_area_fraction: float = bounded(0.002, ge=0.0, le=1.0)  # a category is kept when its largest instance covers this
    main_category_boost: float = 1.0  # importance bonus for EgoObjects' main category
    skip_not_exhaustive: bool = True  # leave out LVIS categories marked not exhaustively annotated

    def __post_init__(self) -> None:
        check_fields(self, "selection.")


@dataclass
class BoxMaskConfig:
    """SAM box prompts that turn box-only annotations (EgoObjects) into masks."""

    sam_preset: str = one_of("paper", PRESET_NAMES)  # architecture from llmseg_model.config presets ("paper" = ViT-H)
    sam_checkpoint: str = ""  # SAM weights (.pth or .safetensors); required for box-only sources
    allow_random_weights: bool = False  # testing only: build SAM without weights
    device: str = "cpu"  # torch device for SAM
    box_margin: float = bounded(0.05, ge=0.0)  # mask pixels further than this fraction of the box side are cut
    min_box_fill: float = bounded(0.05, ge=0.0)  # masks covering less of their box are treated as empty (> 1: always)
    fallback_to_box: bool = False  # use the filled box when SAM's mask is empty, instead of dropping

    def __post_init__(self) -> None:
        check_fields(self, "box_masks.")


@dataclass
class PromptConfig:
    """What is asked of the LLM and what an acceptable question looks like."""

    questions_per_image: int = bounded(3, ge=1)
    min_questions: int = bounded(1, ge=1)  # re-ask until this many are accepted; fewer after all attempts rejects the image
    max_answer_objects: int = bounded(4, ge=1)  # an answer may be the union of at most this many objects
    allow_category_names: bool = False  # allow a question to name an answer's category outright
    min_question_chars: int = bounded(12, ge=0)
    max_question_chars: int = bounded(400, ge=1)
    send_image: bool = False  # also send the image (data URL) to vision-capable models
    extra_instructions: str = ""  # appended to the system prompt

    def __post_init__(self) -> None:
        check_fields(self, "prompt.")


@dataclass
class BackendConfig:
    """Where questions come from: an OpenAI-compatible chat endpoint, or offline templates."""

    kind: str = one_of("offline", BACKEND_KINDS)  # "openai" or "offline"
    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o"
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key
    temperature: float = bounded(0.7, ge=0.0)
    max_tokens: int = bounded(1024, ge=1)
    json_mode: bool = True  # send response_format={"type": "json_object"}
    timeout_s: float = bounded(60.0, gt=0.0)  # per request
    max_retries: int = bounded(4, ge=0)  # transport retries per request (timeouts, 429, 5xx, connection errors)
    backoff_s: float = bounded(1.0, ge=0.0)  # first retry delay; doubles each retry, with jitter
    backoff_max_s: float = bounded(30.0, ge=0.0)
    max_attempts: int = bounded(3, ge=1)  # requests per image when the answer is malformed or fully rejected
    requests_per_minute: float = bounded(60.0, ge=0.0)  # shared by all workers; 0 = unlimited
    concurrency: int = bounded(4, ge=1)  # requests in flight at once

    def __post_init__(self) -> None:
        check_fields(self, "backend.")


@dataclass
class SplitConfig:
    """Fractions of images per split; assignment is a stable hash of the image name."""

    train: float = bounded(0.8, ge=0.0, le=1.0)
    val: float = bounded(0.1, ge=0.0, le=1.0)
    test: float = bounded(0.1, ge=0.0, le=1.0)

    def __post_init__(self) -> None:
        check_fields(self, "split.")


@dataclass
class DatagenConfig:
    """One generation run."""

    sources: list[SourceConfig] = field(default_factory=list)
    output_dir: str = "llmseg40k_out"  # split files, progress log, report
    seed: int = 0
    limit: int = bounded(0, ge=0)  # total images processed in this run (after resume skips); 0 = all
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    box_masks: BoxMaskConfig = field(default_factory=BoxMaskConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        self.sources = [s if isinstance(s, SourceConfig) else from_mapping(SourceConfig, s, f"sources[{i}].")
                        for i, s in enumerate(self.sources)]
        check_fields(self)

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        if not self.sources:
            raise ValueError("datagen config: `sources` is empty; list at least one annotation set")
        # the parts' own field checks again (choices, bounds), for settings changed after loading
        for part, prefix in ((self.selection, "selection."), (self.box_masks, "box_masks."), (self.prompt, "prompt."),
                             (self.backend, "backend."), (self.split, "split.")):
            check_fields(part, prefix)
        names = set()
        for i, source in enumerate(self.sources):
            where = f"sources[{i}]"
            check_fields(source, f"{where}.")
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
        fractions = (self.split.train, self.split.val, self.split.test)
        if abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"split: train/val/test must be non-negative and sum to 1, got {fractions}")
        if self.prompt.min_questions > self.prompt.questions_per_image:
            raise ValueError("prompt: need 1 <= min_questions <= questions_per_image")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DatagenConfig":
        """Build from a (possibly partial) mapping; unknown keys, wrong types and values out of range
        are a ValueError naming the setting."""
        return from_mapping(cls, data)

    @classmethod
    def load(cls, path: str | Path) -> "DatagenConfig":
        """Read a YAML (or JSON) file."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"datagen config not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        return cls.from_dict(data)
