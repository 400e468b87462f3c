"""The released LLM-Seg checkpoint runs in the paper preset.

A small random model is written in the release's layout (the peft-wrapped LISAForCausalLM of
wangjunchi/LLMSeg model/LISA.py, as a DeepSpeed model-states file with its side entries), converted
with `convert_official`, loaded into `LLMSeg`, and compared with an independent computation of the
published formulas: DINOv2 (torch.hub ViT, written out here), pooling (model/LISA.py
mask_pooling), LLaMA with its LoRA merged (transformers' LlamaForCausalLM on the release's own
names), the prompt tokenised as transformers 4.29's slow tokenizer did (SentencePiece, piece by
piece), text_hidden_fcs at the state before [SEG], LISA_TwoWayAttentionBlock, the heads, and the
IoP > 0.5 rule of training.py validate_threshold.
"""

from __future__ import annotations

import collections
import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import sentencepiece
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from llmseg_model.checkpoints.official import convert  # noqa: E402
from llmseg_model.config import FeatureConfig, FusionConfig, ProposalConfig, paper_config, tiny_config  # noqa: E402
from llmseg_model.modeling.model import LLMSeg  # noqa: E402
from llmseg_model.config import TINY_WEIGHTS_DIR  # noqa: E402
from llmseg_model.data.procedural import ProceduralDataset  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

# Sizes of the small release: LLaMA 32-d x 2 layers (4 heads), CLIP 64-d x 2 layers at 28 px
# (4 patch tokens), DINOv2 64-d x 2 blocks pretrained at 28 px and run at 56 (a 4x4 grid, so the
# position embeddings are interpolated), fusion 16-d.
SP_VOCAB, HIDDEN, INTER, LAYERS, HEADS, RANK = 400, 32, 64, 2, 4, 8
CLIP, CLIP_LAYERS, PATCH = 64, 2, 14
DINO, DINO_LAYERS = 64, 2
SEG, FUSION_MLP, IOP_HIDDEN, EMB_HIDDEN = 16, 32, 8, 24
VOCAB = SP_VOCAB + 4  # + <im_patch> <im_start> <im_end> [SEG]
SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


