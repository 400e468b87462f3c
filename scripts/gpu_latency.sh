#!/usr/bin/env bash
# The latency figures for a GPU in one call (issue 13): the shipped tiny preset, then the paper
# presets at full shape with random weights (SAM ViT-H everything mode, DINOv2 ViT-L/14, LLaVA-7B
# in bfloat16; LLaVA-v1's 256 and LLaVA-v1.5's 576 image tokens; LLaVA-v1's instructions again with
# the prompt prefix shared by a batch). Each run writes latency.json under $OUT (default outputs/gpu_latency), and its
# log when it fails, and is bounded by its own timeout, so a slow or failing step leaves the others'
# results.
#
#   bash scripts/gpu_latency.sh                    # on a machine with CUDA and the requirements
#   DEVICE=cpu SHRINK=1 bash scripts/gpu_latency.sh  # the same steps at toy shapes (checks the script)
#
# Wheels in .whl/ (if any) are installed into /tmp/site first: a machine that cannot reach a
# package registry gets the pinned packages its image lacks that way. For a CUDA image with torch,
# tokenizers and safetensors but none of this project's requirements:
#   pip download --no-deps --python-version 3.12 --platform manylinux2014_x86_64 --only-binary=:all: -d .whl \
#       transformers==5.24.0 peft==0.21.2 segment-anything==1.0 jsonargparse pycocotools
# TINY_ITERATIONS / TINY_WARMUP and PAPER_ITERATIONS / PAPER_WARMUP set each run's repetitions,
# TINY_SECONDS, PAPER_SECONDS, LLAVA15_SECONDS and SHARED_SECONDS its time limit.
set -uo pipefail
OUT=${OUT:-outputs/gpu_latency}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PYTHON" -c "import torch, transformers, peft, segment_anything; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$OUT/machine.txt"

# Toy shapes for a CPU check of this script (SHRINK=1); empty on a GPU.
shrink=()
if [ "${SHRINK:-0}" = 1 ]; then
    shrink=(--llava '{text_hidden: 256, text_layers: 2, text_heads: 2, text_intermediate: 512, vision_layers: 1}'
            --model.sam.encoder_depth 1 --model.sam.encoder_global_attn_indexes "[0]" --dinov2 "{num_hidden_layers: 1}"
            --model.proposals.points_per_side 4 --frame-height 240 --frame-width 320)
fi

run() {  # run NAME SECONDS ARGS...: one latency run, its log's tail printed (the log kept if it failed)
    local name=$1 seconds=$2
    shift 2
    echo "== $name (at most ${seconds}s)"
    timeout "$seconds" "$PYTHON" -m llmseg_model.latency --device "$DEVICE" --output-dir "$OUT/$name" --no-progress "$@" \
        >"$OUT/$name.log" 2>&1
    local status=$?
    echo "== $name: exit $status"
    tail -n 40 "$OUT/$name.log"
    # At most 8 files come back from a device call: the tables are in latency.json and in the tail
    # just printed, so only a failed run keeps its log.
    rm -f "$OUT/$name/latency.md"
    if [ "$status" = 0 ]; then rm -f "$OUT/$name.log"; fi
}

# 1. The shipped tiny preset (its own weights), as on the CPU: refine proposals, dense grid both engines.
run tiny "${TINY_SECONDS:-100}" --frames 4 --iterations "${TINY_ITERATIONS:-2}" --warmup "${TINY_WARMUP:-2}"
# 2. The paper preset at full shape: the published 32x32 grid through both engines, and the lean
#    engine with every mask passing (random SAM weights keep almost none at the published
#    thresholds, which would leave post-processing out of the figure).
run paper "${PAPER_SECONDS:-240}" --preset paper --random-weights --llava-full --frames 3 --iterations "${PAPER_ITERATIONS:-2}" --warmup "${PAPER_WARMUP:-1}" \
    --mode preset --mode dense_grid_stock:engine=segment_anything --mode all_pass:pred_iou_thresh=0,stability_score_thresh=0 \
    "${shrink[@]}"
# 3. LLaVA-v1.5's 576 image tokens: the instruction half, frames prepared on the preset's grid.
run paper_llava15 "${LLAVA15_SECONDS:-150}" --preset paper_llava15 --random-weights --llava-full --frames 2 --iterations 2 \
    --warmup 1 --mode preset "${shrink[@]}"
# 4. The paper preset's instruction half with the frame's one copy of the prompt prefix shared by a
#    batch (vlm.prefix_attention shared; on a GPU the default copies it, as run 2 did).
run paper_shared_prefix "${SHARED_SECONDS:-90}" --preset paper --random-weights --llava-full --frames 2 --iterations 2 \
    --warmup 1 --mode preset --no-prepare --model.vlm.prefix_attention shared "${shrink[@]}"
