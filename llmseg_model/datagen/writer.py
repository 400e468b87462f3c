"""Resumable output: an append-only progress log, and the LLM-Seg40K split files built from it.

Every finished image is one JSON line in `progress.jsonl`, flushed as soon as it is done, so a run
that is stopped or crashes loses at most the images in flight; the next run skips what the log
holds. The split files (`train.json`, `val.json`, `test.json`) are always rebuilt from the whole log
and replaced atomically, so they never reflect half a run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

from llmseg_model.datagen.config import SplitConfig

logger = logging.getLogger(__name__)

PROGRESS_FILE = "progress.jsonl"
SPLITS = ("train", "val", "test")


def split_of(source: str, name: str, split: SplitConfig, seed: int) -> str:
    """Stable split of an image: a hash of its name, so reruns and resumes never move an image."""
    digest = hashlib.sha1(f"{seed}:{source}:{name}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < split.train:
        return "train"
    if u < split.train + split.val:
        return "val"
    return "test"


class ProgressLog:
    """Append-only JSONL of finished images (accepted or finally rejected)."""

    def __init__(self, output_dir: str | Path) -> None:
        self.path = Path(output_dir) / PROGRESS_FILE
        self._lock = threading.Lock()

    def load(self) -> dict[tuple[str, str], dict]:
        """Finished records keyed by (source, image). A torn last line (crash mid-write) is cut off."""
        records: dict[tuple[str, str], dict] = {}
        if not self.path.is_file():
            return records
        raw = self.path.read_bytes()
        good_end = 0
        offset = 0
        for line in raw.splitlines(keepends=True):
            offset += len(line)
            if not line.strip():
                good_end = offset
                continue
            try:
                record = json.loads(line)
                key = (record["source"], record["image"])
            except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
                if offset == len(raw):
                    break  # torn tail from an interrupted run
                raise ValueError(f"{self.path}: line ending at byte {offset} is not a progress record") from None
            if not line.endswith(b"\n"):
                break  # complete JSON but no newline yet: treat as torn as well
            records[key] = record
            good_end = offset
        if good_end < len(raw):
            logger.warning("%s: dropping an incomplete last line from an interrupted run", self.path)
            with open(self.path, "r+b") as handle:
                handle.truncate(good_end)
        return records

    def append(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())


def build_splits(records: dict[tuple[str, str], dict]) -> dict[str, dict[str, dict]]:
    """LLM-Seg40K layout per split: image name -> {from_dataset, image_path, qa_pairs}."""
    splits: dict[str, dict[str, dict]] = {name: {} for name in SPLITS}
    owner: dict[str, str] = {}
    for (source, image), record in sorted(records.items()):
        if record.get("status") != "ok" or not record.get("qa_pairs"):
            continue
        if image in owner:
            raise ValueError(
                f"image name {image!r} is produced by both {owner[image]!r} and {source!r}; rename one source's files"
            )
        owner[image] = source
        splits[record["split"]][image] = {
            "from_dataset": source,
            "image_path": record.get("image_path", image),
            "bucket": record.get("bucket", ""),
            "qa_pairs": record["qa_pairs"],
        }
    return splits


def write_splits(output_dir: str | Path, records: dict[tuple[str, str], dict]) -> dict[str, int]:
    """Write train/val/test JSON atomically; returns images per split."""
    output_dir = Path(output_dir)
    splits = build_splits(records)
    for name, data in splits.items():
        write_json_atomic(output_dir / f"{name}.json", data)
    return {name: len(data) for name, data in splits.items()}


def write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