# ---------------------------------------------------------------------------- the release, small
def release_layout() -> dict[str, tuple[int, ...]]:
    """Names and shapes of LISAForCausalLM's state dict (peft-wrapped) without SAM."""
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        layer = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{layer}self_attn.{proj}.weight"] = (HIDDEN, HIDDEN)
        for proj in ("q_proj", "v_proj"):
            shapes[f"{layer}self_attn.{proj}.lora_A.default.weight"] = (RANK, HIDDEN)
            shapes[f"{layer}self_attn.{proj}.lora_B.default.weight"] = (HIDDEN, RANK)
        shapes[f"{layer}self_attn.rotary_emb.inv_freq"] = (HIDDEN // HEADS // 2,)
        shapes[f"{layer}mlp.gate_proj.weight"] = shapes[f"{layer}mlp.up_proj.weight"] = (INTER, HIDDEN)
        shapes[f"{layer}mlp.down_proj.weight"] = (HIDDEN, INTER)
        shapes[f"{layer}input_layernorm.weight"] = shapes[f"{layer}post_attention_layernorm.weight"] = (HIDDEN,)
    clip = "model.vision_tower.vision_tower.vision_model."
    shapes.update({
        clip + "embeddings.class_embedding": (CLIP,),
        clip + "embeddings.patch_embedding.weight": (CLIP, 3, PATCH, PATCH),
        clip + "embeddings.position_embedding.weight": (5, CLIP),
        clip + "embeddings.position_ids": (1, 5),
        clip + "pre_layrnorm.weight": (CLIP,), clip + "pre_layrnorm.bias": (CLIP,),
        clip + "post_layernorm.weight": (CLIP,), clip + "post_layernorm.bias": (CLIP,),
        "model.mm_projector.weight": (HIDDEN, CLIP), "model.mm_projector.bias": (HIDDEN,),
    })
    for i in range(CLIP_LAYERS):
        layer = f"{clip}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{layer}self_attn.{proj}.weight"], shapes[f"{layer}self_attn.{proj}.bias"] = (CLIP, CLIP), (CLIP,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{layer}{norm}.weight"] = shapes[f"{layer}{norm}.bias"] = (CLIP,)
        shapes[f"{layer}mlp.fc1.weight"], shapes[f"{layer}mlp.fc1.bias"] = (2 * CLIP, CLIP), (2 * CLIP,)
        shapes[f"{layer}mlp.fc2.weight"], shapes[f"{layer}mlp.fc2.bias"] = (CLIP, 2 * CLIP), (CLIP,)
    dino = "model.visual_model_dinov2."
    shapes.update({
        dino + "cls_token": (1, 1, DINO), dino + "pos_embed": (1, 5, DINO), dino + "mask_token": (1, DINO),
        dino + "patch_embed.proj.weight": (DINO, 3, PATCH, PATCH), dino + "patch_embed.proj.bias": (DINO,),
        dino + "norm.weight": (DINO,), dino + "norm.bias": (DINO,),
    })
    for i in range(DINO_LAYERS):
        block = f"{dino}blocks.{i}."
        shapes.update({
            block + "norm1.weight": (DINO,), block + "norm1.bias": (DINO,),
            block + "attn.qkv.weight": (3 * DINO, DINO), block + "attn.qkv.bias": (3 * DINO,),
            block + "attn.proj.weight": (DINO, DINO), block + "attn.proj.bias": (DINO,),
            block + "ls1.gamma": (DINO,), block + "ls2.gamma": (DINO,),
            block + "norm2.weight": (DINO,), block + "norm2.bias": (DINO,),
            block + "mlp.fc1.weight": (4 * DINO, DINO), block + "mlp.fc1.bias": (4 * DINO,),
            block + "mlp.fc2.weight": (DINO, 4 * DINO), block + "mlp.fc2.bias": (DINO,),
        })
    shapes.update({
        "model.text_hidden_fcs.0.0.weight": (HIDDEN, HIDDEN), "model.text_hidden_fcs.0.0.bias": (HIDDEN,),
        "model.text_hidden_fcs.0.2.weight": (SEG, HIDDEN), "model.text_hidden_fcs.0.2.bias": (SEG,),
        "model.lisa_dino_conv.weight": (SEG, DINO, 1, 1), "model.lisa_dino_conv.bias": (SEG,),
        "model.lisa_norm_final_attn.weight": (SEG,), "model.lisa_norm_final_attn.bias": (SEG,),
        "model.lisa_iou_head.0.weight": (IOP_HIDDEN, SEG), "model.lisa_iou_head.0.bias": (IOP_HIDDEN,),
        "model.lisa_iou_head.2.weight": (1, IOP_HIDDEN), "model.lisa_iou_head.2.bias": (1,),
        "model.lisa_embedding_head.0.weight": (EMB_HIDDEN, SEG), "model.lisa_embedding_head.0.bias": (EMB_HIDDEN,),
        "model.lisa_embedding_head.2.weight": (SEG, EMB_HIDDEN), "model.lisa_embedding_head.2.bias": (SEG,),
    })
    attentions = [f"model.lisa_attention_layers.{i}.{a}." for i in range(2) for a in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token")]
    for attn in attentions + ["model.lisa_final_attn."]:
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{attn}{proj}.weight"], shapes[f"{attn}{proj}.bias"] = (SEG, SEG), (SEG,)
    for i in range(2):
        layer = f"model.lisa_attention_layers.{i}."
        for norm in ("norm1", "norm2", "norm3", "norm4"):
            shapes[f"{layer}{norm}.weight"] = shapes[f"{layer}{norm}.bias"] = (SEG,)
        shapes[f"{layer}mlp.lin1.weight"], shapes[f"{layer}mlp.lin1.bias"] = (FUSION_MLP, SEG), (FUSION_MLP,)
        shapes[f"{layer}mlp.lin2.weight"], shapes[f"{layer}mlp.lin2.bias"] = (SEG, FUSION_MLP), (SEG,)
    return shapes


def random_release(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random bf16 tensors in the release's layout, SAM included, under the peft prefix."""
    gen = torch.Generator().manual_seed(seed)
    module = collections.OrderedDict()
    for name, shape in release_layout().items():
        if name.endswith("position_ids"):
            value = torch.arange(shape[1]).unsqueeze(0)
        elif name.endswith("inv_freq"):
            value = 1.0 / (10000 ** (torch.arange(0, HIDDEN // HEADS, 2).float() / (HIDDEN // HEADS)))
        elif re.search(r"(norm\w*|layernorm|layer_norm\d)\.weight$", name):
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith("gamma"):
            value = 0.5 + 0.1 * torch.randn(shape, generator=gen)
        else:
            fan_in = shape[-1] if len(shape) > 1 else 4
            value = torch.randn(shape, generator=gen) / math.sqrt(fan_in if len(shape) != 4 else math.prod(shape[1:]))
        module["base_model.model." + name] = value.to(torch.bfloat16) if value.is_floating_point() else value
    # SAM: the shipped tiny SAM's weights in SAM's own layout, so that proposals are real.
    for name, value in load_file(str(TINY_WEIGHTS_DIR / "sam.safetensors")).items():
        module["base_model.model.model.visual_model." + name] = value.to(torch.bfloat16)
    return module


def save_deepspeed(module: dict[str, torch.Tensor], folder, extra: dict | None = None):
    """A DeepSpeed-0.10-style run folder: global_step5000/mp_rank_00_model_states.pt + `latest`."""
    step = folder / "global_step5000"
    step.mkdir(parents=True)
    state = {
        "module": module,
        "buffer_names": [k for k in module if k.endswith(("inv_freq", "position_ids"))],
        "optimizer": None,
        "param_shapes": [collections.OrderedDict((k, v.shape) for k, v in module.items() if "lora_" in k)],
        "frozen_param_shapes": collections.OrderedDict((k, v.shape) for k, v in module.items() if "lora_" not in k),
        "shared_params": {},
        "frozen_param_fragments": None,
        "lr_scheduler": {"last_batch_iteration": 4999},
        "data_sampler": None,
        "random_ltd": None,
        "sparse_tensor_module_names": set(),
        "skipped_steps": 0,
        "global_steps": 5000,
        "global_samples": 100000,
        "dp_world_size": 2,
        "mp_world_size": 1,
        "ds_config": {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 10, "bf16": {"enabled": True}},
        "ds_version": "0.10.0",
        **(extra or {}),
    }
    torch.save(state, step / "mp_rank_00_model_states.pt")
    (folder / "latest").write_text("global_step5000")
    return step / "mp_rank_00_model_states.pt"


def llava_lightning_base(folder):
    """LLaVA-Lightning-7B-v1-1's tokenizer files (a SentencePiece Llama tokenizer plus LLaVA-v1's
    three image tokens) and the config.json entries the converter reads."""
    folder.mkdir()
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join([SYSTEM, "USER: ASSISTANT: Please output segmentation mask. Please respond with it.",
                                 "What is the red cup in this image? Can you segment the thing I could open a bottle with",
                                 "It is. Sure, it is. Sure, the segmentation result is. Where would you put a hot pan?"] * 30))
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=SP_VOCAB, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity", remove_extra_whitespaces=False,
        split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    corpus.unlink()
    (folder / "tokenizer.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
        "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": 2048, "legacy": True}))
    (folder / "added_tokens.json").write_text(json.dumps({"<im_patch>": SP_VOCAB, "<im_start>": SP_VOCAB + 1, "<im_end>": SP_VOCAB + 2}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlavaLlamaForCausalLM"], "num_attention_heads": HEADS, "rms_norm_eps": 1e-6, "max_position_embeddings": 512}))
    return folder


def small_paper_config():
    """The paper preset with the small release's sizes (SAM: the tiny preset's)."""
    config = paper_config()
    config.sam = tiny_config().sam
    config.proposals = ProposalConfig(max_side=256, top_k=12, points_per_side=8, points_per_batch=64, pred_iou_thresh=0.7,
                                      stability_score_thresh=0.8, box_nms_thresh=0.7, lowres_size=16, lowres_layout="pad")
    config.features = FeatureConfig(image_size=56, embed_dim=SEG, layout="letterbox", pool_size=16, pos_embed="hub", dtype="float32")
    config.vlm.seg_embed_dim = SEG
    config.fusion = FusionConfig(variant="published", dim=SEG, depth=2, num_heads=2, mlp_dim=FUSION_MLP, iop_hidden=IOP_HIDDEN, embedding_hidden=EMB_HIDDEN)
    return config


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    module = random_release()
    checkpoint = save_deepspeed(module, root / "run")
    base = llava_lightning_base(root / "LLaVA-Lightning-7B-v1-1")
    config = convert(root / "run", base, root / "converted", config=small_paper_config(), progress=False)
    return {"root": root, "module": {k[len("base_model.model."):]: v for k, v in module.items()}, "checkpoint": checkpoint, "base": base, "config": config}


@pytest.fixture(scope="module")
def model(release):
    torch.manual_seed(0)
    return LLMSeg.from_config(release["config"])


# ---------------------------------------------------------------------------- the published computation
def published_ids(text: str, base, phrase: bool = False) -> list[int]:
    """The validation prompt's ids as LISA built them: llava_v1 conversation, <image> wrapped in
    <im_start>/<im_end>, `tokenizer_image_token`, and 4.29's slow tokenizer (added tokens cut the
    text, whitespace beside them is stripped, each piece SentencePiece-encoded on its own)."""
    sp = sentencepiece.SentencePieceProcessor(model_file=str(base / "tokenizer.model"))
    added = {"<im_patch>": SP_VOCAB, "<im_start>": SP_VOCAB + 1, "<im_end>": SP_VOCAB + 2, "[SEG]": SP_VOCAB + 3}
    question = f"\n What is {text} in this image? Please output segmentation mask." if phrase else f"\n {text} Please output segmentation mask."
    prompt = f"{SYSTEM} USER: <image>{question} ASSISTANT: [SEG].</s>".replace("<image>", "<im_start><image><im_end>")

    def slow_tokenize(chunk: str) -> list[int]:
        pieces = re.split(r"(<im_patch>|<im_start>|<im_end>|\[SEG\]|</s>)", chunk)
        for k in range(1, len(pieces), 2):
            if pieces[k] != "</s>":  # plain added tokens strip both neighbours; </s> is an AddedToken without strip
                pieces[k - 1] = pieces[k - 1].rstrip()
                pieces[k + 1] = pieces[k + 1].lstrip()
        ids = [1]
        for k, piece in enumerate(pieces):
            if k % 2:
                ids.append(2 if piece == "</s>" else added[piece])
            elif piece:
                ids.extend(sp.encode(piece))
        return ids

    first, second = (slow_tokenize(c) for c in prompt.split("<image>"))
    return first + [-200] + second[1:]


def hub_dinov2(module, pixels: torch.Tensor) -> torch.Tensor:
    """torch.hub's DinoVisionTransformer.forward_features -> x_norm_patchtokens as (1, C, G, G)."""
    w = {k[len("model.visual_model_dinov2."):]: v.float() for k, v in module.items() if k.startswith("model.visual_model_dinov2.")}
    x = F.conv2d(pixels, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=PATCH)
    grid = x.shape[-1]
    x = torch.cat([w["cls_token"], x.flatten(2).transpose(1, 2)], dim=1)
    side = int(math.sqrt(w["pos_embed"].shape[1] - 1))
    patch_pos = w["pos_embed"][:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, scale_factor=((grid + 0.1) / side, (grid + 0.1) / side), mode="bicubic")
    x = x + torch.cat([w["pos_embed"][:, :1], patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)
    for i in range(DINO_LAYERS):
        b = {k[len(f"blocks.{i}."):]: v for k, v in w.items() if k.startswith(f"blocks.{i}.")}
        h = F.layer_norm(x, (DINO,), b["norm1.weight"], b["norm1.bias"], eps=1e-6)
        q, k, v = F.linear(h, b["attn.qkv.weight"], b["attn.qkv.bias"]).chunk(3, dim=-1)
        attn = (q @ k.transpose(-1, -2) / math.sqrt(DINO)).softmax(-1) @ v  # one head of 64
        x = x + b["ls1.gamma"] * F.linear(attn, b["attn.proj.weight"], b["attn.proj.bias"])
        h = F.layer_norm(x, (DINO,), b["norm2.weight"], b["norm2.bias"], eps=1e-6)
        x = x + b["ls2.gamma"] * F.linear(F.gelu(F.linear(h, b["mlp.fc1.weight"], b["mlp.fc1.bias"])), b["mlp.fc2.weight"], b["mlp.fc2.bias"])
    x = F.layer_norm(x, (DINO,), w["norm.weight"], w["norm.bias"], eps=1e-6)
    return x[:, 1:].transpose(1, 2).reshape(1, DINO, grid, grid)


def sam_attention(w, prefix, q, k, v, heads=2):
    """segment_anything's Attention (model/transformer.py) with the release's weights."""
    def split(x):
        return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)
    q = split(F.linear(q, w[prefix + "q_proj.weight"], w[prefix + "q_proj.bias"]))
    k = split(F.linear(k, w[prefix + "k_proj.weight"], w[prefix + "k_proj.bias"]))
    v = split(F.linear(v, w[prefix + "v_proj.weight"], w[prefix + "v_proj.bias"]))
    out = torch.softmax(q @ k.permute(0, 1, 3, 2) / math.sqrt(q.shape[-1]), dim=-1) @ v
    return F.linear(out.transpose(1, 2).reshape(q.shape[0], -1, SEG), w[prefix + "out_proj.weight"], w[prefix + "out_proj.bias"])


def published_scores(module, base, image: np.ndarray, masks: np.ndarray, text: str) -> tuple[np.ndarray, np.ndarray]:
    """(similarity, IoP) of every proposal for one instruction, computed as the release did."""
    w = {k: v.float() for k, v in module.items()}
    # DINOv2 input (ResizeLongestSide + normalise + pad) and the mask maps (pad + bilinear AA).
    h, wd = image.shape[:2]
    scale = 56 / max(h, wd)
    nh, nw = int(h * scale + 0.5), int(wd * scale + 0.5)
    resized = torch.from_numpy(np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR)).copy()).permute(2, 0, 1).float()
    mean, std = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1), torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    pixels = F.pad((resized - mean) / std, (0, 56 - nw, 0, 56 - nh)).unsqueeze(0)
    features = F.conv2d(hub_dinov2(module, pixels), w["model.lisa_dino_conv.weight"], w["model.lisa_dino_conv.bias"])
    features = F.interpolate(features, size=(16, 16), mode="bilinear", align_corners=False)[0].flatten(1)
    side = max(h, wd)
    square = F.pad(torch.from_numpy(masks.astype(np.float32)), (0, side - wd, 0, side - h))
    maps = F.interpolate(square.unsqueeze(0), size=(16, 16), mode="bilinear", align_corners=False, antialias=True)[0].flatten(1)
    props = ((maps @ features.T) / (maps.sum(-1, keepdim=True) + 1e-8)).unsqueeze(0)

    # LLaVA: CLIP layer -2 patch tokens -> mm_projector; LLaMA with LoRA merged (alpha / r = 2).
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=CLIP, intermediate_size=2 * CLIP, num_hidden_layers=CLIP_LAYERS, num_attention_heads=1,
                                            image_size=28, patch_size=PATCH, hidden_act="quick_gelu", layer_norm_eps=1e-5)).eval()
    prefix = "model.vision_tower.vision_tower.vision_model."
    clip_state = {k[len(prefix):]: v for k, v in w.items() if k.startswith(prefix) and not k.endswith("position_ids")}
    clip_state = {(f"vision_model.{k}" if "vision_model.embeddings.class_embedding" in clip.state_dict() else k): v for k, v in clip_state.items()}
    clip.load_state_dict(clip_state)
    clip_pixels = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})(images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        image_tokens = clip(clip_pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        image_tokens = F.linear(image_tokens, w["model.mm_projector.weight"], w["model.mm_projector.bias"])
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
                                         num_attention_heads=HEADS, num_key_value_heads=HEADS, rms_norm_eps=1e-6, max_position_embeddings=512,
                                         tie_word_embeddings=False)).eval()
    merged = {}
    for k, v in w.items():
        if k.startswith("model.layers.") and ".lora_" not in k and "rotary" not in k or k in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
            merged[k] = v
    for i in range(LAYERS):
        for proj in ("q_proj", "v_proj"):
            base_w = f"model.layers.{i}.self_attn.{proj}."
            merged[base_w + "weight"] = w[base_w + "weight"] + 2.0 * w[base_w + "lora_B.default.weight"] @ w[base_w + "lora_A.default.weight"]
    llama.load_state_dict(merged)
    ids = published_ids(text, base)
    at = ids.index(-200)
    seg_mask = [ids[i + 1] == SP_VOCAB + 3 for i in range(len(ids) - 1)] + [False]  # input_ids[:, 1:] == seg
    seg_position = seg_mask.index(True) + image_tokens.shape[1] - 1  # the +255 shift, here +3
    with torch.no_grad():
        embeds = llama.get_input_embeddings()(torch.tensor([ids[:at] + ids[at + 1:]]))
        embeds = torch.cat([embeds[:, :at], image_tokens, embeds[:, at:]], dim=1)
        hidden = llama(inputs_embeds=embeds, output_hidden_states=True).hidden_states[-1][0, seg_position]
        pred = F.linear(F.relu(F.linear(hidden, w["model.text_hidden_fcs.0.0.weight"], w["model.text_hidden_fcs.0.0.bias"])),
                        w["model.text_hidden_fcs.0.2.weight"], w["model.text_hidden_fcs.0.2.bias"])

        # LISA_TwoWayAttentionBlock x 2 (queries = proposals, keys = [SEG]), final attention, heads.
        seg = pred.view(1, 1, SEG)
        for i in range(2):
            p = f"model.lisa_attention_layers.{i}."
            ln = lambda x, n: F.layer_norm(x, (SEG,), w[p + n + ".weight"], w[p + n + ".bias"])  # noqa: E731
            props = ln(props + sam_attention(w, p + "self_attn.", props, props, props), "norm1")
            props = ln(props + sam_attention(w, p + "cross_attn_token_to_image.", props, seg, seg), "norm2")
            mlp = F.linear(F.relu(F.linear(props, w[p + "mlp.lin1.weight"], w[p + "mlp.lin1.bias"])), w[p + "mlp.lin2.weight"], w[p + "mlp.lin2.bias"])
            props = ln(props + mlp, "norm3")
            seg = ln(seg + sam_attention(w, p + "cross_attn_image_to_token.", seg, props, props), "norm4")
        props = props + sam_attention(w, "model.lisa_final_attn.", props, seg, seg)
        props = F.layer_norm(props, (SEG,), w["model.lisa_norm_final_attn.weight"], w["model.lisa_norm_final_attn.bias"])
        iop = torch.sigmoid(F.linear(F.relu(F.linear(props, w["model.lisa_iou_head.0.weight"], w["model.lisa_iou_head.0.bias"])),
                                     w["model.lisa_iou_head.2.weight"], w["model.lisa_iou_head.2.bias"]))[0, :, 0]
        emb = F.linear(F.relu(F.linear(props, w["model.lisa_embedding_head.0.weight"], w["model.lisa_embedding_head.0.bias"])),
                       w["model.lisa_embedding_head.2.weight"], w["model.lisa_embedding_head.2.bias"])[0]
        similarity = (emb / emb.norm(dim=-1, keepdim=True)) @ (pred / pred.norm())
    return similarity.numpy(), iop.numpy()


