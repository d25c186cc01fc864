#!/usr/bin/env bash
# Cassava Leaf Disease Classification, one model, as a plain shell script (the Makefile next to this does two
# models, parallel folds and resuming from where it stopped).
#
#   examples/cassava/pipeline.sh /path/to/cassava-leaf-disease-classification
#   EPOCHS=1 FOLDS=2 IMG=256 DATA=/tmp/cassava examples/cassava/pipeline.sh raw
#
# Settings come from the environment, with the Makefile's names and defaults. Every step prints what it wrote.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 RAW_DIR   (the unpacked Kaggle download: train.csv, train_images/, test_images/, ...)" >&2
  exit 2
fi
RAW=$1
DATA=${DATA:-data/cassava}
RUNS=${RUNS:-runs}
OUT=${OUT:-out}
MODEL=${MODEL:-tf_efficientnet_b3}
IMG=${IMG:-384}
EPOCHS=${EPOCHS:-10}
FOLDS=${FOLDS:-5}
TTA=${TTA:-4}
SEED=${SEED:-42}
DEVICE=${DEVICE:-auto}
KCOMP=${KCOMP:-kcomp}          # may hold several words, e.g. "python -m kcomp.commands.main"
WEIGHTS=${WEIGHTS:-}           # a local weights file for MODEL (timm state dict); empty = timm's pretrained weights
                               # (Hugging Face hub cache, downloaded once); EXTRA=--no-pretrained: random init
# The training recipe, a YAML file of `kcomp train` options given as --config: what worked on Cassava's noisy
# labels (bi-tempered loss, CutMix, EMA of the weights). Empty: none.
RECIPE=${RECIPE-$(dirname "$0")/recipes/noisy-labels.yaml}
EXTRA=${EXTRA:-}               # more `kcomp train` flags (they win over the recipe), e.g. "--batch-size 16 --lr 3e-4"

read -r -a kcomp <<<"$KCOMP"
read -r -a flags <<<"${RECIPE:+--config $RECIPE} $EXTRA ${WEIGHTS:+--weights $WEIGHTS}"
run="$RUNS/$MODEL"
split="$DATA/folds$FOLDS.parquet"

"${kcomp[@]}" prep cassava "$RAW" -o "$DATA"
"${kcomp[@]}" split "$DATA/index.parquet" -o "$split" --folds "$FOLDS" --strategy stratified --seed "$SEED"

# One fold after another; an interrupted fold keeps $run/foldK/last.pt and re-running this script resumes it.
# On a multi-GPU machine, run the folds in parallel instead, e.g. fold k with CUDA_VISIBLE_DEVICES=k ... &; wait
for ((k = 0; k < FOLDS; k++)); do
  "${kcomp[@]}" train cls --folds "$split" --fold "$k" -o "$run" --model "$MODEL" --img-size "$IMG" \
    --epochs "$EPOCHS" --seed "$SEED" --device "$DEVICE" "${flags[@]}"
done

# Out-of-fold predictions with the same TTA as the test predictions, so CV and leaderboard stay comparable.
"${kcomp[@]}" oof "$run" -o "$OUT/oof_$MODEL.parquet" --tta "$TTA" --device "$DEVICE"
"${kcomp[@]}" tta "$run" -o "$OUT/test_$MODEL.parquet" --tta "$TTA" --device "$DEVICE"
"${kcomp[@]}" tune-threshold "$OUT/oof_$MODEL.parquet" -o "$OUT/thresholds.json"
"${kcomp[@]}" submit cassava "$OUT/test_$MODEL.parquet" -o "$OUT/submission.csv" \
  --thresholds "$OUT/thresholds.json" --sample "$RAW/sample_submission.csv"
