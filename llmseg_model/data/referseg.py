"""Referring-segmentation sources (refCLEF, refCOCO, refCOCO+, refCOCOg) in the layout of the refer
toolkit, as LISA's data preparation places it under the data folder:

    refer_seg/<name>/refs(<split_by>).p, refer_seg/<name>/instances.json
    refer_seg/images/saiapr_tc-12/<file_name>                 refCLEF images
    refer_seg/images/mscoco/images/train2014/<file_name>      refCOCO, refCOCO+, refCOCOg images

`refs(<split_by>).p` is a Python pickle of plain data: a list of refs, each {ref_id, ann_id,
image_id, category_id, split, sentences: [{sent_id, sent, tokens, raw}, ...]}. It is read with an
unpickler that refuses every global (class or function), so a file holding anything but lists,
dicts, strings and numbers is an error instead of code run on load. `instances.json` is COCO
style; each ref points at one annotation, whose polygons or RLE are the target.

Only the `train` split is read (the published recipe trains on it). Images are those with a
train ref; each offers one candidate query per sentence of its refs (the published reader
flattens every ref's sentences and draws up to three). The published split for refCOCOg is umd,
for the others unc; `split_by` may name google or berkeley files instead.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from llmseg_model.data.image_io import read_rgb, segmentation_mask
from llmseg_model.data.sample import SegSample
from llmseg_model.data.targets import RecordDataset

logger = logging.getLogger(__name__)

REFER_KINDS = ("refclef", "refcoco", "refcoco+", "refcocog")
SPLIT_BYS = ("unc", "umd", "google", "berkeley")


def published_split_by(name: str) -> str:
    """The refs file the published recipe reads: umd for refCOCOg, unc for the rest."""
    return "umd" if name == "refcocog" else "unc"


class _PlainDataUnpickler(pickle.Unpickler):
    """Rebuilds only what pickle encodes without globals: containers, strings, numbers."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing {module}.{name}: a refs file holds plain data only")


def load_refs(path: str | Path) -> list[dict[str, Any]]:
    """Read a refs(*.p) pickle safely and check the fields the reader uses."""
    path = Path(path)
    try:
        refs = _PlainDataUnpickler(io.BytesIO(path.read_bytes()), encoding="utf-8").load()
    except (pickle.UnpicklingError, EOFError, ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable refs pickle ({err})") from err
    if not isinstance(refs, list):
        raise ValueError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    for k, ref in enumerate(refs):
        if not isinstance(ref, dict) or any(key not in ref for key in ("ref_id", "ann_id", "image_id", "split", "sentences")):
            raise ValueError(f"{path}: ref {k} lacks one of ref_id, ann_id, image_id, split, sentences")
        if not isinstance(ref["sentences"], list) or not all(isinstance(s, dict) and isinstance(s.get("sent"), str) for s in ref["sentences"]):
            raise ValueError(f"{path}: ref {ref['ref_id']} needs sentences [{{'sent': str}}, ...]")
    return refs


@dataclass
class _ReferImage:
    image_id: str
    path: Path
    height: int
    width: int
    queries: list[tuple[str, str, int]]  # (target name, sentence, annotation id)


class ReferDataset(RecordDataset):
    """One refer data set's train split, indexed by image."""

    def __init__(self, root: str | Path, name: str, split_by: str = "", split: str = "train") -> None:
        if name not in REFER_KINDS:
            raise ValueError(f"unknown refer data set {name!r}; choose one of {REFER_KINDS}")
        split_by = split_by or published_split_by(name)
        if split_by not in SPLIT_BYS:
            raise ValueError(f"split_by must be one of {SPLIT_BYS}, got {split_by!r}")
        base = Path(root) / "refer_seg"
        folder = base / name
        refs_path, instances_path = folder / f"refs({split_by}).p", folder / "instances.json"
        for path in (refs_path, instances_path):
            if not path.is_file():
                raise FileNotFoundError(f"{name}: {path} not found (see docs/training.md for the data layout)")
        if name == "refclef":
            self.source, image_dir = "saiapr_tc-12", base / "images" / "saiapr_tc-12"
        else:
            self.source, image_dir = "coco2014", base / "images" / "mscoco" / "images" / "train2014"
        self.name = f"{name} ({split_by})"
        refs = [r for r in load_refs(refs_path) if r["split"] == split]
        instances = json.loads(instances_path.read_text())
        images = {int(info["id"]): info for info in instances.get("images", [])}
        used = {int(ref["ann_id"]) for ref in refs}  # keep only the train refs' annotations in memory
        self.annotations = {int(a["id"]): a["segmentation"] for a in instances.get("annotations", []) if int(a["id"]) in used}
        queries: dict[int, list[tuple[str, str, int]]] = {}
        for ref in refs:
            ann_id, image_id = int(ref["ann_id"]), int(ref["image_id"])
            if ann_id not in self.annotations or image_id not in images:
                raise ValueError(f"{refs_path}: ref {ref['ref_id']} points at annotation {ann_id} / image {image_id}, not in {instances_path}")
            for k, sentence in enumerate(ref["sentences"]):
                target = f"ref {ref['ref_id']} sentence {sentence.get('sent_id', k)}"
                queries.setdefault(image_id, []).append((target, sentence["sent"].strip(), ann_id))
        self.records = [
            _ReferImage(
                image_id=str(Path(images[i]["file_name"]).with_suffix("")),
                path=image_dir / images[i]["file_name"],
                height=int(images[i]["height"]),
                width=int(images[i]["width"]),
                queries=queries[i],
            )
            for i in sorted(queries)
        ]
        logger.info("%s %s split: %d images, %d refs", self.name, split, len(self.records), len(refs))

    def targets(self, index: int) -> list[SegSample]:
        record = self.records[index]
        return [
            SegSample(
                image_id=record.image_id,
                texts=[sentence],
                load_image=partial(read_rgb, record.path),
                load_mask=partial(segmentation_mask, self.annotations[ann_id], record.height, record.width, f"{self.name} annotation {ann_id}"),
                source=self.source,
                phrase=True,
                target=target,
            )
            for target, sentence, ann_id in record.queries
        ]