# ---------------------------------------------------------------------------- tests
def test_prompt_ids_are_the_published_ones(model, release):
    """The paper preset's prompt + given answer ids equal LISA's validation ids (image tokens
    aside), for sentences and phrases, with irregular spacing."""
    vlm = model.vlm
    for text, phrase in [("the thing I could open a bottle with", False), ("Where would you put a hot pan?", False), ("the red cup", True)]:
        ours = vlm.prompts.prompt_ids(vlm.prompts.question(text, phrase), 4) + vlm.prompts.answer_ids(vlm.prompts.answer(text))
        theirs = published_ids(text, release["base"], phrase)
        at = theirs.index(-200)
        assert ours == theirs[:at] + [SP_VOCAB] * 4 + theirs[at + 1:], text


def test_scores_and_selection_equal_the_published_computation(model, release):
    image = np.ascontiguousarray(ProceduralDataset("val", 1).scene(0).image[:192])  # not square: letterboxed
    frame = model.prepare(image)
    assert frame.proposals.count >= 3
    text = "the thing I could open a bottle with"
    result = model.query(frame, text)
    similarity, iop = published_scores(release["module"], release["base"], image, frame.proposals.masks(), text)
    assert np.allclose(result.iou_scores, similarity, atol=1e-5), np.abs(result.iou_scores - similarity).max()
    assert np.allclose(result.iop_scores, iop, atol=1e-5), np.abs(result.iop_scores - iop).max()
    assert sorted(result.proposal_indices.tolist()) == np.flatnonzero(iop > 0.5).tolist()
    assert result.answer == "[SEG]."


