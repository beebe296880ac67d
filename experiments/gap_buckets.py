"""Full-ranking HR@10 / NDCG@10 of trained runs, split by the time gap before the target.

The gap is target time minus the time of the last history item, in days, bucketed as 0 (same
day), (0, 30] and > 30 days. Leave-one-out runs; the best checkpoint; history excluded.

    .venv/bin/python experiments/gap_buckets.py runs/ss4rec_sports_plateau_gap05 runs/sasrec_sports_ce_plateau

Written for the flat run config of commit 6912061 (``run.cfg`` a flat dict, ``seqrec.train.runs``);
run it with that commit's code (see experiments/README.md). Results: experiments/notes.md.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from seqrec.train.evaluation import evaluate
from seqrec.train.runs import load_run

BUCKETS = (("same day", 0.0, 0.0), ("(0, 30] d", 0.0, 30.0), ("> 30 d", 30.0, np.inf))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories (seqrec train --train_dir)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| run | split | " + " | ".join(f"{b[0]}: users, HR@10, NDCG@10" for b in BUCKETS) + " |")
    print("|---|---|" + "---|" * len(BUCKETS))
    for rd in args.runs:
        run = load_run(rd, "best.pt", "cpu")
        if run.cfg.get("split", "loo") != "loo":
            raise SystemExit(f"{rd}: leave-one-out runs only (split is {run.cfg.get('split')!r})")
        sp = run.dataset.eval_split("loo", run.cfg.get("split_fraction", 0.8))
        ts = run.batcher.timestamp
        for split, users, pos in (("valid", sp.valid_users, sp.valid_pos), ("test", sp.test_users, sp.test_pos)):
            gap = (ts[pos] - ts[pos - 1]) / 86400.0  # target time minus the last history item's
            cells = []
            for _, lo, hi in BUCKETS:
                m = (gap == 0) if hi == 0 else (gap > lo) & (gap <= hi)
                r = evaluate(run.model, run.batcher, users[m], pos[m], protocol="full", ks=(10,),
                             exclude_history=run.cfg.get("exclude_history", True))
                cells.append(f"{int(m.sum()):,}, {r['hr@10']:.4f}, {r['ndcg@10']:.4f}")
            print(f"| {rd.rstrip('/').split('/')[-1]} | {split} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
