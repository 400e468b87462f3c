"""The released LLM-Seg checkpoint, converted into the files the `paper` preset loads.

The release is the DeepSpeed `module` state dict of a peft-wrapped `LISAForCausalLM`
(wangjunchi/LLMSeg, model/LISA.py): every name starts with `base_model.model.`, then
- `model.layers.N.*`, `model.embed_tokens`, `model.norm`, `lm_head`: LLaMA-7B (Vicuna v1.1), with
  LoRA factors `lora_A/B.default` beside the q/v projections and a 32004-row vocabulary;
- `model.vision_tower.vision_tower.vision_model.*`: CLIP ViT-L/14 at 224, `model.mm_projector`:
  one Linear from CLIP to LLaMA (LLaVA-Lightning-7B-v1-1);
- `model.visual_model_dinov2.*`: DINOv2 ViT-L/14 in torch.hub naming (fused qkv, ls1/ls2);
- `model.visual_model.*`: SAM ViT-H (frozen, unused by LLM-Seg's forward but stored);
- `model.text_hidden_fcs`, `model.lisa_*`: the <SEG> projection, the 1x1 conv and the fusion.

Output (`convert`): `llava/` (a llava-hf folder: LLaMA, CLIP and the projector as a Linear
followed by an exact identity, the tokenizer with `[SEG]`, the CLIP-224 processor), `dinov2/` (a
transformers Dinov2 folder), `sam.safetensors`, and `llmseg/llmseg.safetensors` (LoRA, embeddings,
LM head, projection, conv and fusion in this project's names) with the config that loads it all.
Every name of the release is mapped, dropped as a recomputed buffer, or an error; every tensor the
targets need must come from it. Tensors are read memory-mapped and written one shard at a time.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm
from transformers import (
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    Dinov2Config,
    Dinov2Model,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from llmseg_model.config import LLMSegConfig, paper_config
from llmseg_model.modeling.fusion import build_fusion
from llmseg_model.modeling.proposals import build_sam

logger = logging.getLogger(__name__)

PREFIX = "base_model.model."
SHARD_BYTES = 2 * 1024**3
# Buffers of the release that transformers recomputes.
DROPPED = (re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"), re.compile(r".*\.position_ids"))
LLAVA_V1_TOKENS = ("<im_patch>", "<im_start>", "<im_end>")
PEFT_PREFIX = "vlm.llava.base_model.model."
SEG_PROJ_INDEX = {"0": "0", "2": "3"}


@dataclass
class Entry:
    """One output tensor: which group (file) it goes to, its name there, and how it is made."""

    group: str
    target: str
    make: Callable[[], torch.Tensor]
    source: str = ""


def strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The release's names without the peft wrapper's prefix; another prefix is an error."""
    outside = [k for k in state if not k.startswith(PREFIX)]
    if outside:
        raise ValueError(f"names outside {PREFIX!r} (not a peft-wrapped LLM-Seg checkpoint?): {outside[:5]}")
    return {k[len(PREFIX) :]: v for k, v in state.items()}


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in state if (m := regex.fullmatch(k))})


