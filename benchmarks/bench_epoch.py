"""Training-epoch time at ML-32M size: the batcher alone, then timed steps of each model,
extrapolated to one epoch (and said so), with the peak RSS of each model's process.

    python benchmarks/bench_epoch.py --dataset /tmp/seqrec-bench/ml-32m \\
        --runs sasrec:ce ss4rec:ce ss4rec:bpr --steps 4 --threads 1

Every model runs in a fresh subprocess (its own peak RSS). A step is the product's own
(``seqrec.train.step.TrainStep``: batch with negatives, forward, loss, backward, clipping,
optimizer), on length-bucketed batches of one epoch's order; the batcher figure is
``TrainStep.batch`` alone (windows, timestamps, negatives) over the same batches. One epoch
= ceil(training users / batch) steps. The first ``--warmup`` steps are not timed.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time


def child(args) -> dict:
    import numpy as np
    import torch

    from seqrec.assemble import assemble
    from seqrec.config import flag_table, resolve_config
    from seqrec.train.step import TrainStep

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, loss = args.child.split(":")
    flags = {"dataset": args.dataset, "model": model, "loss": loss, "maxlen": args.maxlen,
             "hidden_units": args.hidden, "num_heads": args.heads, "batch_size": args.batch, "compile": args.compile}
    cfg = resolve_config({k: v for k, v in flags.items() if k in flag_table(model) or k == "model"})
    t0 = time.perf_counter()
    parts = assemble(cfg, prepare_if_missing=False, log=None)
    step = TrainStep(cfg, parts, torch.device("cpu"), **({"log": None} if args.compile else {}))
    load_s = time.perf_counter() - t0
    b = parts.batcher
    rng = np.random.default_rng(0)
    users = b.train_users()
    order = b.epoch_batches(users, args.batch, rng, bucket=32)
    want = args.warmup + args.steps
    if len(order) >= want:  # spread over one epoch
        pick = order[:: max(1, len(order) // want)][:want]
    else:  # small data: successive epochs
        pick = list(order)
        while len(pick) < want:
            pick += b.epoch_batches(users, args.batch, rng, bucket=32)
        pick = pick[:want]
    # the batcher alone, over more batches than the model sees (it is much faster)
    sample = order[:: max(1, len(order) // args.batcher_batches)][: args.batcher_batches]
    t0 = time.perf_counter()
    n_seq = 0
    for u in sample:
        step.batch(u, rng)
        n_seq += len(u)
    batcher_seq_s = n_seq / (time.perf_counter() - t0)
    step.model.train()
    times, lengths = [], []
    for i, u in enumerate(pick):
        batch = step.batch(u, rng)
        t0 = time.perf_counter()
        step.forward_backward(batch)
        step.apply()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            lengths.append(batch["items"].shape[1])
    steps_per_epoch = math.ceil(len(users) / args.batch)
    per_step = float(np.median(times) if args.median else np.mean(times))
    return {"run": args.child, "train_users": int(len(users)), "n_items": int(parts.dataset.n_items),
            "steps_per_epoch": steps_per_epoch, "timed_steps": len(times), "mean_window": float(np.mean(lengths)),
            "s_per_step": per_step, "model_seq_s": args.batch / per_step, "batcher_seq_s": batcher_seq_s,
            "epoch_s_extrapolated": per_step * steps_per_epoch, "load_s": load_s,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="a prepared dataset folder (e.g. the ML-32M-shaped one)")
    ap.add_argument("--runs", nargs="+", default=["sasrec:ce", "ss4rec:ce", "ss4rec:bpr"], help="MODEL:LOSS ...")
    ap.add_argument("--maxlen", type=int, default=200)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per model")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batcher_batches", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--median", action="store_true", help="median step time instead of the mean (e.g. to leave out "
                    "--compile's recompilations for new window lengths)")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    rows = []
    for run in args.runs:
        cmd = [sys.executable, __file__, "--child", run] + [a for a in sys.argv[1:] if a not in args.runs and a != "--runs"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"{run} failed")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['run']}: {r['s_per_step']:.2f} s/step ({r['model_seq_s']:.0f} seq/s, mean window "
              f"{r['mean_window']:.0f}) -> {r['epoch_s_extrapolated'] / 3600:.2f} h per epoch of "
              f"{r['steps_per_epoch']:,} steps (extrapolated from {r['timed_steps']} steps{', median' if args.median else ''}); batcher "
              f"{r['batcher_seq_s']:,.0f} seq/s = {r['batcher_seq_s'] / r['model_seq_s']:.0f}x the model; "
              f"peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