def test_seg_state_is_read_before_the_seg_token(model, release):
    """The <SEG> embedding is text_hidden_fcs(last-layer state at the position before [SEG])."""
    vlm = model.vlm
    image = np.random.default_rng(4).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    features = vlm.image_features(vlm.pixel_values(image))
    prompt = vlm.prompts.prompt_ids(vlm.prompts.question("the red cup"), features.shape[1])
    full = prompt + vlm.prompts.answer_ids("[SEG].")
    with torch.no_grad():
        ids = torch.tensor([full])
        hidden = vlm.llava(inputs_embeds=vlm.embed(ids, features), output_hidden_states=True).hidden_states[-1][0]
        _, seg = vlm.answer(features, "the red cup")
        seg_at = full.index(vlm.seg_token_id)
        assert seg_at == len(prompt)  # "ASSISTANT:" is the last prompt token
        assert torch.allclose(seg[0], vlm.project(hidden[seg_at - 1 : seg_at])[0], atol=1e-6)
        assert not torch.allclose(seg[0], vlm.project(hidden[seg_at : seg_at + 1])[0], atol=1e-3)


def test_converted_files_are_safetensors_with_relative_paths(release):
    out = release["root"] / "converted"
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))
    stored = json.loads((out / "llmseg_config.json").read_text())["weights"]
    assert stored == {"sam_checkpoint": "sam.safetensors", "dinov2_path": "dinov2", "llava_path": "llava", "llmseg_weights": "llmseg"}
    llava = json.loads((out / "llava" / "config.json").read_text())
    assert llava.get("image_token_index", llava.get("image_token_id")) == SP_VOCAB and llava["vision_feature_layer"] == -2 and llava["projector_hidden_act"] == "linear"


