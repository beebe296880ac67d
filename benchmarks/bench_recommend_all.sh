#!/usr/bin/env bash
# Issue 19's batch figure: top-10 for every user of the ML-32M-shaped data with a briefly trained
# SASRec, wall time and peak RSS of `seqrec recommend --all`, against `seqrec.api` one user at a
# time (timed on a sample of users and extrapolated, as stated in the output).
#   bash benchmarks/bench_recommend_all.sh        (THREADS=1 by default; WORK=/tmp/seqrec-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
SEQ=.venv/bin/seqrec
WORK=${WORK:-/tmp/seqrec-bench}
T=${THREADS:-1}
mkdir -p "$WORK"
[ -f "$WORK/ml-32m-like/ratings.csv" ] || $PY benchmarks/make_ml32m_like.py --out "$WORK/ml-32m-like/ratings.csv"
[ -f "$WORK/ml-32m/manifest.json" ] || $SEQ prepare ml-32m --raw "$WORK/ml-32m-like/ratings.csv" --out "$WORK/ml-32m"
# a brief training (200 steps): the figure is about serving, not quality
[ -f "$WORK/run32m/best.pt" ] || $SEQ train --model sasrec --dataset "$WORK/ml-32m" --train_dir "$WORK/run32m" \
  --loss bpr --maxlen 200 --hidden_units 64 --num_heads 2 --max_steps 200 --num_epochs 1 --eval_negatives 0 \
  --eval_every 1 --num_threads "$T" --progress false --overwrite
/usr/bin/time -v $SEQ recommend "$WORK/run32m" --all --k 10 --out "$WORK/recs.parquet" --device cpu \
  2> "$WORK/recommend_all.time" | tail -1
grep -E "Elapsed|Maximum resident" "$WORK/recommend_all.time"
OMP_NUM_THREADS=$T $PY - "$WORK/run32m" <<'EOF'
import sys, time
import torch
import seqrec.api
torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
rec = seqrec.api.load(sys.argv[1])
import numpy as np
raw = rec.dataset.user_map()["raw"].to_list()
users = [raw[i] for i in np.random.default_rng(0).choice(len(raw), 1000, replace=False)]  # a random sample
t0 = time.perf_counter()
for u in users:
    rec.recommend(u, k=10)
per_user = (time.perf_counter() - t0) / len(users)
print(f"seqrec.api one user at a time: {per_user * 1000:.1f} ms per user on a sample of {len(users)} users; "
      f"extrapolated to all {rec.n_users:,} users: {per_user * rec.n_users:,.0f} s")
EOF
