"""LLM-Seg training entry point (plain CLI and `ros2 run llmseg_ros train`).

Runs under accelerate, so the same command scales from this CPU to several GPUs
(`accelerate launch`, DeepSpeed ZeRO-2 through config/accelerate_deepspeed_zero2.yaml) or to
several CPU processes (`torchrun --nproc_per_node N`: gloo). SAM never runs in the training loop:
proposals come from the on-disk cache, filled beforehand (or on first use) by the precompute step.

What a distributed run keeps equal to a single-process one:
- the learning rate per optimizer step: transformers' warm-up schedules, sized for
  steps x processes, because accelerate advances a prepared scheduler once per process at each
  optimizer step (and not during accumulation);
- the data: each epoch is a seeded mixture draw (MixedDataset) that accelerate's sampler splits
  across processes, so every process trains on other images; a resumed run restarts at the
  checkpoint's epoch and skips the micro-batches that epoch already used;
- one output folder written by the main process (metrics.jsonl, train_config.json, weights,
  best/); checkpoints are collective (every process adds its RNG state, DeepSpeed its shards);
- logs from the main process only (accelerate's logger, tqdm on the main process); at the end
  every process hashes its trained weights and a difference is an error.

torch, accelerate and the model are imported when training starts, so that `--help` and the
checks of the settings (llmseg_model.cli) answer at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from llmseg_model.cli import Command, check_data_paths, require_existing
from llmseg_model.data.mixing import build_dataset, build_mixture
from llmseg_model.data.sample import SegSample
from llmseg_model.train_config import TrainConfig

if TYPE_CHECKING:
    import torch

STATE_FILE = "trainer_state.json"  # in each checkpoint: where the run stood
BEST_FILE = "best.json"


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, ticks_per_step: int):
    """The configured warm-up schedule (transformers' implementation), counted in scheduler ticks:
    `ticks_per_step` of them per optimizer step."""
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_with_min_lr_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    warmup, total = config.warmup_steps * ticks_per_step, config.steps * ticks_per_step
    if config.lr_schedule == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, total)
    if config.lr_schedule == "cosine":
        return get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, total, min_lr_rate=config.min_lr_ratio)
    return get_constant_schedule_with_warmup(optimizer, warmup)


def fill_deepspeed_config(plugin, config: TrainConfig, accumulation: int) -> None:
    """Fill the DeepSpeed config's "auto" accumulation and clipping from the training config, so
    DeepSpeed accumulates and clips as this run's config says (accelerate would fill clipping
    with a fixed 1.0)."""
    plugin.fill_match("gradient_accumulation_steps", must_match=False, gradient_accumulation_steps=accumulation)
    plugin.fill_match("gradient_clipping", must_match=False, gradient_clipping=config.max_grad_norm)
    for key, expected in (("gradient_accumulation_steps", accumulation), ("gradient_clipping", config.max_grad_norm)):
        value = plugin.deepspeed_config.get(key)
        if value is not None and value != expected:
            raise ValueError(
                f"the DeepSpeed config sets {key}={value} but the training config asks for {expected}; "
                'write "auto" there (config/deepspeed_zero2.json does)'
            )


def checkpoints(output_dir: Path) -> list[Path]:
    return sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the trainable parameters (names and values): equal on every process of a run."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def validation_samples(config: TrainConfig) -> list[SegSample]:
    """The validation data sets' samples (readers with one target per sample)."""
    samples: list[SegSample] = []
    for spec in config.val_datasets:
        dataset = build_dataset(spec)
        if len(dataset) and not isinstance(dataset[0], SegSample):
            raise ValueError(f"validation data set {spec.name} is indexed by image; validate on reasonseg, llmseg40k or procedural")
        samples += [dataset[i] for i in range(len(dataset))]
    return samples


