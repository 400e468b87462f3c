"""The one record type every reader yields, so training and the benchmark never care where a
sample came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

IGNORE_INDEX = 255  # ground-truth pixels excluded from losses and metrics


@dataclass
class SegSample:
    """One image with one target and the instructions that refer to it.

    Images and masks load lazily so a data set of thousands of samples costs nothing until read.
    `mask` is (H, W) uint8: 1 target, 0 background, 255 ignore.
    """

    image_id: str
    texts: list[str]
    load_image: Callable[[], np.ndarray]  # -> (H, W, 3) uint8 RGB
    load_mask: Callable[[], np.ndarray]  # -> (H, W) uint8 in {0, 1, 255}
    source: str = ""  # data set name, for mixing ratios and reports
    answers: list[str] = field(default_factory=list)  # reference answer text per instruction, if any
    # True when `texts` are short phrases or class names ("the red cup", "chair") rather than full
    # sentences: the published model wraps the two in different question templates
    # (VlmConfig.phrase_* vs sentence templates), so readers say which they have.
    phrase: bool = False
    # Names this target among the samples of its image when `texts` alone do not (two instances of
    # one part class read alike): training memoises per-proposal targets under (image, target).
    target: str = ""