def test_missing_and_surplus_tensors_are_named(release, tmp_path):
    module = random_release()
    del module["base_model.model.model.lisa_iou_head.2.bias"]
    module["base_model.model.model.lisa_extra_head.weight"] = torch.zeros(2)
    save_deepspeed(module, tmp_path / "bad")
    with pytest.raises(ValueError) as error:
        convert(tmp_path / "bad", release["base"], tmp_path / "out", config=small_paper_config(), progress=False)
    assert "fusion.iop_head.2.bias" in str(error.value) and "lisa_extra_head" in str(error.value)
    assert not (tmp_path / "out").exists()


class NotAllowed:
    """A class outside the loader's allow-list, pickled beside the weights."""

    def __init__(self):
        self.payload = 1


def test_unknown_classes_are_refused_unless_allowed(release, tmp_path):
    module = random_release()
    save_deepspeed(module, tmp_path / "run", extra={"client": NotAllowed()})
    with pytest.raises(ValueError, match="NotAllowed.*--allow-global"):
        convert(tmp_path / "run", release["base"], tmp_path / "out", config=small_paper_config(), progress=False)
    name = f"{NotAllowed.__module__}.NotAllowed"
    config = convert(tmp_path / "run", release["base"], tmp_path / "out", config=small_paper_config(), allow_globals=(name,), progress=False)
    assert (tmp_path / "out" / "llava" / "config.json").is_file() and config.preset == "paper"


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    from llmseg_model import convert_official

    with pytest.raises(SystemExit) as exit_code:
        convert_official.main(["--checkpoint", str(tmp_path / "nope"), "--llava-base", str(tmp_path), "--out", str(tmp_path / "o")])
    assert exit_code.value.code == 2


