#!/usr/bin/env bash
# The paper's Table 1 at small scale, in the paper's setting (docs/results.md): four methods
# fine-tuned from the SAME Stage-1 image-to-video weights (scripts/train_default_model.sh, stage 1)
# at equal steps, batch, learning rate, warm-up and seed, on the same latent cache:
#   FramePrompt (target-only loss), FramePrompt with the all-frames loss, channel concatenation
#   (Fun-Control) and the token-wise pose residual (UniAnimate-DiT), `frameprompt.research.baselines`.
# Then every method predicts the same held-out clips and is measured with `frameprompt evaluate`
# (SSIM, PSNR, FVD with the reference in front; LPIPS when LPIPS_WEIGHTS names AlexNet's weights) and
# `default_model region` (moving / static / character PSNR), beside the two bars.
# Resumable on any machine: each run's newest checkpoint is copied to $STATE/table1/ (repository).
#
#   bash scripts/train_default_model.sh     # first: data, cache, Stage 1 (at least)
#   bash scripts/train_baselines.sh         # BUDGET=1000 steps each -> <RUN>/table1/, then the table
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
FP=${FP:-.venv/bin/frameprompt}
RUN=${RUN:-runs/default_model}
STATE=${STATE:-training_state/default_model}
BUDGET=${BUDGET:-1000}
EVAL_CLIPS=${EVAL_CLIPS:-50}
LR=${LR:-3e-4}
export OMP_NUM_THREADS=${THREADS:-2}
STAGE1="$RUN/stage1/model_ema"
TABLE="$RUN/table1"
lpips=(); [ -n "${LPIPS_WEIGHTS:-}" ] && lpips=(--lpips-weights "$LPIPS_WEIGHTS")
[ -f "$STAGE1/model_index.json" ] || { echo "no Stage-1 model at $STAGE1: run scripts/train_default_model.sh first" >&2; exit 2; }
mkdir -p "$TABLE" "$STATE/table1"

keep() {  # keep <folder in RUN> <name>: a copy of a run's checkpoint in the repository
    rm -rf "$STATE/table1/$2.tmp"; cp -r "$1" "$STATE/table1/$2.tmp"
    rm -rf "$STATE/table1/$2"; mv "$STATE/table1/$2.tmp" "$STATE/table1/$2"
}
bring_back() {  # bring_back <folder in RUN> <name>: restore it on a machine that lacks it
    [ -e "$1" ] || { [ -e "$STATE/table1/$2" ] && mkdir -p "$(dirname "$1")" && cp -r "$STATE/table1/$2" "$1"; } || true
}

# FramePrompt and its all-frames ablation: the project's trainer, no EMA (the baselines have none)
for loss in target all; do
    name=frameprompt; [ "$loss" = all ] && name=frameprompt_all
    bring_back "$TABLE/$name/checkpoints" "$name"
    resume=(); [ -f "$TABLE/$name/checkpoints/latest" ] && resume=(--resume)
    $FP finetune --full --loss "$loss" --model "$STAGE1" --data "$RUN/data_train" --out "$TABLE/$name" \
        --cache-dir "$RUN/latent_cache" --max-steps "$BUDGET" --batch-size 8 --lr "$LR" --warmup-steps 100 \
        --checkpoint-every 100 --keep-checkpoints 1 --no-gradient-checkpointing --seed 0 --no-progress \
        "${resume[@]}"
    keep "$TABLE/$name/checkpoints" "$name"
done
# the two baselines, started from the Stage-1 transformer (their extra inputs at zero)
for kind in concat residual; do
    bring_back "$TABLE/$kind/checkpoint" "$kind"
    $PY -m frameprompt.research.baselines train --kind "$kind" --cache "$RUN/latent_cache" --model "$STAGE1" \
        --init "$STAGE1" --out "$TABLE/$kind" --max-steps "$BUDGET" --batch-size 8 --lr "$LR" --seed 0 --resume
    keep "$TABLE/$kind/checkpoint" "$kind"
done

# predictions on the first EVAL_CLIPS held-out clips (and the two bars once)
predict_dir="$TABLE/predictions"
if [ ! -f "$predict_dir/bars.done" ]; then
    $PY -m frameprompt.research.default_model predict --model "$STAGE1" --data "$RUN/data_test" \
        --out "$predict_dir/bars" --limit "$EVAL_CLIPS" --steps 20 --seed 0
    touch "$predict_dir/bars.done"
fi
for name in frameprompt frameprompt_all; do
    if [ ! -f "$predict_dir/$name.done" ]; then
        rm -rf "$predict_dir/tmp_$name"
        $PY -m frameprompt.research.default_model predict --model "$TABLE/$name/model" --data "$RUN/data_test" \
            --out "$predict_dir/tmp_$name" --limit "$EVAL_CLIPS" --steps 20 --seed 0 --no-references
        rm -rf "$predict_dir/$name"; mv "$predict_dir/tmp_$name/model" "$predict_dir/$name"
        rm -rf "$predict_dir/tmp_$name"; touch "$predict_dir/$name.done"
    fi
done
for kind in concat residual; do
    if [ ! -f "$predict_dir/$kind.done" ]; then
        rm -rf "$predict_dir/$kind"
        $PY -m frameprompt.research.baselines predict --kind "$kind" --run "$TABLE/$kind" --model "$STAGE1" \
            --data "$RUN/data_test" --out "$predict_dir/$kind" --limit "$EVAL_CLIPS" --steps 20
        touch "$predict_dir/$kind.done"
    fi
done

# metrics: <TABLE>/metrics/<bar>/ and <TABLE>/metrics/step<BUDGET>/<method>/
evaluate() {  # evaluate <prediction folder> <metrics folder>
    [ -f "$2/metrics.json" ] && return
    mkdir -p "$2"
    $FP evaluate --pred "$1" --gt "$RUN/data_test" --out "$2" --json "$2/metrics.json.tmp" \
        --fvd-with-reference --grids 0 "${lpips[@]}" > /dev/null
    $PY -m frameprompt.research.default_model region --data "$RUN/data_test" --pred "$1" --json "$2/region.json"
    mv "$2/metrics.json.tmp" "$2/metrics.json"
}
for bar in repeat_reference vae_reconstruction; do
    evaluate "$predict_dir/bars/$bar" "$TABLE/metrics/$bar"
done
for name in frameprompt frameprompt_all concat residual; do
    evaluate "$predict_dir/$name" "$TABLE/metrics/step$BUDGET/$name"
done
$PY -m frameprompt.research.baselines table --run "$TABLE" | tee "$TABLE/table.md"
mkdir -p "$predict_dir/grid"
for name in frameprompt frameprompt_all concat residual; do
    rm -rf "$predict_dir/grid/$name"; cp -r "$predict_dir/$name" "$predict_dir/grid/$name"
done
cp -r "$predict_dir/bars/repeat_reference" "$predict_dir/bars/vae_reconstruction" "$predict_dir/grid/" 2>/dev/null || true
$PY -m frameprompt.research.default_model grid --data "$RUN/data_test" --pred "$predict_dir/grid" \
    --out "$TABLE/grid.png" --clips 4   # docs/images/table1_heldout_grid.png
