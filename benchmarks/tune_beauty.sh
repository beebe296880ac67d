#!/usr/bin/env bash
# Issue 18's Amazon Beauty study: SASRec CE from configs/sasrec_beauty.yaml over
# benchmarks/spaces/beauty_cpu.yaml, median pruner after PRUNE_AFTER epochs, two workers of one
# thread each on one SQLite study. Resumable across sessions: run the same command again (finished
# trials are kept, an interrupted one is failed and re-run); BUDGET is this session's --timeout per
# worker, and the time spent so far is appended to runs/tune/sasrec_beauty.wall.
# When the workers stop (TRIALS finished or BUDGET spent) the best trial so far is tested once and
# refit (--refit), and the report, best configuration and figures are copied to experiments/tune_beauty/.
#   BUDGET=3000 bash benchmarks/tune_beauty.sh
# PRUNE_AFTER: the shipped config peaks at epoch 42 and stands below the median at epoch 10 (docs/results.md),
# so the default 10 favours fast learners here; PRUNE_AFTER=30 or more gives slow ones a chance.
# JOBS=1 runs one worker (one thread) here; more can join the same study from another shell, e.g.
#   .venv/bin/seqrec tune <the same arguments> --n_jobs 1 --num_threads 1 --timeout S --worker
set -euo pipefail
cd "$(dirname "$0")/.."
SEQ=.venv/bin/seqrec
OUT=${OUT:-runs/tune}
TRIALS=${TRIALS:-24}
BUDGET=${BUDGET:-3600}
PRUNE_AFTER=${PRUNE_AFTER:-10}
JOBS=${JOBS:-2}
$SEQ info beauty >/dev/null 2>&1 || $SEQ prepare beauty --raw "${SEQREC_SHARED_DATA:-../shared/data}/amazon"
dir="$OUT/sasrec_beauty"
mkdir -p "$OUT"
start=$(date +%s)
trap 'echo "$(( $(date +%s) - start )) s on $(date -u +%F) ($JOBS worker(s) x 1 thread)" >> "$dir.wall"' EXIT
$SEQ tune --config configs/sasrec_beauty.yaml --progress false --space benchmarks/spaces/beauty_cpu.yaml \
  --trials "$TRIALS" --study_dir "$dir" --pruner median --prune_after "$PRUNE_AFTER" --n_jobs "$JOBS" \
  --num_threads 1 --timeout "$BUDGET" --refit >> "$dir.log" 2>&1
keep=experiments/tune_beauty
mkdir -p "$keep"
cp "$dir"/study.md "$dir"/best.yaml "$dir"/*.json "$keep"/ 2>/dev/null || true
cp "$dir"/*.png "$keep"/ 2>/dev/null || true
cp "$dir.wall" "$keep/wall.txt"
