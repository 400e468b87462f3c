"""Timers of LLM-Seg's stages, each measuring one quantity on one frame, and the GPU's memory at
a run's milestones. The latency job interleaves them frame by frame so that a busy machine slows
every quantity alike."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

    from llmseg_model.modeling.features import MaskFeatureExtractor
    from llmseg_model.modeling.proposals import ProposalGenerator


@dataclass(frozen=True)
class Clock:
    """How one quantity is timed: wall time (CUDA synchronised around it), or this process's CPU
    time, which on a CPU shared with other jobs moves far less with their load (with one torch
    thread it is the work done; with several it adds up every thread's time)."""

    device: str = "cpu"
    kind: str = "wall"

    def seconds(self, run: Callable[[], Any]) -> tuple[float, Any]:
        now = time.perf_counter if self.kind == "wall" else time.process_time
        self._synchronise()
        start = now()
        out = run()
        self._synchronise()
        return now() - start, out

    def _synchronise(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()


def sam_encoder_seconds(sam: Sam, image: np.ndarray, clock: Clock) -> float:
    """SAM's image encoder alone, on the frame resized and padded as SamPredictor does."""
    import torch
    from segment_anything.utils.transforms import ResizeLongestSide

    with torch.inference_mode():
        resized = ResizeLongestSide(sam.image_encoder.img_size).apply_image(image)
        pixels = sam.preprocess(torch.as_tensor(resized, device=clock.device).permute(2, 0, 1).contiguous()[None])
        return clock.seconds(lambda: sam.image_encoder(pixels))[0]


def proposal_seconds(generator: ProposalGenerator, image: np.ndarray, clock: Clock) -> tuple[float, int, int]:
    """Everything mode as `prepare` runs it; returns the seconds, the prompts decoded and the
    proposals kept (random SAM weights keep few: post-processing then costs little)."""
    seconds, (proposals, prompts) = clock.seconds(lambda: generator.propose(image))
    return seconds, prompts, proposals.count


def dinov2_seconds(features: MaskFeatureExtractor, image: np.ndarray, clock: Clock) -> float:
    """DINOv2 patch features of one frame (preprocessing included, pooling not)."""
    import torch

    with torch.inference_mode():
        return clock.seconds(lambda: features.patch_features(features.preprocess(image).to(clock.device)))[0]


def prepare_seconds(model: Any, image: np.ndarray, clock: Clock, overlap: bool | None = None) -> tuple[float, dict[str, float]]:
    """The whole `LLMSeg.prepare` (its own choice of overlapping the image branch with SAM unless
    `overlap` says), and its own per-stage timings (always wall time)."""
    seconds, frame = clock.seconds(lambda: model.prepare(image, overlap=overlap))
    return seconds, dict(frame.timings)


def plain_instruction_seconds(model: Any, frame: Any, text: str, clock: Clock) -> float:
    """One instruction the way it ran before the prompt cache: the whole prompt from scratch, the
    answer generated, then fusion and selection."""
    from dataclasses import replace

    uncached = replace(frame, prefix=None)
    answer_mode = model.vlm.config.answer_mode
    model.vlm.config.answer_mode = "generate"
    try:
        return clock.seconds(lambda: model.query(uncached, text))[0]
    finally:
        model.vlm.config.answer_mode = answer_mode


def lower_bound_seconds(model: Any, frame: Any, text: str, clock: Clock) -> float:
    """One language-model forward of the instruction and the preset's answer tokens on the
    frame's cached prompt: no decoding, no LM head, no fusion."""
    import torch

    vlm = model.vlm
    prompt = vlm.prompts.prompt_ids(vlm.prompts.question(text), frame.image_features.shape[1])
    (_, answer, _), = vlm.preset_answers([text])
    tail, prefix = vlm.after_prefix(prompt + answer, frame.prefix)
    with torch.inference_mode():
        return clock.seconds(lambda: vlm.forward_rows([tail], frame.image_features, prefix))[0]


def llm_seconds(model: Any, frame: Any, text: str, clock: Clock) -> float:
    """The language-model stage of one instruction on the frame's cached prompt, in the preset's
    answer mode (tokenising, the forward, the answer check, the <SEG> projection)."""
    return clock.seconds(lambda: model.vlm.answer_batch(frame.image_features, [text], prefix=frame.prefix))[0]


def batch_seconds(model: Any, frame: Any, texts: list[str], clock: Clock) -> tuple[float, list[Any]]:
    """LLMSeg.query_batch for all of `texts` on the prepared frame (whole time), and its results."""
    return clock.seconds(lambda: model.query_batch(frame, texts))


class GpuMemory:
    """CUDA memory at the run's milestones: what is allocated there (weights and caches held) and
    the peak so far (the largest working set), in GiB; nothing on a CPU."""

    def __init__(self, device: str) -> None:
        import torch

        self.device = torch.device(device) if device.startswith("cuda") else None
        self.marks: dict[str, dict[str, float]] = {}
        if self.device is not None:
            torch.cuda.reset_peak_memory_stats(self.device)

    def mark(self, name: str) -> None:
        import torch

        if self.device is not None:
            gib = 1024.0**3
            self.marks[name] = {
                "allocated": torch.cuda.memory_allocated(self.device) / gib,
                "peak": torch.cuda.max_memory_allocated(self.device) / gib,
            }
