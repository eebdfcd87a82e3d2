#!/usr/bin/env bash
# The embedded default model, end to end and resumable (every step skips or continues finished work):
#   render data (Blender) -> train the light VAE -> init the pipeline -> cache latents -> train the
#   transformer with `frameprompt finetune --full` -> predict the held-out split -> evaluate -> export.
#
#   bash scripts/train_default_model.sh                  # everything, into runs/default_model/
#   TR_STEPS=6000 bash scripts/train_default_model.sh    # continue the transformer to 6000 steps
#   EXPORT=1 bash scripts/train_default_model.sh         # also copy the result into the package
#
# Hardware it was made on: 2 CPU cores, no GPU (docs/model_card.md). Set THREADS for more cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
FP=${FP:-.venv/bin/frameprompt}
RUN=${RUN:-runs/default_model}
THREADS=${THREADS:-2}
TRAIN_CLIPS=${TRAIN_CLIPS:-1800}
TEST_CLIPS=${TEST_CLIPS:-100}
VAE_STEPS=${VAE_STEPS:-3000}
TR_STEPS=${TR_STEPS:-1500}
TR_CHUNK=${TR_CHUNK:-500}       # the transformer trains in chunks: each writes <RUN>/tr/model
TR_LR=${TR_LR:-3e-4}
EVAL_CLIPS=${EVAL_CLIPS:-50}
export OMP_NUM_THREADS=$THREADS
mkdir -p "$RUN"

# 1. data: 64x64, N=8, Workbench; training characters (id % 10 != 0) and held-out ones (id % 10 == 0)
$FP dataset render --out "$RUN/data_train" --clips "$TRAIN_CLIPS" --frames 8 --size 64x64 \
    --characters train --num-characters 300 --seed 1 --no-progress
$FP dataset render --out "$RUN/data_test" --clips "$TEST_CLIPS" --frames 8 --size 64x64 \
    --characters test --num-characters 50 --seed 2 --no-progress

# 2. the light frame-wise AutoencoderKLWan (4x spatial, no temporal compression)
if [ ! -f "$RUN/vae_run/vae/config.json" ]; then
    resume=(); [ -f "$RUN/vae_run/latest" ] && resume=(--resume)
    $PY -m frameprompt.train_vae --data "$RUN/data_train" --out "$RUN/vae_run" --max-steps "$VAE_STEPS" \
        --batch-size 16 --crop 48 --lr 1e-3 --checkpoint-every 200 --skeleton-clips 300 \
        --threads "$THREADS" --eval-data "$RUN/data_test" "${resume[@]}"
fi

# 3. the pipeline with a random small transformer, and the latent cache (frame-wise, fast)
[ -f "$RUN/init_model/model_index.json" ] || $PY -m frameprompt.default_model_recipe init \
    --vae "$RUN/vae_run/vae" --out "$RUN/init_model"
$PY -m frameprompt.default_model_recipe cache --model "$RUN/init_model" --data "$RUN/data_train" \
    --cache "$RUN/tr/latent_cache"

# 4. the transformer, from scratch, with the project's trainer, in resumable chunks
done_steps=0
[ -f "$RUN/tr/frameprompt_training.json" ] && done_steps=$($PY -c \
    "import json,sys; print(json.load(open(sys.argv[1]))['steps'])" "$RUN/tr/frameprompt_training.json")
while [ "$done_steps" -lt "$TR_STEPS" ]; do
    next=$(( done_steps + TR_CHUNK )); [ "$next" -gt "$TR_STEPS" ] && next=$TR_STEPS
    resume=(); [ -f "$RUN/tr/checkpoints/latest" ] && resume=(--resume)
    $FP finetune --full --model "$RUN/init_model" --data "$RUN/data_train" --out "$RUN/tr" \
        --max-steps "$next" --batch-size 8 --lr "$TR_LR" --warmup-steps 100 --checkpoint-every 100 \
        --no-gradient-checkpointing --seed 0 --no-progress "${resume[@]}"
    done_steps=$next
    # kept for scripts/train_baselines.sh, which compares every method at the same budget
    rm -rf "$RUN/model_step$next"; cp -r "$RUN/tr/model" "$RUN/model_step$next"
done

# 5. held-out predictions + the two trivial references, then metrics (SSIM/PSNR; LPIPS/FVD when their
#    weights are installed, see docs/metrics in frameprompt evaluate --help)
$PY -m frameprompt.default_model_recipe predict --model "$RUN/tr/model" --data "$RUN/data_test" \
    --out "$RUN/eval" --limit "$EVAL_CLIPS" --steps 20
for kind in model repeat_reference vae_reconstruction; do
    $FP evaluate --pred "$RUN/eval/$kind" --gt "$RUN/data_test" --out "$RUN/eval/report_$kind" \
        --json "$RUN/eval/$kind.json" --no-fvd || true
done

# 6. ship it (opt-in)
if [ "${EXPORT:-0}" = 1 ]; then
    $PY -m frameprompt.default_model_recipe export --model "$RUN/tr/model" \
        --dest backend/frameprompt/default_model
fi
