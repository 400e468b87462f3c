"""LLM-Seg training entry point (plain CLI and `ros2 run llmseg_ros train`).

Runs under accelerate, so the same command scales from this CPU to `accelerate launch` on several
GPUs (DeepSpeed ZeRO-2 optional through an accelerate config). SAM never runs in the loop:
proposals come from the on-disk cache, filled beforehand (or on first use) by the precompute step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from llmseg_model.data.mixing import build_mixture
from llmseg_model.train_config import TrainConfig

logger = logging.getLogger("llmseg_model.train")


def lr_lambda(step: int, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up then cosine decay to `floor` of the peak learning rate."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def checkpoints(output_dir: Path) -> list[Path]:
    return sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def train(config: TrainConfig) -> Path:
    """Run training; returns the folder of the final trained weights (`weights.llmseg_weights`)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from llmseg_model.data.proposal_cache import ProposalCache
    from llmseg_model.data.training import TrainingSet, collate
    from llmseg_model.modeling.model import LLMSeg

    precision = config.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "no"
    accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum, mixed_precision=precision)
    set_seed(config.seed)
    if config.cpu_threads > 0:
        torch.set_num_threads(config.cpu_threads)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model_config = config.model_config()
    (output_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))

    model = LLMSeg.from_config(model_config, device=str(accelerator.device), load_trained=False)
    if config.init_from:
        model.load_trained(config.init_from)
    cache = ProposalCache(config.cache_dir, model_config.sam, model_config.proposals, generator=model.proposal_generator)

    mixed = build_mixture(config.datasets, length=config.samples_per_epoch or None, seed=config.seed)
    base = model  # the unwrapped model (accelerate may wrap `model` below)

    def preprocess(image):  # CPU only: DataLoader (and prefill) workers call it
        return base.features.preprocess(image)[0], base.vlm.pixel_values(image)[0]

    def frozen(dino_pixels, llava_pixels):
        dino, vision = base.frozen_features(dino_pixels, llava_pixels)
        return dino.cpu(), vision.cpu()

    memo = config.memo_images > 0
    if memo and config.num_workers:
        raise ValueError("memo_images keeps its memo in the main process: set num_workers: 0 (or memo_images: 0)")
    dataset = TrainingSet(
        mixed,
        proposals_for=cache.get,
        top_k=model_config.proposals.top_k,
        preprocess=preprocess,
        frozen=frozen if memo else None,
        memo_items=config.memo_images,
        seed=config.seed,
    )
    if memo and config.prefill_workers:
        dataset.prefill(config.prefill_workers, progress=accelerator.is_local_main_process)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=config.num_workers,
        drop_last=len(dataset) >= config.batch_size,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    logger.info("training %d tensors, %.2fM parameters", len(params), sum(p.numel() for p in params) / 1e6)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_lambda(step, config.warmup_steps, config.steps, config.min_lr_ratio)
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    accelerator.register_for_checkpointing(scheduler)

    step = 0
    existing = checkpoints(output_dir)
    if config.resume and existing:
        accelerator.load_state(str(existing[-1]))
        step = int(existing[-1].name.split("-")[1])
        logger.info("resumed from %s at step %d", existing[-1], step)

    log_path = output_dir / "metrics.jsonl"
    model.train()
    progress = tqdm(total=config.steps, initial=step, desc="train", disable=not accelerator.is_local_main_process)
    started = time.perf_counter()
    running: dict[str, float] = {}
    epoch = 0
    while step < config.steps:
        mixed.set_epoch(epoch)
        epoch += 1
        for batch in loader:
            with accelerator.accumulate(model):
                losses = model(batch)
                accelerator.backward(losses.total)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            step += 1
            for key, value in losses.as_floats().items():
                running[key] = running.get(key, 0.0) + value
            progress.update(1)
            if step % config.log_every == 0 or step == config.steps:
                count = config.log_every if step % config.log_every == 0 else step % config.log_every
                record = {k: v / count for k, v in running.items()}
                record.update(step=step, lr=scheduler.get_last_lr()[0], elapsed_s=time.perf_counter() - started)
                running = {}
                progress.set_postfix(loss=f"{record['total']:.3f}")
                if accelerator.is_main_process:
                    with log_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
            if step % config.save_every == 0 and step < config.steps:
                save_checkpoint(accelerator, output_dir, step, config.keep_checkpoints)
            if step >= config.steps:
                break
    progress.close()
    final = output_dir / "llmseg"
    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(model)
        trained.save_trained(final)
        logger.info("saved trained weights to %s", final)
        if config.export_merged:
            trained.export_merged(output_dir / "merged")
            logger.info("exported the LoRA-merged model to %s", output_dir / "merged")
    accelerator.wait_for_everyone()
    return final


def save_checkpoint(accelerator, output_dir: Path, step: int, keep: int) -> None:
    """Full resumable state (model, optimizer, scheduler, RNG); only the newest `keep` are kept."""
    import shutil

    accelerator.save_state(str(output_dir / f"checkpoint-{step}"))
    if accelerator.is_main_process:
        for old in checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train LLM-Seg (LoRA + fusion heads) on cached SAM proposals.")
    parser.add_argument("--config", help="training YAML (see config/train_tiny.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a top-level setting, e.g. steps=200")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    for item in args.set:
        key, _, value = item.partition("=")
        if not _:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        data[key] = yaml.safe_load(value)
    final = train(TrainConfig.from_dict(data or {}))
    print(final)


if __name__ == "__main__":
    main()
