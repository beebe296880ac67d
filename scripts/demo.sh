#!/usr/bin/env bash
# The main job: set up, prepare a real MovieLens set (../shared/data, else the GroupLens
# download, else synthetic data), then the debug -> verify -> training flow on SASRec:
# a debug run (seconds), the pre-flight check, a short real training + evaluation that prints
# its metrics, its report, and a few recommendations. Extra arguments go to the training.
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
# the shipped ML-100K SASRec config (CE, maxlen 50, tuned), at batch 128 to keep the demo short;
# the demo's runs are replaced on a rerun
ARGS=(--config configs/sasrec_ml-100k.yaml --dataset "$DATASET" --batch_size 128 --progress false)
echo; echo "== 1. debug profile (a slice of users, 2 epochs, anomaly detection) =="
$SEQ train "${ARGS[@]}" --train_dir runs/demo-debug --debug --overwrite
echo; echo "== 2. pre-flight check =="
$SEQ verify "${ARGS[@]}" --train_dir runs/demo-sasrec-$DATASET
echo; echo "== 3. short training run + evaluation =="
$SEQ train "${ARGS[@]}" --train_dir runs/demo-sasrec-$DATASET --num_epochs ${DEMO_EPOCHS:-20} --patience 5 --overwrite "$@"
echo; echo "== 4. report and recommendations =="
sed -n '1,40p' runs/demo-sasrec-$DATASET/report.md
$SEQ recommend runs/demo-sasrec-$DATASET --user 1 --k 5
