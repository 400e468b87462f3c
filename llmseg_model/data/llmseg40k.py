"""LLM-Seg40K: one json per split mapping image name -> {from_dataset, qa_pairs}.

Every qa pair is {"question", "answer", "rle_seg"} where rle_seg is a COCO RLE ({"size": [H, W],
"counts": str or list}) of the target. Images come from COCO 2017 and EgoObjects; where they live
is configurable: `image_root` alone (every image directly under it), or `image_dirs` mapping each
`from_dataset` value to a folder (relative folders are taken under `image_root`), as LLM-Seg's
own loader does with its coco / ego_objects image folders. An entry may also carry `image_path`
(relative to that folder, as llmseg_model.datagen writes it, e.g. "train2017/xxx.jpg"); without
it the image name is the file name.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from llmseg_model.data.reasonseg import load_rgb
from llmseg_model.data.sample import SegSample
from llmseg_model.modeling.rle import coco_rle

logger = logging.getLogger(__name__)


@dataclass
class LLMSeg40KRecord:
    """One question about one image."""

    image_name: str
    from_dataset: str
    rel_path: str  # below the image folder
    question: str
    answer: str
    rle: dict[str, Any]


def decode_rle(rle: dict[str, Any], where: str = "rle_seg") -> np.ndarray:
    """COCO RLE (compressed str/bytes counts or uncompressed list counts) -> (H, W) uint8 in {0, 1}."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"{where}: expected a COCO RLE with 'size' and 'counts'")
    size = rle["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise ValueError(f"{where}: 'size' must be [height, width] with positive ints, got {size!r}")
    height, width = size
    counts = rle["counts"]
    if not isinstance(counts, (list, str, bytes)):
        raise ValueError(f"{where}: 'counts' must be a string or a list of ints, got {type(counts).__name__}")
    if isinstance(counts, list) and sum(counts) != height * width:
        raise ValueError(f"{where}: uncompressed counts sum to {sum(counts)}, expected {height * width}")
    return mask_utils.decode(coco_rle({"size": [height, width], "counts": counts})).astype(np.uint8)


def _records(data: Any, where: str) -> list[LLMSeg40KRecord]:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object mapping image name -> entry")
    records = []
    for image_name in data:  # file order, as LLM-Seg reads it
        entry = data[image_name]
        at = f"{where}[{image_name!r}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("qa_pairs"), list):
            raise ValueError(f"{at}: expected {{'from_dataset': ..., 'qa_pairs': [...]}}")
        from_dataset = entry.get("from_dataset", "")
        if not isinstance(from_dataset, str):
            raise ValueError(f"{at}: 'from_dataset' must be a string")
        rel_path = entry.get("image_path", image_name)
        if not isinstance(rel_path, str) or not rel_path:
            raise ValueError(f"{at}: 'image_path' must be a non-empty string")
        for k, qa in enumerate(entry["qa_pairs"]):
            qa_at = f"{at}.qa_pairs[{k}]"
            if not isinstance(qa, dict):
                raise ValueError(f"{qa_at}: expected an object")
            question = qa.get("question")
            if not isinstance(question, str) or not question.strip():
                raise ValueError(f"{qa_at}: 'question' must be a non-empty string")
            answer = qa.get("answer", "")
            if not isinstance(answer, str):
                raise ValueError(f"{qa_at}: 'answer' must be a string")
            rle = qa.get("rle_seg")
            if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
                raise ValueError(f"{qa_at}: 'rle_seg' must be a COCO RLE with 'size' and 'counts'")
            records.append(LLMSeg40KRecord(image_name, from_dataset, rel_path, question.strip(), answer, rle))
    return records


class LLMSeg40KDataset(Sequence):
    """One SegSample per qa pair; samples of one image share its image_id (the json key), so the
    proposal cache computes each image once."""

    def __init__(
        self,
        json_path: str | Path,
        image_root: str | Path = "",
        image_dirs: Mapping[str, str] | None = None,
        source: str = "llmseg40k",
    ) -> None:
        self.json_path = Path(json_path)
        if not self.json_path.is_file():
            raise ValueError(f"LLM-Seg40K json not found: {self.json_path}")
        self.image_root = Path(image_root) if image_root else None
        self.image_dirs = dict(image_dirs or {})
        if self.image_root is None and not self.image_dirs:
            raise ValueError("LLM-Seg40K needs image_root or image_dirs to find its images")
        self.source = source
        try:
            data = json.loads(self.json_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.json_path}: not valid JSON ({err})") from err
        self.records = _records(data, str(self.json_path))
        missing = sorted({r.from_dataset for r in self.records} - set(self.image_dirs))
        if missing and self.image_dirs and self.image_root is None:
            raise ValueError(f"image_dirs has no folder for from_dataset {missing} and no image_root is set")
        logger.info("LLM-Seg40K %s: %d qa pairs on %d images", self.json_path, len(self.records), len(data))

    def image_path(self, record: LLMSeg40KRecord) -> Path:
        """Where an image lives: image_dirs[from_dataset] (under image_root if relative), else image_root."""
        folder = self.image_dirs.get(record.from_dataset)
        if folder is None:
            base = self.image_root
        elif self.image_root is not None:
            base = self.image_root / folder  # an absolute folder replaces the root
        else:
            base = Path(folder)
        return base / record.rel_path

    def _load_image(self, record: LLMSeg40KRecord) -> np.ndarray:
        path = self.image_path(record)
        if not path.is_file():
            raise FileNotFoundError(
                f"LLM-Seg40K image {record.image_name!r} (from_dataset {record.from_dataset!r}) not found at {path}; "
                "check image_root / image_dirs"
            )
        return load_rgb(path)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> SegSample:  # type: ignore[override]
        if isinstance(index, slice):
            raise TypeError("LLMSeg40KDataset does not support slicing; index samples one at a time")
        record = self.records[index]
        where = f"{self.json_path}[{record.image_name!r}]"
        return SegSample(
            image_id=record.image_name,
            texts=[record.question],
            load_image=lambda r=record: self._load_image(r),
            load_mask=lambda r=record: decode_rle(r.rle, where),
            source=self.source,
            answers=[record.answer],
        )
