"""SAM everything mode without the stock generator's overheads, and an adaptive prompt set.

`LeanMaskGenerator` computes what `segment_anything.SamAutomaticMaskGenerator` computes for the
whole image (one crop, no small-region clean-up): the same masks, predicted IoUs and order (tested
against the stock class). It skips work whose result the stock generator throws away:

- the mask decoder's upscaling runs only for prompts with at least one mask whose predicted IoU
  passes (the IoU head reads the transformer's output, before upscaling), so a background prompt
  costs the two-way transformer and nothing else;
- only masks that pass predicted IoU are upsampled to the image, in one batch;
- nothing is run-length encoded or deep-copied: candidates stay as low-res logits (and their
  binary masks, up to MASK_BYTES), box NMS runs on their boxes, and NMS's survivors are returned.

With `decoder="fused"` the two-way transformer is computed as modeling/fused_decoder.py does it
(the image-side work once per image; equal to SAM's up to float rounding), everything else as above.

With `sampling="refine"` the prompts are no longer the dense grid (an approximation, measured for
recall in docs/benchmark.md): a coarse `points_per_side` grid first, then `refine_rounds` rounds
that prompt again where SAM saw something it did not keep (a rejected prompt whose best predicted
IoU is at least `refine_iou_thresh`: one new point at the centre of that mask's part that no kept
mask covers yet), and optionally the points of a `fill_points_per_side` grid that no kept mask
covers. On the tiny preset this finds the objects of the dense 16x16 grid with ~30 prompts
instead of 256: the two-way transformer runs once per prompt, so prompts are the cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import PromptEncoder, Sam
from segment_anything.predictor import SamPredictor
from segment_anything.utils.amg import batch_iterator, build_point_grid, calculate_stability_score
from torchvision.ops.boxes import batched_nms

from llmseg_model.config import ProposalConfig
from llmseg_model.modeling.fused_decoder import FusedTwoWayTransformer

# SamAutomaticMaskGenerator's default, which the project never changes.
STABILITY_SCORE_OFFSET = 1.0
# Full-size binary masks of candidates kept for NMS's survivors, per image (64 MiB: ~85 masks at
# 1024x768; the tiny preset's few dozen 256x256 masks take 2-3 MiB).
MASK_BYTES = 64 << 20


@dataclass
class MaskSet:
    """Everything-mode output of one image: binary masks in SAM's NMS order, and their scores."""

    masks: np.ndarray  # (N, H, W) bool at the size of the image given to `generate`
    scores: np.ndarray  # (N,) float32 predicted IoU
    prompts: int  # point prompts decoded (the dense grid's count for sampling="grid")


@dataclass
class _Decoded:
    """One batch of prompts through the mask decoder."""

    iou_preds: torch.Tensor  # (B, 3) predicted IoU of the three multimask outputs
    upscaled: torch.Tensor  # (B,) bool: prompts whose low-res masks were computed
    low_res: torch.Tensor  # (upscaled.sum(), 3, h, w) logits of those prompts


@dataclass
class _Candidates:
    """Masks that passed predicted IoU and stability, kept as low-res logits until NMS."""

    low_res: list[torch.Tensor] = field(default_factory=list)
    iou_preds: list[torch.Tensor] = field(default_factory=list)
    boxes: list[torch.Tensor] = field(default_factory=list)
    # Their binary masks at full size while they fit in MASK_BYTES (then None: upsampled again
    # from `low_res` for the ones NMS keeps, as memory allows at any image size).
    masks: list[torch.Tensor] | None = field(default_factory=list)
    mask_bytes: int = 0

    def add(self, low_res: torch.Tensor, iou_preds: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor) -> None:
        self.low_res.append(low_res)
        self.iou_preds.append(iou_preds)
        self.boxes.append(boxes)
        if self.masks is None:
            return
        self.mask_bytes += masks.numel()
        if self.mask_bytes <= MASK_BYTES:
            self.masks.append(masks)
        else:
            self.masks = None


