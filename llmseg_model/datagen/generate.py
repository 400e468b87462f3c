"""LLM-Seg40K-style data generation: annotations -> important objects -> LLM questions -> splits.

    python -m llmseg_model.datagen.generate --config config/datagen.yaml

Per image: pick the important categories (`selection`), make their masks (annotation polygons, or
SAM box prompts for box-only sets), describe the scene, ask the backend for questions whose answers
are listed objects, validate them, and append the result to the progress log. Masks are made on
the main thread (SAM is not thread-safe); LLM requests run on a bounded thread pool. A rerun skips
every image already in the log, then rebuilds the split files and the report.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from llmseg_model.datagen.annotations import (
    AnnotationSet,
    BoxMasker,
    ImageRecord,
    load_annotation_set,
    load_image,
    mask_rle,
    rle_to_json,
    segmentation_rle,
)
from llmseg_model.datagen.backends import Backend, BackendError, Completion, TransientBackendError, build_backend
from llmseg_model.datagen.config import DatagenConfig
from llmseg_model.datagen.prompts import ResponseFormatError, build_messages, parse_response
from llmseg_model.datagen.selection import ObjectPlan, Scene, build_scene, plan_objects
from llmseg_model.datagen.validate import QAPair, validate_items
from llmseg_model.cli import Command, require_existing
from llmseg_model.datagen.writer import PROGRESS_FILE, ProgressLog, split_of, write_json_atomic, write_splits

logger = logging.getLogger(__name__)

REPORT_FILE = "report.json"
# considered = tried this run; accepted / rejected are final and logged; failed (transport) and
# skipped (missing or mismatched image file) are retried by the next run; already_done were logged by
# an earlier run; over_quota did not fit a source's bucket quota.
IMAGE_COUNTS = ("considered", "accepted", "rejected", "failed", "skipped", "already_done", "over_quota")


@dataclass
class ImageResult:
    """What asking about one scene produced."""

    scene: Scene
    status: str  # "ok", "rejected" (final) or "failed" (transport; retried by a later run)
    pairs: list[QAPair] = field(default_factory=list)
    rejections: Counter = field(default_factory=Counter)  # question-level reasons
    completion: Completion = field(default_factory=Completion)  # summed over attempts
    error: str = ""


@dataclass
class Report:
    """Counts for the run summary (report.json)."""

    images: Counter = field(default_factory=Counter)
    image_rejections: Counter = field(default_factory=Counter)
    buckets: Counter = field(default_factory=Counter)
    question_rejections: Counter = field(default_factory=Counter)
    questions_accepted: int = 0
    requests: Counter = field(default_factory=Counter)
    request_errors: Counter = field(default_factory=Counter)
    splits: dict = field(default_factory=dict)
    qa_pairs_per_split: dict = field(default_factory=dict)
    elapsed_s: float = 0.0

    def to_dict(self) -> dict:
        return {
            "images": {key: self.images[key] for key in IMAGE_COUNTS} | dict(self.images),
            "image_rejections": dict(self.image_rejections),
            "buckets": dict(self.buckets),
            "questions": {
                "accepted": self.questions_accepted,
                "rejected": sum(self.question_rejections.values()),
            },
            "question_rejections": dict(self.question_rejections),
            "requests": dict(self.requests),
            "request_errors": dict(self.request_errors),
            "splits": self.splits,
            "qa_pairs_per_split": self.qa_pairs_per_split,
            "elapsed_s": round(self.elapsed_s, 3),
        }


class Generator:
    """Runs one config end to end. `backend` and `box_masker` may be passed in (tests, notebooks)."""

    def __init__(self, config: DatagenConfig, backend: Backend | None = None, box_masker: BoxMasker | None = None) -> None:
        config.validate()
        self.config = config
        self.output_dir = Path(config.output_dir)
        self._backend = backend
        self._box_masker = box_masker
        self.progress = ProgressLog(self.output_dir)
        self.report = Report()

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = build_backend(self.config.backend, self.config.prompt, self.config.seed)
        return self._backend

    @property
    def box_masker(self) -> BoxMasker:
        if self._box_masker is None:
            self._box_masker = BoxMasker.from_config(self.config.box_masks)
        return self._box_masker

    # -- selection -------------------------------------------------------------------------------

    def plan(self, done: dict) -> list[tuple[AnnotationSet, ImageRecord, ObjectPlan]]:
        """Images to process this run, in a seeded order, with quotas and resume applied."""
        planned = []
        owners: dict[str, str] = {}
        for source in self.config.sources:
            annotation_set = load_annotation_set(source)
            for image in annotation_set.images:  # split files are keyed by image name alone
                other = owners.setdefault(image.name, source.dataset_name)
                if other != source.dataset_name:
                    raise ValueError(f"sources {other!r} and {source.dataset_name!r} both have an image named {image.name!r}")
            order = sorted(annotation_set.images, key=lambda im: im.id)
            random.Random(f"{self.config.seed}:{source.dataset_name}").shuffle(order)
            taken: Counter = Counter()
            for image in order:
                if source.max_images and sum(taken.values()) >= source.max_images:
                    break
                result = plan_objects(image, annotation_set.categories, self.config.selection)
                if isinstance(result, str):
                    self.report.image_rejections[result] += 1
                    continue
                quota = source.bucket_quota.get(result.bucket)
                if quota is not None and taken[result.bucket] >= quota:
                    self.report.images["over_quota"] += 1
                    continue
                taken[result.bucket] += 1
                if (image.source, image.name) in done:
                    self.report.images["already_done"] += 1
                    continue
                planned.append((annotation_set, image, result))
        if self.config.limit:
            planned = planned[: self.config.limit]
        return planned

    def make_scene(self, annotation_set: AnnotationSet, image: ImageRecord, plan: ObjectPlan) -> Scene | str:
        """Masks for the planned objects, then the scene; a str is a rejection reason."""
        if image.kind == "egoobjects":
            path = image.path
            if path is None or not path.is_file():
                return "missing_image"
            pixels = load_image(path)
            if pixels.shape[:2] != (image.height, image.width):
                return "image_size_mismatch"
            masks = self.box_masker(pixels, [o.bbox for o in plan.objects])
            for obj, mask in zip(plan.objects, masks):
                obj.rle = mask_rle(mask) if mask is not None else None
        else:
            if image.image_dir and not image.path.is_file():
                return "missing_image"
            for obj in plan.objects:
                try:
                    obj.rle = segmentation_rle(obj.segmentation, image.height, image.width)
                except ValueError as error:  # one broken annotation drops its category, not the run
                    logger.warning("%s/%s: annotation %d: %s", image.source, image.name, obj.id, error)
                    obj.rle = None
        return build_scene(image, plan, annotation_set.categories, self.config.selection)

    # -- asking ----------------------------------------------------------------------------------

    def ask(self, scene: Scene) -> ImageResult:
        """Ask for questions, re-asking on malformed or fully rejected replies, up to max_attempts."""
        prompt = self.config.prompt
        result = ImageResult(scene=scene, status="rejected")
        messages = build_messages(scene, prompt)
        seen: set[str] = set()
        for _ in range(self.config.backend.max_attempts):
            try:
                completion = self.backend.complete(scene, messages)
            except TransientBackendError as error:
                _merge(result.completion, error.completion)
                result.status, result.error = "failed", str(error)
                break
            _merge(result.completion, completion)
            try:
                items = parse_response(completion.text)
            except ResponseFormatError as error:
                result.rejections[error.reason] += 1
                messages = _correction(messages, completion.text, f"it was not the JSON object asked for ({error})")
                continue
            pairs, rejected = validate_items(items, scene, prompt, seen, prompt.questions_per_image - len(result.pairs))
            result.pairs.extend(pairs)
            result.rejections.update(rejected)
            if len(result.pairs) >= prompt.min_questions:
                break
            reasons = ", ".join(f"{k} x{v}" for k, v in rejected.items()) or "no questions"
            messages = _correction(messages, completion.text, f"too few usable questions ({reasons})")
        if len(result.pairs) >= prompt.min_questions:
            result.status = "ok"
        # A transport failure with too few questions stays "failed": nothing is kept, and the image is
        # asked again by the next run.
        return result

    # -- run -------------------------------------------------------------------------------------

    def run(self) -> dict:
        start = time.monotonic()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.output_dir / "datagen_config.json", self.config.to_dict())
        done = self.progress.load()
        planned = self.plan(done)
        if planned:
            self.backend  # built here, once: a missing key fails before any mask is made
        logger.info("%d images to process (%d already done)", len(planned), self.report.images["already_done"])
        max_inflight = 2 * self.config.backend.concurrency
        pool = ThreadPoolExecutor(max_workers=self.config.backend.concurrency, thread_name_prefix="datagen")
        inflight: set[Future] = set()
        try:
            with tqdm(total=len(planned), desc="datagen", unit="img", dynamic_ncols=True) as bar:
                for annotation_set, image, plan in planned:
                    self.report.images["considered"] += 1
                    scene = self.make_scene(annotation_set, image, plan)
                    if isinstance(scene, str):
                        self._record_unusable(image, plan, scene)
                        bar.update(1)
                        continue
                    inflight.add(pool.submit(self.ask, scene))
                    while len(inflight) >= max_inflight:
                        inflight = self._collect(inflight, bar)
                while inflight:
                    inflight = self._collect(inflight, bar)
            pool.shutdown(wait=True)
        except BaseException:
            # Stop quickly (Ctrl-C, fatal backend error): queued images are dropped, requests already
            # sent finish on their own; everything recorded so far is in the log and the splits.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            self.report.elapsed_s = time.monotonic() - start
            self.finish()
        return self.report.to_dict()

    def _collect(self, inflight: set[Future], bar: tqdm) -> set[Future]:
        """Record whichever requests finished first; returns the ones still running."""
        finished, pending = wait(inflight, return_when=FIRST_COMPLETED)
        for future in finished:
            result = future.result()  # a BackendError (bad key, unknown model) stops the run here
            self._record(result)
            bar.update(1)
            counts = self.report.images
            bar.set_postfix(ok=counts["accepted"], rejected=counts["rejected"], failed=counts["failed"])
        return pending

    def _record_unusable(self, image: ImageRecord, plan: ObjectPlan, reason: str) -> None:
        for obj in plan.objects:
            obj.rle = None
        self.report.image_rejections[reason] += 1
        if reason in ("missing_image", "image_size_mismatch"):
            self.report.images["skipped"] += 1  # a data problem the user may fix: retried next run
            logger.warning("%s/%s: %s", image.source, image.name, reason)
            return
        self.report.images["rejected"] += 1
        self.progress.append(self._base_record(image, plan.bucket, "rejected") | {"reason": reason})

    def _record(self, result: ImageResult) -> None:
        scene, report = result.scene, self.report
        report.question_rejections.update(result.rejections)
        report.requests.update(
            sent=result.completion.requests,
            retries=result.completion.retries,
            prompt_tokens=result.completion.prompt_tokens,
            completion_tokens=result.completion.completion_tokens,
        )
        report.request_errors.update(result.completion.errors)
        if result.status == "failed":
            report.images["failed"] += 1
            logger.warning("%s: %s (left for a later run)", scene.image.name, result.error)
            self._release(scene)
            return
        record = self._base_record(scene.image, scene.bucket, result.status)
        record["rejections"] = dict(result.rejections)
        if result.status == "ok":
            report.images["accepted"] += 1
            report.buckets[f"{scene.image.source}/{scene.bucket}"] += 1
            report.questions_accepted += len(result.pairs)
            record["qa_pairs"] = [
                {
                    "question": pair.question,
                    "answer": pair.answer,
                    "rle_seg": rle_to_json(pair.rle),
                    "object_ids": [scene.object(k).annotation.id for k in pair.object_keys],
                }
                for pair in result.pairs
            ]
        else:
            report.images["rejected"] += 1
            report.image_rejections["no_valid_questions"] += 1
            record["reason"] = "no_valid_questions"
        self.progress.append(record)
        self._release(scene)

    @staticmethod
    def _release(scene: Scene) -> None:
        """Drop per-object masks once an image is done; a long run would otherwise keep them all."""
        for obj in scene.objects:
            obj.annotation.rle = None

    def _base_record(self, image: ImageRecord, bucket: str, status: str) -> dict:
        return {
            "source": image.source,
            "image": image.name,
            "image_path": image.rel_path,
            "status": status,
            "bucket": bucket,
            "split": split_of(image.source, image.name, self.config.split, self.config.seed),
        }

    def finish(self) -> None:
        """Rebuild the split files from the whole log and write report.json."""
        records = self.progress.load()
        self.report.splits = write_splits(self.output_dir, records)
        pairs = Counter()
        for record in records.values():
            if record.get("status") == "ok":
                pairs[record["split"]] += len(record.get("qa_pairs", []))
        self.report.qa_pairs_per_split = dict(pairs)
        write_json_atomic(self.output_dir / REPORT_FILE, self.report.to_dict())
        logger.info("report: %s", json.dumps(self.report.to_dict()))


def _merge(total: Completion, part: Completion) -> None:
    total.requests += part.requests
    total.retries += part.retries
    total.errors.update(part.errors)
    total.prompt_tokens += part.prompt_tokens
    total.completion_tokens += part.completion_tokens


def _correction(messages: list[dict], reply: str | None, problem: str) -> list[dict]:
    """The conversation so far plus the rejected reply and a request to fix it (first two turns kept)."""
    return messages[:2] + [
        {"role": "assistant", "content": (reply or "")[:4000]},
        {
            "role": "user",
            "content": f"Your reply was rejected: {problem}. Follow the rules and reply with only the JSON object.",
        },
    ]


def dry_run(config: DatagenConfig, generator: Generator, out=None) -> None:
    """Selection counts and the first prompt, without making masks of box-only sets or calling an LLM."""
    out = out or sys.stdout
    planned = generator.plan(generator.progress.load())
    buckets = Counter(f"{image.source}/{plan.bucket}" for _, image, plan in planned)
    out.write(f"images to process: {len(planned)} {dict(buckets)}\n")
    out.write(f"image rejections: {dict(generator.report.image_rejections)}\n")
    for annotation_set, image, plan in planned:
        if image.kind == "egoobjects":
            continue
        scene = generator.make_scene(annotation_set, image, plan)
        if isinstance(scene, Scene):
            for message in build_messages(scene, config.prompt):
                out.write(f"--- {message['role']} ---\n{message['content']}\n")
            break


@dataclass
class DatagenRun(DatagenConfig):
    """A generation run as the command line gives it: the settings, and whether to stop early."""

    dry_run: bool = False  # show selection counts and one prompt; no masks of box-only sets, no LLM calls

    def settings(self) -> DatagenConfig:
        """The generation settings alone (what the run writes to datagen_config.json)."""
        return DatagenConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DatagenConfig)})


def check_paths(config: DatagenRun) -> None:
    """The settings work together and the annotation files, image folders and SAM weights exist
    before anything is read."""
    config.validate()
    for i, source in enumerate(config.sources):
        require_existing(f"sources[{i}].annotations", source.annotations, "annotation JSON", folder=False)
        if source.image_dir:
            require_existing(f"sources[{i}].image_dir", source.image_dir, "image folder", folder=True)
        if source.captions:
            require_existing(f"sources[{i}].captions", source.captions, "captions JSON", folder=False)
    boxes_only = any(source.kind == "egoobjects" for source in config.sources)
    if boxes_only and not config.dry_run and not config.box_masks.allow_random_weights:
        require_existing("box_masks.sam_checkpoint", config.box_masks.sam_checkpoint, "SAM weights for box-only sources",
                         folder=False)


def run(config: DatagenRun) -> dict:
    """Generate (or show what would be generated); returns the report."""
    generator = Generator(config.settings())
    if config.dry_run:
        dry_run(config, generator)
        return {}
    report = generator.run()
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return report


def holds_progress(folder: Path) -> bool:
    """Whether an output folder holds finished images (kept after a failure: the run resumes)."""
    log = folder / PROGRESS_FILE
    return log.is_file() and log.stat().st_size > 0


COMMAND = Command(
    name="llmseg-datagen",
    module="llmseg_model.datagen.generate",
    config=DatagenRun,
    run=run,
    description=__doc__.splitlines()[0],
    require_config="no datagen config: give --config FILE (e.g. config/datagen_offline.yaml); options after it "
    "override its settings",
    check=check_paths,
    outputs=lambda config: [] if config.dry_run else [config.output_dir],
    keep=holds_progress,
    bad_input=(FileNotFoundError, NotADirectoryError, ValueError, KeyError, BackendError),
)


main = COMMAND.main


if __name__ == "__main__":
    sys.exit(main())
