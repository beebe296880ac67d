#!/usr/bin/env bash
# The main job: set up, prepare a real MovieLens set (../shared/data, else the GroupLens
# download, else synthetic data), train a short SASRec and print its metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
SEQ=.venv/bin/seqrec
SHARED=${SEQREC_SHARED_DATA:-../shared/data}
if [ -f "$SHARED/ml-100k/u.data" ]; then
  $SEQ prepare ml-100k --raw "$SHARED/ml-100k"
  DATASET=ml-100k
elif $SEQ prepare ml-100k 2>/dev/null; then
  DATASET=ml-100k
else
  echo "no MovieLens data available offline or online: using synthetic data"
  $SEQ prepare synthetic --users 2000 --items 800
  DATASET=synthetic
fi
$SEQ train --model sasrec --no_mhc --dataset "$DATASET" --train_dir runs/demo-sasrec-$DATASET \
  --loss ce --maxlen 50 --hidden_units 64 --num_heads 2 --dropout_rate 0.2 --batch_size 128 \
  --num_epochs ${DEMO_EPOCHS:-15} --patience 5 --progress false "$@"
