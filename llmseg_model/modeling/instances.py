"""Object instances from the selected proposals.

SAM's everything mode proposes whole objects, their parts and near-duplicates of one object at
several scales, and the IoP rule keeps all of them when they lie inside the target (that is how a
multi-instance target comes out whole). Reporting each selected proposal as an instance therefore
counts one object several times. Here the selected proposals are grouped into objects: two
proposals are one object when they are near-duplicates (mask IoU) or when one lies mostly inside
the other (intersection over the smaller area); groups are the connected components of that
relation, so the result does not depend on the order of the proposals. Each instance's mask is the
union of its proposals, so the instances together cover exactly the union mask the answer reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from llmseg_model.config import InstanceConfig
from llmseg_model.modeling.proposals import Proposals
from llmseg_model.modeling.rle import coco_rle


@dataclass
class Instance:
    """One object of the answer: the union of the selected proposals that make it up."""

    rle: dict  # COCO RLE of the instance mask at native resolution (counts as str)
    score: float  # best selection score (IoP) among its proposals
    box: np.ndarray  # (4,) XYWH at native resolution
    area: int  # pixels
    proposal_indices: np.ndarray  # (n,) int64 raw proposal indices, best score first

    def mask(self) -> np.ndarray:
        """(H, W) bool mask at native resolution."""
        return mask_utils.decode(coco_rle(self.rle)).astype(bool)


def merge_instances(
    proposals: Proposals, indices: np.ndarray, scores: np.ndarray, config: InstanceConfig | None = None
) -> list[Instance]:
    """Group the selected proposals (`indices` into `proposals`, `scores` their selection scores)
    into object instances, best score first."""
    config = config or InstanceConfig()
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if indices.shape != scores.shape:
        raise ValueError(f"indices and scores must have one length, got {indices.shape} and {scores.shape}")
    ordered = np.sort(indices)
    if (ordered[1:] == ordered[:-1]).any():  # not np.unique: its first call in a process costs ~8 ms
        raise ValueError(f"selected proposal indices repeat: {indices.tolist()}")
    if len(indices) and (indices.min() < 0 or indices.max() >= proposals.count):
        raise ValueError(f"selected indices {indices.tolist()} out of range for {proposals.count} proposals")
    if not len(indices):
        return []
    rles = [coco_rle(proposals.rles[i]) for i in indices]
    groups = _components(same_object(rles, config))
    instances = []
    for members in groups:
        order = members[np.argsort(-scores[members], kind="stable")]
        merged = mask_utils.merge([rles[m] for m in order], intersect=False) if len(order) > 1 else rles[order[0]]
        instances.append(
            Instance(
                rle={"size": list(merged["size"]), "counts": _text(merged["counts"])},
                score=float(scores[order[0]]),
                box=np.asarray(mask_utils.toBbox(merged), dtype=np.float32),
                area=int(mask_utils.area(merged)),
                proposal_indices=indices[order],
            )
        )
    instances.sort(key=lambda inst: -inst.score)
    return instances


def instance_masks(instances: list[Instance], image_size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) bool masks of the instances, in their order (N may be 0)."""
    if not instances:
        return np.zeros((0, *image_size), dtype=bool)
    return mask_utils.decode([coco_rle(inst.rle) for inst in instances]).transpose(2, 0, 1).astype(bool)


def same_object(rles: list[dict], config: InstanceConfig) -> np.ndarray:
    """(N, N) bool: which pairs of proposals (COCO RLEs) are one object under `config` (diagonal True)."""
    if len(rles) < 2:  # one proposal is one object: no pairs to test
        return np.ones((len(rles), len(rles)), dtype=bool)
    rles = [coco_rle(r) for r in rles]
    areas = mask_utils.area(rles).astype(np.float64)
    # pycocotools with iscrowd=1 on the second argument gives |a & b| / |a| (the crowd rule).
    inside = np.asarray(mask_utils.iou(rles, rles, [1] * len(rles)), dtype=np.float64).reshape(len(rles), len(rles))
    intersection = np.round(inside * areas[:, None])  # whole pixels: exactly symmetric
    union = areas[:, None] + areas[None, :] - intersection
    iou = np.divide(intersection, union, out=np.zeros_like(union), where=union > 0)
    smaller = np.minimum(areas[:, None], areas[None, :])
    containment = np.divide(intersection, smaller, out=np.zeros_like(smaller), where=smaller > 0)
    joined = (iou >= config.iou_threshold) | (containment >= config.containment_threshold)
    np.fill_diagonal(joined, True)
    return joined


def _components(adjacency: np.ndarray) -> list[np.ndarray]:
    """Connected components of a symmetric bool adjacency matrix, as index arrays."""
    label = -np.ones(len(adjacency), dtype=np.int64)
    groups = []
    for start in range(len(adjacency)):
        if label[start] >= 0:
            continue
        label[start] = len(groups)
        stack, members = [start], []
        while stack:
            node = stack.pop()
            members.append(node)
            for other in np.flatnonzero(adjacency[node] & (label < 0)):
                label[other] = label[start]
                stack.append(int(other))
        groups.append(np.sort(np.asarray(members, dtype=np.int64)))
    return groups


def _text(counts: bytes | str) -> str:
    return counts.decode("ascii") if isinstance(counts, bytes) else counts
