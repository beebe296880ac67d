#!/usr/bin/env bash
# Reproduce docs/results.md: prepare the real sets from ../shared/data, then train the shipped configs.
# Usage: bash scripts/results.sh [ROW...]   (rows: config names in configs/, MODEL_DATASET; default: every
# shipped ML-100K, Beauty and Sports config below). The one-off experiments are in experiments/ (their
# flat configs run on commit 6912061, see experiments/README.md).
# Each run uses one CPU thread (two can run side by side on a 2-core machine without
# oversubscription); pass THREADS=N to change it. Runs land in runs/<config name>.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SEQREC_SHARED_DATA:-../shared/data}
SEQ=.venv/bin/seqrec
THREADS=${THREADS:-1}
ROWS=("$@")
if [ ${#ROWS[@]} -eq 0 ]; then
  ROWS=()
  for d in ml-100k beauty sports; do
    for m in sasrec tisasrec sasrec-mhc tisasrec-mhc ss4rec; do ROWS+=("${m}_$d"); done
  done
fi
for row in "${ROWS[@]}"; do
  [ -f "configs/$row.yaml" ] || { echo "no configs/$row.yaml (one-off configs are in experiments/configs/)"; exit 1; }
done
for d in beauty sports; do $SEQ info $d >/dev/null 2>&1 || $SEQ prepare $d --raw "$SHARED/amazon"; done
$SEQ info ml-100k >/dev/null 2>&1 || $SEQ prepare ml-100k --raw "$SHARED/ml-100k"
mkdir -p runs
for row in "${ROWS[@]}"; do
  $SEQ train --config configs/$row.yaml --train_dir runs/$row --num_threads "$THREADS" --progress false \
    > runs/$row.log 2>&1 || { echo "$row failed: see runs/$row.log"; exit 1; }
  tail -4 runs/$row.log
done
