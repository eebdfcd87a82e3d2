#!/usr/bin/env bash
# The embedded default model, end to end and resumable on any machine (docs/model_card.md):
#   render data (Blender) -> init the pipeline (the shipped light VAE + a random small transformer)
#   -> cache latents -> Stage 1: plain image-to-video pretraining -> Stage 2: FramePrompt fine-tuning
#   from the Stage-1 weights -> predict the held-out split -> evaluate -> export (opt-in).
#
#   bash scripts/train_default_model.sh                  # everything, into runs/default_model/
#   TR_STEPS=8000 bash scripts/train_default_model.sh    # continue Stage 2 to 8000 steps
#   EXPORT=1 bash scripts/train_default_model.sh         # also copy the result into the package
#
# Survives the end of a session and a new machine: after every chunk the newest checkpoint of each
# stage (weights, EMA, optimizer, scheduler, RNG; ~20 MB) is copied to $STATE, which lives in the
# repository; a run on a fresh clone re-renders the same data (seeded), rebuilds the cache and
# resumes from it. Set THREADS for more cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
FP=${FP:-.venv/bin/frameprompt}
RUN=${RUN:-runs/default_model}
STATE=${STATE:-training_state/default_model}
VAE=${VAE:-backend/frameprompt/default_model/vae}
THREADS=${THREADS:-2}
TRAIN_CLIPS=${TRAIN_CLIPS:-2400}
TEST_CLIPS=${TEST_CLIPS:-100}
S1_STEPS=${S1_STEPS:-1500}      # Stage 1: image-to-video on the same clips, skeletons unused
TR_STEPS=${TR_STEPS:-6000}      # Stage 2: FramePrompt (target-only loss)
TR_CHUNK=${TR_CHUNK:-500}       # Stage 2 trains in chunks: each writes <RUN>/frameprompt/model{,_ema}
LR=${LR:-3e-4}
EMA=${EMA:-0.999}
EVAL_CLIPS=${EVAL_CLIPS:-50}
export OMP_NUM_THREADS=$THREADS
mkdir -p "$RUN" "$STATE"

steps_done() {  # the step of the newest checkpoint in a checkpoints folder (0 if none)
    [ -f "$1/latest" ] || { echo 0; return; }
    $PY -c "import json,sys; print(json.load(open(sys.argv[1]))['step'])" "$1/$(cat "$1/latest")/trainer_state.json"
}
restore() {  # $STATE/<stage> -> <RUN>/<stage> when this machine has no checkpoint of its own
    local stage=$1
    [ -f "$STATE/$stage/latest" ] || return 0
    [ "$(steps_done "$RUN/$stage/checkpoints")" -ge "$(steps_done "$STATE/$stage")" ] && return 0
    echo "resuming $stage from $STATE/$stage (step $(steps_done "$STATE/$stage"))"
    rm -rf "$RUN/$stage/checkpoints"
    mkdir -p "$RUN/$stage"
    cp -r "$STATE/$stage" "$RUN/$stage/checkpoints"
    mv "$RUN/$stage/checkpoints/train_log.csv" "$RUN/$stage/train_log.csv"
}
snapshot() {  # the newest checkpoint and the loss log of <RUN>/<stage> -> $STATE/<stage>
    local stage=$1 latest
    latest=$(cat "$RUN/$stage/checkpoints/latest")
    rm -rf "$STATE/$stage.tmp"
    mkdir -p "$STATE/$stage.tmp"
    cp -r "$RUN/$stage/checkpoints/$latest" "$STATE/$stage.tmp/"
    cp "$RUN/$stage/checkpoints/latest" "$RUN/$stage/train_log.csv" "$STATE/$stage.tmp/"
    rm -rf "$STATE/$stage"
    mv "$STATE/$stage.tmp" "$STATE/$stage"
}
train_stage() {  # stage, target steps, extra finetune arguments...
    local stage=$1 steps=$2
    shift 2
    restore "$stage"
    local resume=()
    [ -f "$RUN/$stage/checkpoints/latest" ] && resume=(--resume)
    $FP finetune --full --data "$RUN/data_train" --out "$RUN/$stage" --cache-dir "$RUN/latent_cache" \
        --max-steps "$steps" --batch-size 8 --lr "$LR" --warmup-steps 100 --checkpoint-every 100 \
        --keep-checkpoints 1 --ema-decay "$EMA" --no-gradient-checkpointing --seed 0 --no-progress \
        "$@" "${resume[@]}"
    snapshot "$stage"
}