def train(config: TrainConfig) -> Path:
    """Run training; returns the folder of the trained weights to use (`weights.llmseg_weights`):
    the best validated one when validation is configured, else the final one."""
    import torch
    from accelerate import Accelerator, PartialState
    from accelerate.logging import get_logger
    from accelerate.utils import gather_object, set_seed
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from llmseg_model.data.proposal_cache import ProposalCache
    from llmseg_model.data.training import TrainingSet, collate
    from llmseg_model.modeling.model import LLMSeg
    from llmseg_model.metrics import IoUAccumulator
    from llmseg_model.validation import validate

    precision = config.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "no"
    # cpu=True on a machine without CUDA, so that torchrun's processes join one gloo group
    # instead of running as independent trainings.
    cpu = not torch.cuda.is_available()
    accumulation = config.accumulation(PartialState(cpu=cpu).num_processes)
    accelerator = Accelerator(gradient_accumulation_steps=accumulation, mixed_precision=precision, cpu=cpu)
    logger = get_logger("llmseg_model.train")  # main-process lines; needs the accelerator's state
    if accelerator.state.deepspeed_plugin is not None:
        fill_deepspeed_config(accelerator.state.deepspeed_plugin, config, accumulation)
    set_seed(config.seed)
    if not accelerator.is_main_process:  # the readers' and the model's info lines: once, from the main process
        logging.getLogger("llmseg_model").setLevel(logging.WARNING)
    if config.cpu_threads > 0:
        torch.set_num_threads(config.cpu_threads)
    output_dir = Path(config.output_dir)
    main = accelerator.is_main_process
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    accelerator.wait_for_everyone()
    model_config = config.model_config()

    model = LLMSeg.from_config(model_config, device=str(accelerator.device), load_trained=False)
    if config.init_from:
        model.load_trained(config.init_from)
    cache = ProposalCache(config.cache_dir, model_config.sam, model_config.proposals, generator=model.proposal_generator)

    mixed = build_mixture(config.datasets, length=config.samples_per_epoch or None, seed=config.seed, by_image=True)
    val_samples = validation_samples(config)
    base = model  # the unwrapped model (accelerate may wrap `model` below)

    def preprocess(image):  # CPU only: DataLoader (and prefill) workers call it
        return base.features.preprocess(image)[0], base.vlm.pixel_values(image)[0]

    def frozen(dino_pixels, llava_pixels):
        dino, vision = base.frozen_features(dino_pixels, llava_pixels)
        return dino.cpu(), vision.cpu()

    memo = config.memo_images > 0  # TrainConfig refuses a memo with DataLoader workers
    dataset = TrainingSet(
        mixed,
        proposals_for=cache.get,
        top_k=model_config.proposals.top_k,
        preprocess=preprocess,
        frozen=frozen if memo else None,
        memo_items=config.memo_images,
        seed=config.seed,
        queries=config.queries_per_image,
        target_max_side=config.target_max_side,
    )
    if memo and config.prefill_workers:
        dataset.prefill(config.prefill_workers, progress=accelerator.is_local_main_process)
    # In order: the mixture is already a seeded shuffle per epoch; accelerate hands each process
    # its own share of every global batch.
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=False,
        collate_fn=collate,
        num_workers=config.num_workers,
        drop_last=len(dataset) >= config.batch_size * accelerator.num_processes,
        # its own generator: starting an epoch (or a resumed one) then leaves the global RNG, and
        # so dropout after a resume, exactly where the uninterrupted run had it
        generator=torch.Generator().manual_seed(config.seed),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    logger.info("training %d tensors, %.2fM parameters", len(params), sum(p.numel() for p in params) / 1e6)
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)
    scheduler = build_scheduler(optimizer, config, ticks_per_step=accelerator.num_processes)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    steps_per_epoch = math.ceil(len(loader) / accumulation)
    logger.info(
        "%d process(es) x %d image(s) x %d accumulation = %d images (up to %d questions) a step; %d steps an epoch",
        accelerator.num_processes, config.batch_size, accumulation,
        config.batch_size * accumulation * accelerator.num_processes,
        config.batch_size * accumulation * accelerator.num_processes * config.queries_per_image, steps_per_epoch,
    )

    step, best = 0, {"giou": -1.0}
    existing = checkpoints(output_dir)
    if config.resume and existing:
        accelerator.load_state(str(existing[-1]))
        state_path = existing[-1] / STATE_FILE
        if state_path.is_file():
            state = json.loads(state_path.read_text())
        else:  # a checkpoint from before trainer_state.json: its step is in its name
            logger.warning("%s has no %s: assuming this run's epoch length and no validation so far", existing[-1], STATE_FILE)
            state = {"step": int(existing[-1].name.split("-")[1]), "steps_per_epoch": steps_per_epoch, "best": best}
        step, best = state["step"], state["best"]
        if state["steps_per_epoch"] != steps_per_epoch:
            raise ValueError(
                f"{existing[-1]} was made with {state['steps_per_epoch']} steps an epoch, this run has {steps_per_epoch}: "
                "the data, batch size, accumulation or process count changed; use another output_dir"
            )
        logger.info("resumed from %s at step %d (epoch %d)", existing[-1], step, step // steps_per_epoch)

    def run_validation() -> dict:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.eval()
        mine = validate(unwrapped, val_samples, config.val_scoring, accelerator.process_index,
                        accelerator.num_processes, progress=accelerator.is_local_main_process, proposals=cache)
        unwrapped.train()
        counts = IoUAccumulator()
        for part in gather_object([mine]):
            counts.merge(part)
        return {"val_giou": counts.giou, "val_ciou": counts.ciou, "val_samples": counts.count}

    log_path = output_dir / "metrics.jsonl"
    model.train()
    progress = tqdm(total=config.steps, initial=step, desc="train", disable=not accelerator.is_local_main_process)
    started = time.perf_counter()
    running: dict[str, float] = {}
    seen: list[str] = []
    epoch, done_in_epoch = divmod(step, steps_per_epoch)
    lr = scheduler.get_last_lr()[0]
    while step < config.steps:
        # accelerate's loaders pass their epoch on to the data set (TrainingSet.set_epoch: a new
        # mixture draw) when iterated; the loader that skips a resumed epoch's start is a new one.
        batches = accelerator.skip_first_batches(loader, done_in_epoch * accumulation) if done_in_epoch else loader
        batches.set_epoch(epoch)
        done_in_epoch = 0
        for batch in batches:
            with accelerator.accumulate(model):
                if accelerator.sync_gradients:
                    lr = scheduler.get_last_lr()[0]  # the rate this optimizer step uses
                losses = model(batch)
                accelerator.backward(losses.total)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if config.log_samples:
                seen += [f"{image}|{text}" for image, text in zip(batch["image_ids"], batch["instructions"])]
            for key, value in losses.as_floats().items():
                running[key] = running.get(key, 0.0) + value / accumulation
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress.update(1)
            record: dict = {}
            if step % config.log_every == 0 or step == config.steps:
                count = config.log_every if step % config.log_every == 0 else step % config.log_every
                keys = sorted(running)
                means = accelerator.reduce(torch.tensor([running[k] / count for k in keys], device=accelerator.device), "mean")
                record = dict(zip(keys, means.tolist()))
                record.update(step=step, epoch=epoch, lr=lr, elapsed_s=time.perf_counter() - started)
                if config.log_samples:
                    record["samples"] = gather_object([seen])
                running, seen = {}, []
                progress.set_postfix(loss=f"{record['total']:.3f}")
            epoch_end = step % steps_per_epoch == 0
            due = (step % config.eval_every == 0) if config.eval_every else epoch_end
            if val_samples and (due or step == config.steps):
                scores = run_validation()
                record.update(scores, step=step, epoch=epoch)
                if scores["val_giou"] > best["giou"]:
                    best = {"giou": scores["val_giou"], "ciou": scores["val_ciou"], "step": step, "epoch": epoch}
                    if main:
                        accelerator.unwrap_model(model).save_trained(output_dir / "best")
                        (output_dir / BEST_FILE).write_text(json.dumps(best, indent=2))
                    logger.info("step %d: val gIoU %.4f cIoU %.4f (best so far)", step, scores["val_giou"], scores["val_ciou"])
            if record and main:
                with log_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            if step % config.save_every == 0 and step < config.steps:
                save_checkpoint(accelerator, output_dir, step, config.keep_checkpoints,
                                {"step": step, "steps_per_epoch": steps_per_epoch, "best": best})
            if step >= config.steps:
                break
        epoch += 1
    progress.close()

    digests = gather_object([weights_digest(accelerator.unwrap_model(model))])
    if len(set(digests)) != 1:
        raise RuntimeError(f"processes ended with different weights: {digests}")
    final = output_dir / "llmseg"
    if main:
        trained = accelerator.unwrap_model(model)
        trained.save_trained(final)
        summary = {"steps": step, "epochs": epoch, "processes": accelerator.num_processes, "weights_sha256": digests,
                   "best": best if val_samples else None}
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        logger.info("saved trained weights to %s", final)
        if config.export_merged:
            trained.export_merged(output_dir / "merged")
            logger.info("exported the LoRA-merged model to %s", output_dir / "merged")
    accelerator.wait_for_everyone()
    return output_dir / "best" if val_samples else final


def save_checkpoint(accelerator, output_dir: Path, step: int, keep: int, state: dict) -> None:
    """Full resumable state (model, optimizer, scheduler, RNG) and where the run stood; only the
    newest `keep` checkpoints are kept."""
    folder = output_dir / f"checkpoint-{step}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        (folder / STATE_FILE).write_text(json.dumps(state))
        for old in checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def check_paths(config: TrainConfig) -> None:
    """What must exist before a training run loads anything: the base weights (not the trained
    LLM-Seg weights, which training makes), init_from and the data sets."""
    config.model_config().weights.check_exist(trained=False, prefix="model.weights.")
    if config.init_from:
        require_existing("init_from", config.init_from, "trained llmseg_weights folder")
    check_data_paths(config.datasets, "datasets")
    check_data_paths(config.val_datasets, "val_datasets")
    if Path(config.output_dir).exists() and not Path(config.output_dir).is_dir():
        raise NotADirectoryError(f"output_dir {config.output_dir!r} is a file")


def has_training_state(output_dir: Path) -> bool:
    """Whether a run's output folder holds checkpoints or trained weights (kept after a failure)."""
    return any(output_dir.glob("checkpoint-*")) or (output_dir / "llmseg").is_dir() or (output_dir / "best").is_dir()


def run(config: TrainConfig) -> Path:
    """The command's work: train, then say where the weights are."""
    final = train(config)
    logging.getLogger("llmseg_model.train").info("trained weights in %s (for weights.llmseg_weights)", final)
    return final


COMMAND = Command(
    name="llmseg-train",
    module="llmseg_model.train",
    config=TrainConfig,
    run=run,
    description="Train LLM-Seg (LoRA, <SEG> projection, fusion and heads) on cached SAM proposals.",
    model_field="model",
    require_config="no training config: give --config FILE (config/train_tiny.yaml trains the tiny preset); "
    "options after it override its settings",
    check=check_paths,
    outputs=lambda config: [config.output_dir],
    keep=has_training_state,
    uses_transformers=True,
)


main = COMMAND.main


if __name__ == "__main__":
    main()