def _need(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in state:
        raise ValueError(f"the checkpoint has no {PREFIX}{name}")
    return state[name]


# ---------------------------------------------------------------------------- configs from shapes
def llava_config(state: dict[str, torch.Tensor], tokenizer, base: dict) -> LlavaConfig:
    """The llava-hf config of LLaVA-v1 with the release's sizes (LLaMA numbers the shapes cannot
    tell, such as rms_norm_eps, come from the LLaVA base's config.json)."""
    vocab, hidden = _need(state, "model.embed_tokens.weight").shape
    clip = "model.vision_tower.vision_tower.vision_model."
    vision_hidden = _need(state, clip + "embeddings.class_embedding").shape[0]
    patch = _need(state, clip + "embeddings.patch_embedding.weight").shape[-1]
    positions = _need(state, clip + "embeddings.position_embedding.weight").shape[0] - 1
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=_need(state, clip + "encoder.layers.0.mlp.fc1.weight").shape[0],
        num_hidden_layers=_count(state, re.escape(clip) + r"encoder\.layers\.(\d+)\..*"),
        num_attention_heads=vision_hidden // 64,
        image_size=patch * math.isqrt(positions),
        patch_size=patch,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=768,
    )
    text = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=_need(state, "model.layers.0.mlp.gate_proj.weight").shape[0],
        num_hidden_layers=_count(state, r"model\.layers\.(\d+)\.input_layernorm\.weight"),
        num_attention_heads=base.get("num_attention_heads", hidden // 128),
        num_key_value_heads=base.get("num_key_value_heads", base.get("num_attention_heads", hidden // 128)),
        rms_norm_eps=base.get("rms_norm_eps", 1e-6),
        max_position_embeddings=base.get("max_position_embeddings", 2048),
        rope_theta=base.get("rope_theta", 10000.0),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<im_patch>"),
        image_seq_length=positions,
        projector_hidden_act="linear",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )


def dinov2_config(state: dict[str, torch.Tensor]) -> Dinov2Config:
    """transformers' Dinov2Config for the release's torch.hub DINOv2 (ViT-L/14: 1024, 24, 16)."""
    hidden = _need(state, "model.visual_model_dinov2.cls_token").shape[-1]
    patch = _need(state, "model.visual_model_dinov2.patch_embed.proj.weight").shape[-1]
    positions = _need(state, "model.visual_model_dinov2.pos_embed").shape[1] - 1
    if any(".mlp.w12." in k for k in state if k.startswith("model.visual_model_dinov2.")):
        raise ValueError("a SwiGLU DINOv2 (ViT-g) is not the published LLM-Seg backbone")
    return Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=_count(state, r"model\.visual_model_dinov2\.blocks\.(\d+)\.norm1\.weight"),
        num_attention_heads=hidden // 64,
        mlp_ratio=_need(state, "model.visual_model_dinov2.blocks.0.mlp.fc1.weight").shape[0] // hidden,
        patch_size=patch,
        image_size=patch * math.isqrt(positions),
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
    )


# ---------------------------------------------------------------------------- name mapping
def _meta_state(build: Callable[[], torch.nn.Module]) -> dict[str, torch.Size]:
    """Names and shapes of a module's state dict, built without memory."""
    with torch.device("meta"):
        return {k: v.shape for k, v in build().state_dict().items()}


def _prefix(keys: dict[str, torch.Size], suffix: str, candidates: tuple[str, ...], what: str) -> str:
    """Which of the candidate prefixes this transformers version uses for `what`."""
    for prefix in candidates:
        if prefix + suffix in keys:
            return prefix
    raise ValueError(f"no place for {what} in this transformers version's LLaVA (tried {candidates})")


def plan_entries(state: dict[str, torch.Tensor], llava_keys: dict[str, torch.Size]) -> Iterator[Entry]:
    """An Entry for every output tensor; an unplaceable name of the release is an error."""
    language = _prefix(llava_keys, "embed_tokens.weight", ("model.language_model.", "language_model.model."), "the language model")
    vision = _prefix(
        llava_keys, "embeddings.class_embedding", ("model.vision_tower.", "model.vision_tower.vision_model.", "vision_tower.vision_model."), "the vision tower"
    )
    projector = _prefix(llava_keys, "linear_1.weight", ("model.multi_modal_projector.", "multi_modal_projector."), "the projector")
    lm_head = _prefix(llava_keys, "lm_head.weight", ("", "language_model."), "the LM head") + "lm_head.weight"
    fusion_names = {
        "lisa_attention_layers.": "layers.",
        "cross_attn_token_to_image.": "props_to_seg.",
        "cross_attn_image_to_token.": "seg_to_props.",
        "lisa_final_attn.": "final_attn.",
        "lisa_norm_final_attn.": "final_norm.",
        "lisa_iou_head.": "iop_head.",  # trained on IoP in the release, whatever its name
        "lisa_embedding_head.": "embedding_head.",
    }
    surplus = []
    for key, tensor in state.items():
        get = (lambda t: (lambda: t))(tensor)
        if any(p.fullmatch(key) for p in DROPPED):
            continue
        if key.startswith("model.layers.") and ".lora_" in key:
            target = PEFT_PREFIX + language + key[len("model.") :]
            yield Entry("trained", target, get, key)
        elif key == "model.embed_tokens.weight":
            yield Entry("llava", language + "embed_tokens.weight", get, key)
            yield Entry("trained", PEFT_PREFIX + language + "embed_tokens.weight", get, key)
        elif key == "lm_head.weight":
            yield Entry("llava", lm_head, get, key)
            yield Entry("trained", PEFT_PREFIX + lm_head, get, key)
        elif key.startswith(("model.layers.", "model.norm.")):
            yield Entry("llava", language + key[len("model.") :], get, key)
        elif key.startswith("model.mm_projector."):
            yield Entry("llava", projector + "linear_1." + key.rsplit(".", 1)[1], get, key)
        elif key.startswith("model.vision_tower.vision_tower.vision_model."):
            yield Entry("llava", vision + key[len("model.vision_tower.vision_tower.vision_model.") :], get, key)
        elif key.startswith("model.visual_model_dinov2."):
            yield from _dinov2_entries(key[len("model.visual_model_dinov2.") :], tensor, key)
        elif key.startswith("model.visual_model."):
            yield Entry("sam", key[len("model.visual_model.") :], get, key)
        elif key.startswith("model.text_hidden_fcs.0."):
            # Linear-ReLU-Linear-Dropout there; Linear-(norm)-ReLU-Linear here: 0 -> 0, 2 -> 3.
            index, rest = key[len("model.text_hidden_fcs.0.") :].split(".", 1)
            yield Entry("trained", f"vlm.seg_proj.{SEG_PROJ_INDEX.get(index, index)}.{rest}", get, key)
        elif key.startswith("model.lisa_dino_conv."):
            yield Entry("trained", "features.proj." + key.rsplit(".", 1)[1], get, key)
        elif key.startswith("model.lisa_"):
            name = key[len("model.") :]
            for old, new in fusion_names.items():
                name = name.replace(old, new)
            yield Entry("trained", "fusion." + name, get, key)
        else:
            surplus.append(key)
    if surplus:
        raise ValueError(f"names of the checkpoint with no place in the paper preset: {[PREFIX + k for k in surplus[:10]]}")
    # llava-hf always has a second projector layer: an exact identity keeps LLaVA-v1's one Linear.
    weight = state["model.mm_projector.weight"]
    yield Entry("llava", projector + "linear_2.weight", lambda: torch.eye(weight.shape[0], dtype=weight.dtype))
    yield Entry("llava", projector + "linear_2.bias", lambda: torch.zeros(weight.shape[0], dtype=weight.dtype))


def _dinov2_entries(name: str, tensor: torch.Tensor, source: str) -> Iterator[Entry]:
    """torch.hub DINOv2 names -> transformers' Dinov2Model names (the fused qkv is split)."""
    get = lambda: tensor  # noqa: E731
    direct = {
        "cls_token": "embeddings.cls_token",
        "pos_embed": "embeddings.position_embeddings",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
    }
    if name == "mask_token":  # hub (1, C), transformers (1, C)
        yield Entry("dinov2", "embeddings.mask_token", lambda: tensor.reshape(1, -1), source)
        return
    if name in direct:
        yield Entry("dinov2", direct[name], get, source)
        return
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if not match:
        raise ValueError(f"unexpected DINOv2 tensor {PREFIX}model.visual_model_dinov2.{name}")
    layer, rest = f"encoder.layer.{match.group(1)}.", match.group(2)
    if rest.startswith("attn.qkv."):
        kind = rest.rsplit(".", 1)[1]
        for part, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            yield Entry("dinov2", f"{layer}attention.{proj}.{kind}", (lambda p: lambda: tensor.chunk(3, dim=0)[p].contiguous())(part), source)
        return
    renames = {"attn.proj.": "attention.o_proj.", "ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1"}
    for old, new in renames.items():
        if rest.startswith(old):
            rest = new + rest[len(old) :]
            break
    yield Entry("dinov2", layer + rest, get, source)


def check_entries(entries: list[Entry], expected: dict[str, dict[str, torch.Size]]) -> None:
    """Every group gets exactly its skeleton's tensors, with its shapes; errors name each one."""
    problems = []
    for group, keys in expected.items():
        made = {e.target: e for e in entries if e.group == group}
        missing = sorted(set(keys) - set(made))
        surplus = sorted(set(made) - set(keys))
        if missing:
            problems.append(f"{group}: missing {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if surplus:
            sources = [made[k].source or k for k in surplus[:8]]
            problems.append(f"{group}: no place for {sources}{' ...' if len(surplus) > 8 else ''}")
        for name in sorted(set(keys) & set(made)):
            shape = made[name].make().shape
            if tuple(shape) != tuple(keys[name]):
                problems.append(f"{group}: {made[name].source or name} has shape {tuple(shape)}, the model needs {tuple(keys[name])}")
    if problems:
        raise ValueError("the checkpoint does not fit the paper preset:\n  " + "\n  ".join(problems))


# ---------------------------------------------------------------------------- writing
def write_safetensors(entries: list[Entry], path: Path, shard_bytes: int = SHARD_BYTES, progress: bool = True) -> None:
    """Write entries as one file or as shards with an index (the transformers layout), holding
    at most one shard's tensors in memory."""
    total = sum(e.make().numel() * e.make().element_size() for e in entries)
    shards: list[list[Entry]] = [[]]
    size = 0
    for entry in entries:
        nbytes = entry.make().numel() * entry.make().element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [path.name] if len(shards) == 1 else [f"{path.stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in tqdm(list(zip(names, shards)), desc=f"writing {path.parent.name}/{path.name}", disable=not progress, unit="file"):
        save_file({e.target: e.make().contiguous() for e in shard}, str(path.parent / name), metadata={"format": "pt"})
        weight_map.update({e.target: name for e in shard})
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path.parent / f"{path.stem}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def load_llava_v1_tokenizer(llava_base: Path, seg_token: str, vocab_size: int):
    """LLaVA-Lightning's tokenizer with LISA's `[SEG]` added as the last id; checked against the
    checkpoint's vocabulary."""
    tokenizer = AutoTokenizer.from_pretrained(str(llava_base), local_files_only=True)
    missing = [t for t in LLAVA_V1_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        raise ValueError(f"--llava-base {llava_base}: the tokenizer lacks LLaVA-v1's {missing} (not LLaVA-Lightning-7B-v1-1?)")
    if seg_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([seg_token])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    if len(tokenizer) != vocab_size or tokenizer.convert_tokens_to_ids(seg_token) != vocab_size - 1:
        raise ValueError(
            f"the tokenizer of --llava-base has {len(tokenizer)} tokens with {seg_token} at "
            f"{tokenizer.convert_tokens_to_ids(seg_token)}; the checkpoint's embeddings have {vocab_size} rows "
            f"with {seg_token} last"
        )
    return tokenizer


def convert(
    checkpoint: str | Path,
    llava_base: str | Path,
    out: str | Path,
    config: LLMSegConfig | None = None,
    sam: str | Path | None = None,
    dinov2: str | Path | None = None,
    allow_globals: tuple[str, ...] = (),
    progress: bool = True,
) -> LLMSegConfig:
    """Convert the release into `out`; returns the config that loads it (also saved there as
    llmseg_config.json). `config` gives the target architecture (the paper preset by default);
    with `sam` / `dinov2` those weights are taken from the given local files instead."""
    from llmseg_model.checkpoints.deepspeed import load_model_states

    config = config or paper_config()
    out, llava_base = Path(out), Path(llava_base)
    if not llava_base.is_dir():
        raise FileNotFoundError(f"--llava-base {llava_base} is not a folder (LLaVA-Lightning-7B-v1-1, for its tokenizer)")
    state = strip_prefix(load_model_states(checkpoint, allow_globals))
    vocab = _need(state, "model.embed_tokens.weight").shape[0]
    tokenizer = load_llava_v1_tokenizer(llava_base, config.vlm.seg_token, vocab)
    base_json = llava_base / "config.json"
    base = json.loads(base_json.read_text()) if base_json.is_file() else {}
    llava_cfg = llava_config(state, tokenizer, base)
    dino_cfg = dinov2_config(state)
    expected = {
        "llava": _meta_state(lambda: LlavaForConditionalGeneration(llava_cfg)),
        "dinov2": _meta_state(lambda: Dinov2Model(dino_cfg)),
        "sam": _meta_state(lambda: build_sam(config.sam)),
    }
    fusion = _meta_state(lambda: build_fusion(config.fusion, config.features.embed_dim, config.vlm.seg_embed_dim))
    entries = list(plan_entries(state, expected["llava"]))
    expected["trained"] = _trained_keys(entries, expected["llava"], fusion, state, config)
    check_entries(entries, expected)
    dtype = _need(state, "model.embed_tokens.weight").dtype

    weights = config.weights
    weights.llava_path = str(write_llava(entries, llava_cfg, tokenizer, dtype, out / "llava", progress))
    if dinov2 is None:
        write_safetensors([e for e in entries if e.group == "dinov2"], out / "dinov2" / "model.safetensors", progress=progress)
        dino_cfg.save_pretrained(str(out / "dinov2"))
        weights.dinov2_path = str(out / "dinov2")
    else:
        weights.dinov2_path = str(dinov2)
    if sam is None:
        write_safetensors([e for e in entries if e.group == "sam"], out / "sam.safetensors", shard_bytes=1 << 62, progress=progress)
        weights.sam_checkpoint = str(out / "sam.safetensors")
    else:
        weights.sam_checkpoint = str(sam)
    write_safetensors([e for e in entries if e.group == "trained"], out / "llmseg" / "llmseg.safetensors", shard_bytes=1 << 62, progress=progress)
    weights.llmseg_weights = str(out / "llmseg")
    config.save(out / "llmseg" / "llmseg_config.json")
    config.save(out / "llmseg_config.json")
    logger.info("converted %s into %s", checkpoint, out)
    return LLMSegConfig.load(out / "llmseg_config.json")


def write_llava(entries: list[Entry], llava_cfg: LlavaConfig, tokenizer, dtype: torch.dtype, folder: Path, progress: bool) -> Path:
    """The llava-hf folder: weights, config, tokenizer and the CLIP image processor."""
    write_safetensors([e for e in entries if e.group == "llava"], folder / "model.safetensors", progress=progress)
    llava_cfg.dtype = str(dtype).removeprefix("torch.")
    llava_cfg.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    size = llava_cfg.vision_config.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(str(folder))
    return folder


def load_folder_state(folder: Path, what: str) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder's safetensors or torch .bin files, memory-mapped (torch's
    weights-only loader for .bin)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"{what} {folder}: no *.safetensors or pytorch_model*.bin files")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        part = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        state.update(part)
    return state


def convert_llava_base(llava_base: str | Path, clip: str | Path, out: str | Path, progress: bool = True) -> Path:
    """LLaVA-Lightning-7B-v1-1 (original LLaVA format: LLaMA + mm_projector, CLIP loaded apart)
    and a local CLIP ViT-L/14 folder -> a llava-hf folder the `paper` preset trains from
    (`weights.llava_path`); `[SEG]` is added when the model is built, as LISA adds it."""
    llava_base, clip, out = Path(llava_base), Path(clip), Path(out)
    for path, flag in ((llava_base, "--llava-base"), (clip, "--clip")):
        if not path.is_dir():
            raise FileNotFoundError(f"{flag} {path} is not a folder")
    state = {k: v for k, v in load_folder_state(llava_base, "--llava-base").items() if not k.startswith("model.vision_tower.")}
    clip_state = load_folder_state(clip, "--clip")
    vision = "model.vision_tower.vision_tower.vision_model."
    for name, tensor in clip_state.items():
        name = name.removeprefix("vision_model.")
        if not name.startswith(("text_model.", "logit_scale", "text_projection", "visual_projection")):
            state[vision + name] = tensor
    tokenizer = AutoTokenizer.from_pretrained(str(llava_base), local_files_only=True)
    missing = [t for t in LLAVA_V1_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        raise ValueError(f"--llava-base {llava_base}: the tokenizer lacks LLaVA-v1's {missing}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    vocab = _need(state, "model.embed_tokens.weight").shape[0]
    if len(tokenizer) != vocab:
        raise ValueError(f"the tokenizer of --llava-base has {len(tokenizer)} tokens, its embeddings {vocab} rows")
    base_json = llava_base / "config.json"
    llava_cfg = llava_config(state, tokenizer, json.loads(base_json.read_text()) if base_json.is_file() else {})
    keys = _meta_state(lambda: LlavaForConditionalGeneration(llava_cfg))
    entries = [e for e in plan_entries(state, keys) if e.group == "llava"]
    check_entries(entries, {"llava": keys})
    write_llava(entries, llava_cfg, tokenizer, _need(state, "model.embed_tokens.weight").dtype, out, progress)
    logger.info("converted %s + %s into %s", llava_base, clip, out)
    return out


def _trained_keys(
    entries: list[Entry], llava_keys: dict[str, torch.Size], fusion: dict[str, torch.Size], state: dict[str, torch.Tensor], config: LLMSegConfig
) -> dict[str, torch.Size]:
    """Names and shapes of what `LLMSeg.load_trained` expects of the paper preset."""
    keys: dict[str, torch.Size] = {}
    rank = config.vlm.lora_r
    for name, shape in llava_keys.items():
        match = re.fullmatch(r"(.*layers\.\d+\.self_attn\.(q_proj|v_proj))\.weight", name)
        if match and "vision" not in name:
            keys[f"{PEFT_PREFIX}{match.group(1)}.lora_A.default.weight"] = torch.Size([rank, shape[1]])
            keys[f"{PEFT_PREFIX}{match.group(1)}.lora_B.default.weight"] = torch.Size([shape[0], rank])
        elif any(part in name for part in config.vlm.trainable_modules):
            keys[PEFT_PREFIX + name] = shape
    hidden = llava_keys[next(k for k in llava_keys if k.endswith("embed_tokens.weight"))][1]
    keys["vlm.seg_proj.0.weight"] = torch.Size([hidden, hidden])
    keys["vlm.seg_proj.0.bias"] = torch.Size([hidden])
    keys["vlm.seg_proj.3.weight"] = torch.Size([config.vlm.seg_embed_dim, hidden])
    keys["vlm.seg_proj.3.bias"] = torch.Size([config.vlm.seg_embed_dim])
    dino_hidden = _need(state, "model.visual_model_dinov2.cls_token").shape[-1]
    keys["features.proj.weight"] = torch.Size([config.features.embed_dim, dino_hidden, 1, 1])
    keys["features.proj.bias"] = torch.Size([config.features.embed_dim])
    keys.update({"fusion." + k: v for k, v in fusion.items()})
    return keys