# 1. data: 64x64, N=8, Workbench, product-shaped (docs/dataset.md); training characters
#    (id % 10 != 0) and held-out ones (id % 10 == 0) with another seed
$FP dataset render --out "$RUN/data_train" --clips "$TRAIN_CLIPS" --frames 8 --size 64x64 \
    --characters train --num-characters 300 --seed 1 --no-progress
$FP dataset render --out "$RUN/data_test" --clips "$TEST_CLIPS" --frames 8 --size 64x64 \
    --characters test --num-characters 50 --seed 2 --no-progress

# 2. the pipeline: the shipped frame-wise AutoencoderKLWan (4x spatial, no temporal compression;
#    `python -m frameprompt.research.train_vae` trains another) + a random transformer (seed 0), then latents
[ -f "$RUN/init_model/model_index.json" ] || $PY -m frameprompt.research.default_model init \
    --vae "$VAE" --out "$RUN/init_model"
$PY -m frameprompt.research.default_model cache --model "$RUN/init_model" --data "$RUN/data_train" \
    --cache "$RUN/latent_cache"

# 3. Stage 1: the image-to-video model FramePrompt starts from (the paper fine-tunes a pretrained I2V)
train_stage stage1 "$S1_STEPS" --objective image-to-video --model "$RUN/init_model"

# 4. Stage 2: FramePrompt from the Stage-1 EMA weights, in resumable chunks
done_steps=$(steps_done "$RUN/frameprompt/checkpoints")
[ "$done_steps" -lt "$(steps_done "$STATE/frameprompt")" ] && done_steps=$(steps_done "$STATE/frameprompt")
while :; do
    next=$(( done_steps + TR_CHUNK )); [ "$next" -gt "$TR_STEPS" ] && next=$TR_STEPS
    train_stage frameprompt "$next" --model "$RUN/stage1/model_ema"
    done_steps=$next
    # kept for scripts/train_baselines.sh, which compares every method at the same budget
    rm -rf "$RUN/frameprompt_step$next"; cp -r "$RUN/frameprompt/model_ema" "$RUN/frameprompt_step$next"
    [ "$done_steps" -ge "$TR_STEPS" ] && break
done

# 5. held-out predictions + the two trivial references, then metrics
for weights in model model_ema; do
    $PY -m frameprompt.research.default_model predict --model "$RUN/frameprompt/$weights" \
        --data "$RUN/data_test" --out "$RUN/eval_$weights" --limit "$EVAL_CLIPS" --steps 20
    for kind in model repeat_reference vae_reconstruction; do
        $FP evaluate --pred "$RUN/eval_$weights/$kind" --gt "$RUN/data_test" \
            --out "$RUN/eval_$weights/report_$kind" --json "$RUN/eval_$weights/$kind.json" --no-fvd || true
    done
    $PY -m frameprompt.research.default_model region --data "$RUN/data_test" --pred "$RUN/eval_$weights" \
        --json "$RUN/eval_$weights/regions.json"
done

# 6. ship it (opt-in): the EMA weights
if [ "${EXPORT:-0}" = 1 ]; then
    $PY -m frameprompt.research.default_model export --model "$RUN/frameprompt/model_ema" \
        --dest backend/frameprompt/default_model
    $FP calibrate --model backend/frameprompt/default_model   # MagCache ratios belong to the weights
fi
