#!/usr/bin/env bash
# Reproduce docs/results.md: prepare the real sets from ../shared/data, then train every row.
# Usage: bash scripts/results.sh [ROW...]   (rows: config names in configs/, default: all below)
# Each run uses one CPU thread (two can run side by side on a 2-core machine without
# oversubscription); pass THREADS=N to change it. Runs land in runs/<config name>.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SEQREC_SHARED_DATA:-../shared/data}
SEQ=.venv/bin/seqrec
THREADS=${THREADS:-1}
for d in beauty sports; do $SEQ info $d >/dev/null 2>&1 || $SEQ prepare $d --raw "$SHARED/amazon"; done
$SEQ info ml-100k >/dev/null 2>&1 || $SEQ prepare ml-100k --raw "$SHARED/ml-100k"
ROWS=("$@")
if [ ${#ROWS[@]} -eq 0 ]; then
  ROWS=(sasrec_ml-100k_ce tisasrec_ml-100k_ce sasrec_ml-100k_bce sasrec_beauty_ce tisasrec_beauty_ce sasrec_beauty_bce)
fi
for row in "${ROWS[@]}"; do
  $SEQ train --config configs/$row.yaml --train_dir runs/$row --num_threads "$THREADS" --progress false \
    > runs/$row.log 2>&1 || { echo "$row failed: see runs/$row.log"; exit 1; }
  tail -4 runs/$row.log
done