class LeanMaskGenerator:
    """Everything-mode masks of one image from SAM's own modules, without discarded work."""

    def __init__(self, sam: Sam, config: ProposalConfig) -> None:
        config.__post_init__()  # its own checks again (min_mask_region_area needs the stock engine)
        self.config = config
        self.predictor = SamPredictor(sam)
        self.fused = FusedTwoWayTransformer(sam) if config.decoder == "fused" else None

    @torch.inference_mode()
    def generate(self, image: np.ndarray) -> MaskSet:
        """image: (H, W, 3) uint8 RGB at the size SAM should see (already downscaled)."""
        config = self.config
        height, width = image.shape[:2]
        self.predictor.set_image(image)
        if self.fused is not None:
            self.fused.set_image(self.predictor.features)
        try:
            candidates = _Candidates()
            covered = torch.zeros((height, width), dtype=torch.bool, device=self.predictor.device)
            scale = np.array([width, height], dtype=np.float64)[None]
            points = build_point_grid(config.points_per_side) * scale
            prompted = [points]
            min_distance = config.refine_min_distance * max(height, width)
            rounds = config.refine_rounds if config.sampling == "refine" else 0
            for round_index in range(rounds + 1):
                follow = round_index < rounds
                new_points = []
                for (batch,) in batch_iterator(config.points_per_batch, points):
                    new_points += self._run_batch(batch, candidates, covered, follow)
                if not follow:
                    break
                points = fresh_points(new_points, prompted, covered, min_distance)
                if not len(points):
                    break
                prompted.append(points)
            if config.sampling == "refine" and config.fill_points_per_side:
                grid = build_point_grid(config.fill_points_per_side) * scale
                points = fresh_points(list(grid), prompted, covered, min_distance)
                if len(points):
                    prompted.append(points)
                    for (batch,) in batch_iterator(config.points_per_batch, points):
                        self._run_batch(batch, candidates, covered, follow=False)
            masks, scores = self._keep(candidates, (height, width))
        finally:
            self.predictor.reset_image()
            if self.fused is not None:
                self.fused.reset_image()
        return MaskSet(masks=masks, scores=scores, prompts=sum(len(p) for p in prompted))

    def _decode(self, points: np.ndarray, follow: bool) -> _Decoded:
        """`MaskDecoder.predict_masks` with its upscaling and hypernetwork product only for the
        prompts whose masks can be kept (or followed); the rest is SAM's code path unchanged."""
        predictor = self.predictor
        model = predictor.model
        decoder = model.mask_decoder
        coords = torch.as_tensor(predictor.transform.apply_coords(points, predictor.original_size), device=predictor.device)
        sparse = point_embeddings(model.prompt_encoder, coords)
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
        tokens = torch.cat((output_tokens, sparse), dim=1)
        c, h, w = predictor.features.shape[1:]
        if self.fused is not None:
            hs, src = self.fused(tokens)
        else:
            dense = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)  # no mask input
            src = torch.repeat_interleave(predictor.features, tokens.shape[0], dim=0) + dense
            pos_src = torch.repeat_interleave(model.prompt_encoder.get_dense_pe(), tokens.shape[0], dim=0)
            hs, src = decoder.transformer(src, pos_src, tokens)
        mask_tokens_out = hs[:, 1 : 1 + decoder.num_mask_tokens, :]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
        )
        iou_preds = decoder.iou_prediction_head(hs[:, 0, :])[:, 1:]  # the multimask outputs, as SAM slices them
        wanted = self._passes(iou_preds).any(1)
        if follow:
            wanted |= iou_preds.max(1).values >= self.config.refine_iou_thresh
        if not wanted.any():
            side = 4 * h  # SAM's low-res masks are 4x its image embedding
            empty = iou_preds.new_zeros((0, iou_preds.shape[1], side, 4 * w))
            return _Decoded(iou_preds=iou_preds, upscaled=wanted, low_res=empty)
        upscaled = decoder.output_upscaling(src[wanted].transpose(1, 2).reshape(-1, c, h, w))
        n, c2, h2, w2 = upscaled.shape
        low_res = (hyper_in[wanted] @ upscaled.view(n, c2, h2 * w2)).view(n, -1, h2, w2)[:, 1:]
        return _Decoded(iou_preds=iou_preds, upscaled=wanted, low_res=low_res)

    def _passes(self, iou_preds: torch.Tensor) -> torch.Tensor:
        """Which masks pass predicted IoU (all of them when the threshold is 0, as in the stock)."""
        if self.config.pred_iou_thresh > 0.0:
            return iou_preds > self.config.pred_iou_thresh
        return torch.ones_like(iou_preds, dtype=torch.bool)

    def _upsample(self, low_res: torch.Tensor) -> torch.Tensor:
        """(N, h, w) low-res logits -> (N, H, W) logits at the image size: `Sam.postprocess_masks`,
        without its second resize when the image is already at SAM's input size (bilinear resizing
        to the same size returns its input exactly, so skipping it changes nothing but the time)."""
        predictor = self.predictor
        side = predictor.model.image_encoder.img_size
        masks = F.interpolate(low_res[:, None], (side, side), mode="bilinear", align_corners=False)
        masks = masks[..., : predictor.input_size[0], : predictor.input_size[1]]
        if tuple(predictor.input_size) != tuple(predictor.original_size):
            masks = F.interpolate(masks, predictor.original_size, mode="bilinear", align_corners=False)
        return masks[:, 0]

    def _run_batch(
        self, points: np.ndarray, candidates: _Candidates, covered: torch.Tensor, follow: bool
    ) -> list[tuple[float, float]]:
        """Decode one batch, add its surviving masks to `candidates` and `covered`; with `follow`,
        return the points to prompt next (one per rejected prompt that saw something)."""
        config = self.config
        model = self.predictor.model
        decoded = self._decode(points, follow)
        iou_preds = decoded.iou_preds[decoded.upscaled]
        # The stock filters, in the stock order: predicted IoU, stability, then threshold.
        keep = self._passes(iou_preds)
        low_res, scores = decoded.low_res[keep], iou_preds[keep]
        logits = self._upsample(low_res)
        masks = logits > model.mask_threshold
        if config.stability_score_thresh > 0.0:
            stability = calculate_stability_score(logits, model.mask_threshold, STABILITY_SCORE_OFFSET)
            stable = stability >= config.stability_score_thresh
            low_res, scores, masks = low_res[stable], scores[stable], masks[stable]
        del logits
        if len(masks):
            candidates.add(low_res, scores, mask_boxes(masks), masks)
            covered |= any_of(masks, 0)
        if not follow:
            return []
        kept_prompt = torch.zeros(len(iou_preds), dtype=torch.bool, device=iou_preds.device)
        if len(masks):
            prompt_of = torch.arange(len(iou_preds), device=iou_preds.device)[:, None].expand_as(keep)[keep]
            if config.stability_score_thresh > 0.0:
                prompt_of = prompt_of[stable]
            kept_prompt[prompt_of] = True
        follow_up = ~kept_prompt & (iou_preds.max(1).values >= config.refine_iou_thresh)
        if not follow_up.any():
            return []
        best = iou_preds[follow_up].argmax(1)
        lows = decoded.low_res[follow_up]
        seen = self._upsample(lows[torch.arange(len(lows), device=lows.device), best]) > model.mask_threshold
        return [centre for centre in uncovered_centres(seen, covered, config.refine_max_area) if centre is not None]

    def _keep(self, candidates: _Candidates, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Box NMS as the stock generator runs it, then the kept masks at full size."""
        if not candidates.boxes:
            return np.zeros((0, *size), dtype=bool), np.zeros(0, np.float32)
        boxes = torch.cat(candidates.boxes)
        scores = torch.cat(candidates.iou_preds)
        keep = batched_nms(
            boxes.float(), scores, torch.zeros(len(boxes), device=boxes.device), iou_threshold=self.config.box_nms_thresh
        )
        if candidates.masks is not None:
            return torch.cat(candidates.masks)[keep].cpu().numpy(), scores[keep].float().cpu().numpy()
        low_res = torch.cat(candidates.low_res)[keep]
        chunk = self.config.points_per_batch  # bounds the full-size float logits held at once
        masks = [
            (self._upsample(low_res[start : start + chunk]) > self.predictor.model.mask_threshold).cpu().numpy()
            for start in range(0, len(low_res), chunk)
        ]
        return np.concatenate(masks), scores[keep].float().cpu().numpy()


def point_embeddings(prompt_encoder: PromptEncoder, coords: torch.Tensor) -> torch.Tensor:
    """(B, 2) positive points in SAM's input frame -> (B, 2, C): the sparse embedding
    `PromptEncoder.forward(points=(coords[:, None], ones), boxes=None)` returns (each point, then the
    padding point), computed directly: the same values without its per-label masked updates."""
    # Encoded with the padding point, as the stock does: the positional product's kernel depends on
    # the shape, so encoding the points alone would round differently.
    points = torch.cat([coords[:, None, :] + 0.5, coords.new_zeros((len(coords), 1, 2))], dim=1)
    embedded = prompt_encoder.pe_layer.forward_with_coords(points, prompt_encoder.input_image_size)
    embedded[:, 0] += prompt_encoder.point_embeddings[1].weight
    embedded[:, 1] = prompt_encoder.not_a_point_embed.weight
    return embedded


def uncovered_centres(masks: torch.Tensor, covered: torch.Tensor, max_area: float) -> list[tuple[float, float] | None]:
    """For each of (N, H, W) bool masks: (x, y) of the pixel nearest the centroid of the part of the
    mask that `covered` leaves free (a pixel of that part, so the prompt lands on it; of equally near
    ones the first in row-major order), or None when nothing is free or the mask covers more than
    `max_area` of the image (SAM's whole-image output is not one object)."""
    count, height, width = masks.shape
    centres: list[tuple[float, float] | None] = [None] * count
    if not count:
        return centres
    free = masks & ~covered
    # Counted as bytes (vectorised; bool reductions run element by element).
    pixels = free.view(torch.uint8).flatten(1).sum(1, dtype=torch.int32)
    area = masks.view(torch.uint8).flatten(1).sum(1, dtype=torch.int32).to(torch.float32) / (height * width)
    for index in torch.nonzero((pixels > 0) & ~(area > max_area)).flatten().tolist():
        ys, xs = torch.nonzero(free[index], as_tuple=True)
        ys_f, xs_f = ys.float(), xs.float()
        nearest = int(torch.argmin((ys_f - ys_f.mean()) ** 2 + (xs_f - xs_f.mean()) ** 2))
        centres[index] = (float(xs[nearest]) + 0.5, float(ys[nearest]) + 0.5)
    return centres


def fresh_points(
    points: list, prompted: list[np.ndarray], covered: torch.Tensor, min_distance: float
) -> np.ndarray:
    """The (x, y) points that no kept mask covers and that lie at least `min_distance` pixels from
    every point already prompted and every point chosen before them."""
    covered_np = covered.cpu().numpy()
    height, width = covered_np.shape
    taken = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in prompted]
    chosen: list[tuple[float, float]] = []
    for x, y in points:
        if covered_np[min(height - 1, int(y)), min(width - 1, int(x))]:
            continue
        others = np.concatenate([*taken, np.asarray(chosen, dtype=np.float64).reshape(-1, 2)])
        if len(others) and float(((others - (x, y)) ** 2).sum(1).min()) < min_distance**2:
            continue
        chosen.append((float(x), float(y)))
    return np.asarray(chosen, dtype=np.float64).reshape(-1, 2)


def any_of(masks: torch.Tensor, dim: int) -> torch.Tensor:
    """`masks.any(dim)` for bool masks, read as bytes: torch reduces uint8 with vector
    instructions and bool element by element (about 10x apart on a (30, 256, 256) batch)."""
    return masks.view(torch.uint8).amax(dim).bool()


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """`segment_anything.utils.amg.batched_mask_to_box` of (N, H, W) bool masks: XYXY boxes of the
    first and last rows and columns that hold a pixel, zeros for an empty mask (the same int64
    values, computed from `any_of`)."""
    height, width = masks.shape[-2:]
    rows, columns = any_of(masks, -1), any_of(masks, -2)
    row_index = torch.arange(height, device=masks.device)[None]
    column_index = torch.arange(width, device=masks.device)[None]
    bottom = (rows * row_index).amax(-1)
    top = (rows * row_index + height * ~rows).amin(-1)
    right = (columns * column_index).amax(-1)
    left = (columns * column_index + width * ~columns).amin(-1)
    empty = (right < left) | (bottom < top)
    return torch.stack([left, top, right, bottom], dim=-1) * ~empty[:, None]
