#!/usr/bin/env bash
# Issue 18's ML-100K figures for one model: the shipped config trained as it is, then a study of
# the seed's phases (capacity on a CPU budget, lr, regularisation; TRIALS each), pruned (median)
# and again unpruned with the same sampler seed, each tested once and refit; then the paired test
# of the best trial against the shipped config. Resumable: run the same command again after a kill.
# The reports, best configurations and figures are copied to experiments/tune_ml100k/ at the end.
#   bash benchmarks/tune_ml100k.sh [MODEL]        (MODEL: sasrec | tisasrec | ss4rec; default sasrec)
#   env: TRIALS (per phase, 14), PRUNERS ("median none"), PRUNE_AFTER (10), TAG (folder suffix), THREADS (1)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-sasrec}
SEQ=.venv/bin/seqrec
OUT=${OUT:-runs/tune}
T=${THREADS:-1}
TRIALS=${TRIALS:-14}
PRUNERS=${PRUNERS:-median none}
PRUNE_AFTER=${PRUNE_AFTER:-10}   # epochs before the pruner may stop a trial (the product's default)
TAG=${TAG:-}                     # a suffix for the study folders (another setting of the same study)
CAPACITY=benchmarks/spaces/capacity_cpu.yaml
[ "$MODEL" = ss4rec ] && CAPACITY=benchmarks/spaces/capacity_cpu_ss4rec.yaml
$SEQ info ml-100k >/dev/null 2>&1 || $SEQ prepare ml-100k --raw "${SEQREC_SHARED_DATA:-../shared/data}/ml-100k"
mkdir -p "$OUT"
if [ ! -f "$OUT/${MODEL}_default/test_metrics.json" ]; then
  $SEQ train --config configs/${MODEL}_ml-100k.yaml --train_dir "$OUT/${MODEL}_default" --num_threads "$T" \
    --progress false --overwrite > "$OUT/${MODEL}_default.log" 2>&1
fi
for pruner in $PRUNERS; do
  dir="$OUT/${MODEL}_$pruner$TAG"
  [ -f "$dir/paired.md" ] && continue  # this study is finished (its figures are written)
  start=$(date +%s)
  $SEQ tune --config configs/${MODEL}_ml-100k.yaml --num_epochs 150 --num_threads "$T" --progress false \
    --phases "$CAPACITY,lr,regularisation" --trials "$TRIALS" --study_dir "$dir" --pruner "$pruner" --prune_after "$PRUNE_AFTER" --refit \
    >> "$dir.log" 2>&1
  echo "$(( $(date +%s) - start )) s this session (the trials' own times are in study.md)" >> "$dir.wall"
  best=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['best_run'])" "$dir/summary.json")
  $SEQ compare "$OUT/${MODEL}_default" "$best" --paired --markdown "$dir/paired.md" >> "$dir.log" 2>&1
done
# what the studies gave, kept in the repository (runs/ is not): reports, best configurations, figures
for pruner in $PRUNERS; do
  dir="$OUT/${MODEL}_$pruner$TAG"
  keep="experiments/tune_ml100k/${MODEL}_$pruner$TAG"
  [ -f "$dir/paired.md" ] || continue
  mkdir -p "$keep"
  cp "$dir"/study.md "$dir"/best.yaml "$dir"/*.json "$dir"/paired.md "$keep"/ 2>/dev/null || true
  cp "$dir"/*.png "$keep"/ 2>/dev/null || true
  [ -f "$dir.wall" ] && cp "$dir.wall" "$keep/wall.txt"
done
cp "$OUT/${MODEL}_default/test_metrics.json" "experiments/tune_ml100k/${MODEL}_default_test_metrics.json" 2>/dev/null || true
