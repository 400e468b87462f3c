"""LLMSeg: the whole method behind two calls.

    model = LLMSeg.from_config(preset_config("tiny"))
    frame = model.prepare(image)            # SAM + DINOv2 + vision tower, once per frame
    result = model.query(frame, "the thing I could roll")   # LLM + fusion + selection

`prepare` / `query` split is what lets a robot ask several questions about one frame for the cost
of one proposal pass.
"""

from __future__ import annotations

import gc
import logging
import time
from concurrent.futures import wait
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llmseg_model.config import LLMSegConfig, preset_config
from llmseg_model.modeling.background import BackgroundWorker
from llmseg_model.modeling.features import MaskFeatureExtractor, load_dinov2
from llmseg_model.modeling.fusion import build_fusion
from llmseg_model.modeling.instances import merge_instances
from llmseg_model.modeling.losses import LossOutput, llmseg_loss
from llmseg_model.modeling.outputs import FrameFeatures, Result
from llmseg_model.modeling.proposals import ProposalGenerator, Proposals, build_sam, check_image
from llmseg_model.modeling.rle import label_image
from llmseg_model.modeling.selection import select_proposals
from llmseg_model.modeling.vlm import PromptPrefix, SegVLM

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "llmseg.safetensors"
CONFIG_FILE = "llmseg_config.json"
VLM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Record the wall time of a block under `stage` (synchronising CUDA so GPU time counts)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    yield
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def vlm_dtype(name: str, use_cuda: bool, setting: str = "vlm.dtype") -> torch.dtype:
    """The weight dtype a dtype setting names ("auto": bfloat16 on CUDA only)."""
    if name == "auto":
        return torch.bfloat16 if use_cuda else torch.float32
    if name not in VLM_DTYPES:
        raise ValueError(f"{setting} must be 'auto' or one of {sorted(VLM_DTYPES)}, got {name!r}")
    return VLM_DTYPES[name]