@pytest.mark.parametrize("mode", ["given", "verified", "generate"])
def test_cached_and_batched_paths_equal_the_plain_path(model, mode):
    """The paper preset's answer on the frame's cached prompt, several at once, equals the whole
    prompt run alone (a random LLM: "verified" and "generate" take the generation fallback)."""
    vlm = model.vlm
    image = np.random.default_rng(6).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    features = vlm.image_features(vlm.pixel_values(image))
    prefix = vlm.encode_prefix(features)
    texts, phrases = ["the thing I could open a bottle with", "the red cup", "Where would you put a hot pan?"], [False, True, False]
    old = vlm.config.answer_mode
    vlm.config.answer_mode = mode
    try:
        plain = [vlm.answer_batch(features, [t], [p], prefix=None)[0] for t, p in zip(texts, phrases)]
        batch = vlm.answer_batch(features, texts, phrases, prefix=prefix)
    finally:
        vlm.config.answer_mode = old
    for (text_a, seg_a), (text_b, seg_b) in zip(plain, batch):
        assert text_a == text_b and torch.allclose(seg_a, seg_b, atol=1e-5), (seg_a - seg_b).abs().max()


def test_llava_lightning_base_converts_on_its_own(release, tmp_path):
    """The paper preset trains from the published base: LLaVA-Lightning in LLaVA's own format
    (LLaMA + mm_projector, no [SEG] yet) plus a CLIP folder -> a llava-hf folder."""
    import shutil

    from transformers import CLIPVisionConfig, CLIPVisionModel

    from llmseg_model.checkpoints.official import convert_llava_base

    module = release["module"]
    base = tmp_path / "LLaVA-Lightning-7B-v1-1"
    shutil.copytree(release["base"], base)
    llava_v1 = {k: v for k, v in module.items() if k.startswith(("model.layers.", "model.norm.", "model.mm_projector.")) and ".lora_" not in k}
    llava_v1["model.embed_tokens.weight"] = module["model.embed_tokens.weight"][:-1].clone()  # no [SEG] row
    llava_v1["lm_head.weight"] = module["lm_head.weight"][:-1].clone()
    torch.save(llava_v1, base / "pytorch_model.bin")
    clip_config = CLIPVisionConfig(hidden_size=CLIP, intermediate_size=2 * CLIP, num_hidden_layers=CLIP_LAYERS, num_attention_heads=1,
                                   image_size=28, patch_size=PATCH, hidden_act="quick_gelu")
    clip = CLIPVisionModel(clip_config)
    clip.save_pretrained(str(tmp_path / "clip"))
    folder = convert_llava_base(base, tmp_path / "clip", tmp_path / "llava-hf", progress=False)

    config = small_paper_config()
    config.weights.llava_path = str(folder)
    config.weights.sam_checkpoint = release["config"].weights.sam_checkpoint
    config.weights.dinov2_path = release["config"].weights.dinov2_path
    model = LLMSeg.from_config(config, load_trained=False)
    llava = model.vlm.base
    assert model.vlm.seg_token_id == SP_VOCAB + 3  # added when the model is built, after LLaVA-v1's tokens
    assert torch.equal(llava.get_input_embeddings().weight[:-1].to(torch.bfloat16), llava_v1["model.embed_tokens.weight"])
    q = next(v for k, v in llava.state_dict().items() if k.endswith("layers.0.self_attn.q_proj.base_layer.weight"))
    assert torch.equal(q.to(torch.bfloat16), llava_v1["model.layers.0.self_attn.q_proj.weight"])
    tower = llava.model.vision_tower.state_dict()
    assert all(torch.equal(tower[k.removeprefix("vision_model.")], v) for k, v in clip.state_dict().items())
    image = np.random.default_rng(7).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    assert model.segment(image, "the red cup").mask.shape == (40, 56)
