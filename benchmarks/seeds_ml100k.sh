#!/usr/bin/env bash
# Issue 18's check of the tuned ML-100K configs on more seeds than the study's one (42): each shipped
# config (tuned) and its former settings, trained with SEEDS, then paired on the same test users per
# seed: tuned minus former (SASRec, TiSASRec) and SS4Rec minus the tuned SASRec. Runs in runs/seeds/;
# the tables land in experiments/tune_ml100k/seeds/. Resumable: finished runs are skipped.
#   bash benchmarks/seeds_ml100k.sh                 (env: SEEDS, default "42 1 2"; THREADS, default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
SEQ=.venv/bin/seqrec
T=${THREADS:-1}
SEEDS=${SEEDS:-42 1 2}
OUT=runs/seeds
KEEP=experiments/tune_ml100k/seeds
$SEQ info ml-100k >/dev/null 2>&1 || $SEQ prepare ml-100k --raw "${SEQREC_SHARED_DATA:-../shared/data}/ml-100k"
mkdir -p "$OUT" "$KEEP"
# name, config, overrides (the former settings, before the studies of 2026-12-03)
ROWS=(
  "sasrec|configs/sasrec_ml-100k.yaml|"
  "sasrec_former|configs/sasrec_ml-100k.yaml|--hidden_units 64 --lr 0.001 --warmup_steps 100 --batch_size 128"
  "tisasrec|configs/tisasrec_ml-100k.yaml|"
  "tisasrec_former|configs/tisasrec_ml-100k.yaml|--hidden_units 64 --num_blocks 2 --num_heads 2 --dropout_rate 0.2 --l2_emb 0"
  "ss4rec|configs/ss4rec_ml-100k.yaml|"
)
for seed in $SEEDS; do
  for row in "${ROWS[@]}"; do
    IFS='|' read -r name config over <<< "$row"
    dir="$OUT/${name}_s$seed"
    [ -f "$dir/test_metrics.json" ] && continue
    # shellcheck disable=SC2086  # the overrides are words
    $SEQ train --config "$config" $over --seed "$seed" --train_dir "$dir" --num_threads "$T" --progress false \
      --overwrite > "$dir.log" 2>&1 || { echo "$dir failed: see $dir.log"; exit 1; }
    echo "$dir: $(tail -1 "$dir.log")"
  done
  for pair in "sasrec_former sasrec" "tisasrec_former tisasrec" "sasrec ss4rec"; do
    read -r a b <<< "$pair"
    $SEQ compare "$OUT/${a}_s$seed" "$OUT/${b}_s$seed" --paired --markdown "$KEEP/${b}_minus_${a}_s$seed.md" \
      > /dev/null
  done
done
runs=()
for row in "${ROWS[@]}"; do for seed in $SEEDS; do runs+=("$OUT/${row%%|*}_s$seed"); done; done
$SEQ compare "${runs[@]}" --markdown "$KEEP/runs.md"