class LLMSeg(nn.Module):
    """SAM proposals + DINOv2 mask embeddings + LLaVA <SEG> + fusion heads + selection."""

    def __init__(
        self,
        config: LLMSegConfig,
        proposal_generator: ProposalGenerator,
        features: MaskFeatureExtractor,
        vlm: SegVLM,
    ) -> None:
        super().__init__()
        config.validate()  # the parts and what they must agree on (e.g. the mask layouts)
        self.config = config
        self.proposal_generator = proposal_generator
        self.sam = proposal_generator.sam  # registered so .to(device) moves it
        self.sam.requires_grad_(False)
        self.features = features
        self.vlm = vlm
        self.fusion = build_fusion(config.fusion, config.features.embed_dim, config.vlm.seg_embed_dim)
        self._worker = BackgroundWorker("llmseg-frame")  # prepare's image branch (see `prepare`)

    # ---------------------------------------------------------------- building and weights
    @classmethod
    def from_config(
        cls, config: LLMSegConfig, device: str = "cpu", load_trained: bool = True
    ) -> "LLMSeg":
        """Build every part from local weights (never downloads). With load_trained=False the
        LLM-Seg parts (LoRA, heads, projections) start untrained, as for a new training run."""
        weights = config.weights
        sam_path = weights.require("sam_checkpoint")
        dinov2_path = weights.require("dinov2_path")
        llava_path = weights.require("llava_path")
        trained_path = weights.require("llmseg_weights") if load_trained else None
        use_cuda = device.startswith("cuda")
        sam = build_sam(config.sam, sam_path)
        dinov2 = load_dinov2(str(dinov2_path), config.features, vlm_dtype(config.features.dtype, use_cuda, "features.dtype"))
        vlm = SegVLM.from_pretrained(llava_path, config.vlm, dtype=vlm_dtype(config.vlm.dtype, use_cuda))
        model = cls(config, ProposalGenerator(sam, config.proposals), MaskFeatureExtractor(dinov2, config.features), vlm)
        if trained_path is not None:
            model.load_trained(trained_path)
        model.to(device)
        model.eval()
        logger.info("LLMSeg (%s preset) ready on %s", config.preset, device)
        return model

    @classmethod
    def from_preset(cls, preset: str = "tiny", device: str = "cpu", **weights: str) -> "LLMSeg":
        """The named preset; keyword arguments override its weight paths."""
        config = preset_config(preset)
        for key, value in weights.items():
            if not hasattr(config.weights, key):
                raise ValueError(f"unknown weight setting {key!r}")
            setattr(config.weights, key, value)
        return cls.from_config(config, device=device)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what LLM-Seg trains (LoRA, trainable LLM modules, projections, fusion heads)."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        for module_name, module in self.named_modules():  # running stats of trained norm layers
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                names.update(f"{module_name}.{b}" for b, _ in module.named_buffers(recurse=False))
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if k in names}

    def save_trained(self, folder: str | Path) -> None:
        """Write the trained parts and the config used, as a folder for `weights.llmseg_weights`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.trainable_state_dict(), str(folder / WEIGHTS_FILE))
        self.config.save(folder / CONFIG_FILE)

    def load_trained(self, folder: str | Path) -> None:
        """Load what `save_trained` wrote; any missing or unexpected tensor is an error."""
        path = Path(folder) / WEIGHTS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"weights.llmseg_weights: {path} not found")
        state = load_file(str(path))
        expected = {n for n, p in self.named_parameters() if p.requires_grad}
        missing, unexpected = expected - set(state), set(state) - set(self.state_dict())
        if missing or unexpected:
            raise ValueError(
                f"{path} does not fit this model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        self.load_state_dict(state, strict=False)

    def export_merged(self, folder: str | Path) -> LLMSegConfig:
        """Merge LoRA into the LLaVA weights and write a self-contained model folder.

        folder/llava is a plain llava-hf folder (merged weights, tokenizer, image processor);
        folder/llmseg holds the other trained parts, with the LoRA deltas zeroed since they now live
        in llava/. Returns the config that loads it (also written to folder/llmseg_config.json):
        `LLMSeg.from_config(LLMSegConfig.load(folder / "llmseg_config.json"))`.
        """
        import copy

        folder = Path(folder)
        merged = copy.deepcopy(self.vlm.llava).merge_and_unload()
        merged.save_pretrained(str(folder / "llava"))
        self.vlm.tokenizer.save_pretrained(str(folder / "llava"))
        self.vlm.image_processor.save_pretrained(str(folder / "llava"))
        state = self.trainable_state_dict()
        for key in state:
            if ".lora_B." in key:
                state[key] = torch.zeros_like(state[key])
        (folder / "llmseg").mkdir(parents=True, exist_ok=True)
        save_file(state, str(folder / "llmseg" / WEIGHTS_FILE))
        config = copy.deepcopy(self.config)
        config.weights.llava_path = str((folder / "llava").resolve())
        config.weights.llmseg_weights = str((folder / "llmseg").resolve())
        config.save(folder / "llmseg" / CONFIG_FILE)
        config.save(folder / CONFIG_FILE)
        return config

    def release(self) -> None:
        """Free the model's memory (GPU included) and its background thread before the object is
        dropped."""
        self._worker.shutdown()
        self.to("cpu")
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @property
    def device(self) -> torch.device:
        return next(self.fusion.parameters()).device

    # ---------------------------------------------------------------- inference
    @torch.inference_mode()
    def prepare(
        self,
        image: np.ndarray,
        cache_prompt: bool = True,
        proposals: Proposals | None = None,
        overlap: bool | None = None,
    ) -> FrameFeatures:
        """Everything that depends on the image only: proposals, mask embeddings, image tokens,
        and (with `cache_prompt`) the KV cache of the prompt up to the question. `proposals`
        (e.g. from the proposal cache) stand in for running SAM.

        `overlap` computes the image branch (DINOv2 patches, LLaVA image tokens, prompt prefix) on
        the model's background thread while SAM proposes on this one; the values are the same
        either way. None: overlap on the CPU, where the two branches then use two cores (on a
        GPU both would queue on one stream). With overlap the stage timings overlap too, so
        their sum exceeds the frame's wall time."""
        check_image(image)
        timings: dict[str, float] = {}
        if proposals is not None:
            if proposals.image_size != image.shape[:2]:
                raise ValueError(f"proposals are for a {proposals.image_size} image, this one is {image.shape[:2]}")
        if overlap is None:
            overlap = self.device.type == "cpu"
        # Beside SAM only when SAM runs: given proposals leave this thread nothing to do meanwhile.
        branch = self._worker.submit(self._image_branch, image, cache_prompt) if overlap and proposals is None else None
        try:
            if proposals is None:
                with timed(timings, "proposals"):
                    proposals = self.proposal_generator(image)
        finally:
            if branch is not None:
                wait([branch])  # never leave the branch running behind a failed proposal pass
        patches, image_features, prefix, branch_timings = (
            branch.result() if branch is not None else self._image_branch(image, cache_prompt)
        )
        timings.update(branch_timings)
        with timed(timings, "features"):  # added to the branch's DINOv2 time: pooling, proposal tokens
            lowres, _ = proposals.padded_lowres(max(proposals.count, 1))
            embeddings = self.features.pool(patches, lowres.unsqueeze(0).to(self.device))[0][: proposals.count]
            tokens = self.proposal_tokens(embeddings) if proposals.count else None
        return FrameFeatures(
            image_size=image.shape[:2],
            proposals=proposals,
            mask_embeddings=embeddings,
            image_features=image_features,
            timings=timings,
            prefix=prefix,
            proposal_tokens=tokens,
        )

    def proposal_tokens(self, mask_embeddings: torch.Tensor) -> torch.Tensor:
        """The fusion's proposal tokens before they meet <SEG> (1, K, dim), from a frame's mask
        embeddings (K, D): computed once a frame, shared by its instructions."""
        valid = torch.ones((1, mask_embeddings.shape[0]), dtype=torch.bool, device=mask_embeddings.device)
        return self.fusion.encode_proposals(mask_embeddings.unsqueeze(0), valid)

    @torch.inference_mode()  # on the worker thread too: grad mode is per thread
    def _image_branch(
        self, image: np.ndarray, cache_prompt: bool
    ) -> tuple[torch.Tensor, torch.Tensor, PromptPrefix | None, dict[str, float]]:
        """The part of `prepare` that needs no proposals: DINOv2 patch features, LLaVA image
        tokens and the prompt prefix, with their timings.

        The LLaVA half goes first: beside SAM it contends most for the interpreter lock (many small
        operations), and SAM's image encoder, which it then meets, holds the lock least. DINOv2's
        larger products meet SAM's decoding. The values do not depend on the order."""
        timings: dict[str, float] = {}
        with timed(timings, "vision"):
            image_features = self.vlm.image_features(self.vlm.pixel_values(image).to(self.device))
        prefix = None
        if cache_prompt:
            with timed(timings, "prompt_prefix"):
                prefix = self.vlm.encode_prefix(image_features)
        with timed(timings, "features"):
            patches = self.features.patch_features(self.features.preprocess(image))
        return patches, image_features, prefix, timings

    def check_instruction(self, text: str) -> str:
        """The instruction as the model will read it (whitespace normalised); ValueError saying why
        it cannot be used (empty, too long, a special token of the prompt in it)."""
        return self.vlm.prompts.clean(text)

    @torch.inference_mode()
    def query(self, frame: FrameFeatures, instruction: str, phrase: bool = False) -> Result:
        """Answer one instruction on a prepared frame; `phrase` marks a short phrase ("the red
        cup") rather than a sentence, which the published model asks about differently."""
        return self.query_batch(frame, [instruction], [phrase])[0]

    @torch.inference_mode()
    def query_batch(self, frame: FrameFeatures, instructions: list[str], phrases: list[bool] | None = None) -> list[Result]:
        """Answer several instructions on one prepared frame: one padded LLM forward on the
        frame's cached prompt, one fusion call on the frame's proposal tokens (the part of the
        fusion that does not see <SEG>, run by `prepare`). Each result's timings hold the frame's
        stages and its share (1/N) of the batch's llm and fusion time."""
        if not instructions:
            return []
        for k, text in enumerate(instructions):
            try:
                self.check_instruction(text)
            except ValueError as error:
                raise InstructionError(k, str(error)) from None
        phrases = phrases if phrases is not None else [False] * len(instructions)
        if len(phrases) != len(instructions):
            raise ValueError(f"{len(phrases)} phrase flags for {len(instructions)} instructions")
        shared: dict[str, float] = {}
        with timed(shared, "llm"):
            answers = self.vlm.answer_batch(frame.image_features, instructions, phrases, frame.prefix)
        count, batch = frame.proposals.count, len(instructions)
        with timed(shared, "fusion"):
            if count:
                seg = torch.cat([embedding for _, embedding in answers])
                valid = torch.ones((batch, count), dtype=torch.bool, device=self.device)
                embeddings = frame.mask_embeddings.unsqueeze(0).expand(batch, -1, -1)
                tokens = frame.proposal_tokens  # None (a frame built without them): the fusion runs whole
                out = self.fusion(embeddings, seg, valid, encoded=None if tokens is None else tokens.expand(batch, -1, -1))
                iou_rows = out.iou_logits.float().cpu().numpy()
                iop_rows = out.iop.float().cpu().numpy()
            else:
                iou_rows = iop_rows = np.zeros((batch, 0), np.float32)
        results = []
        for (answer, _), iou, iop in zip(answers, iou_rows, iop_rows):
            timings = dict(frame.timings)
            timings.update({stage: seconds / batch for stage, seconds in shared.items()})
            with timed(timings, "selection"):
                chosen = select_proposals(iou, iop, self.config.selection)
                instances = merge_instances(frame.proposals, chosen.indices, chosen.scores, self.config.instances)
                labels, label_areas = label_image([instance.rle for instance in instances], frame.image_size)
            results.append(
                Result(
                    labels=labels,
                    label_areas=label_areas,
                    instances=instances,
                    proposal_indices=chosen.indices,
                    proposal_scores=chosen.scores,
                    iou_scores=iou,
                    iop_scores=iop,
                    answer=answer,
                    timings=timings,
                )
            )
        return results

    def segment(self, image: np.ndarray, instruction: str, phrase: bool = False) -> Result:
        """prepare + query for a single question."""
        return self.query(self.prepare(image), instruction, phrase)

    # ---------------------------------------------------------------- training
    @torch.no_grad()
    def frozen_features(self, dino_pixels: torch.Tensor, llava_pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs of the frozen backbones (DINOv2 patch map, LLaVA vision states) for a batch;
        training may cache them per image since they never change."""
        device = self.device
        return self.features.patch_features(dino_pixels.to(device)), self.vlm.vision_states(llava_pixels.to(device))

    def forward(self, batch: dict) -> LossOutput:
        """Training step on a batch from `llmseg_model.data.training.TrainingSet` (cached proposals).

        batch: lowres (B,K,R,R), valid (B,K), gt_iou (B,K), gt_iop (B,K), instructions list[str],
        optionally phrases list[bool] (which instructions are phrases), seeds list[int] (each row's
        template draw), image_index (B,) (rows sharing an image), and
        either dino_pixels (B,3,S,S) + llava_pixels (B,3,s,s) or their cached frozen features
        dino_features (B,C,G,G) + vision_states (B,N,C).
        """
        device = self.device
        if "dino_features" in batch:
            patches, states = batch["dino_features"].to(device), batch["vision_states"].to(device)
        else:  # the frozen backbones run once per image, however many questions it has
            first, rows = one_row_per_image(batch.get("image_index"), len(batch["instructions"]))
            patches, states = self.frozen_features(batch["dino_pixels"][first], batch["llava_pixels"][first])
            patches, states = patches[rows.to(device)], states[rows.to(device)]
        embeddings = self.features.pool(patches, batch["lowres"].to(device))
        image_features = self.vlm.image_features(vision_states=states)
        ce, seg = self.vlm(image_features, batch["instructions"], batch.get("phrases"), batch.get("seeds"))
        valid = batch["valid"].to(device)
        out = self.fusion(embeddings, seg, valid)
        return llmseg_loss(
            ce, out.iou_logits, out.iop, batch["gt_iou"].to(device), batch["gt_iop"].to(device), valid, self.config.loss
        )


class InstructionError(ValueError):
    """One instruction of a batch cannot be used; `index` says which, `reason` why."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"instruction {index}: {reason}")
        self.index, self.reason = index, reason


def one_row_per_image(image_index: torch.Tensor | None, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first row of each image, each row's image among those): rows of one image repeat its
    tensors, so per-image work runs on `first` and is spread back with `rows`."""
    if image_index is None:
        every = torch.arange(rows)
        return every, every
    images, inverse = torch.unique(image_index.cpu(), return_inverse=True)
    first = torch.full((len(images),), rows, dtype=torch.long).scatter_reduce(0, inverse, torch.arange(rows), reduce="amin")
    return first, inverse
