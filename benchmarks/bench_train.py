"""Training throughput and evaluation time of seqrec models on a prepared dataset.

    python benchmarks/bench_train.py --dataset ml-100k --model sasrec --maxlen 200 --hidden 50

Measures sequences/second over ``--steps`` timed optimizer steps (after 3 warm-up steps) with
the trainer's own step (``seqrec.train.step.TrainStep``: batcher, negatives, loss, clipping), then the time of a full-ranking and of a
100-negative sampled evaluation of every evaluated user, and the peak RSS of the process.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from seqrec.assemble import assemble
from seqrec.config import flag_table, resolve_config
from seqrec.eval.evaluate import evaluate
from seqrec.train.step import TrainStep


def bench_config(args, extra: dict):
    """The run config of the benchmark's settings (model options the model lacks are skipped)."""
    table = flag_table(args.model)
    flags = {"dataset": args.dataset, "model": args.model, "maxlen": args.maxlen, "hidden_units": args.hidden,
             "num_heads": args.heads, "num_blocks": args.blocks, "attn_impl": args.attn_impl,
             "batch_size": args.batch, "loss": args.loss, "length_bucketing": args.bucket, **extra}
    return resolve_config({k: v for k, v in flags.items() if k in table or k == "model"})


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--model", default="sasrec")
    ap.add_argument("--maxlen", type=int, default=200)
    ap.add_argument("--hidden", type=int, default=50)
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--loss", default="bce")
    ap.add_argument("--attn_impl", default="sdpa")
    ap.add_argument("--bucket", type=int, default=32, help="length bucketing (0 = plain shuffle, like pmixer)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval_repeats", type=int, default=5, help="evaluation times are the median of this many calls")
    ap.add_argument("--extra", default="", help="more settings by flag name, k=v,k=v (e.g. mhc=True)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    extra = {}
    for kv in filter(None, args.extra.split(",")):
        k, v = kv.split("=")
        extra[k] = type(eval(v))(eval(v)) if v not in ("true", "false") else v == "true"
    cfg = bench_config(args, extra)
    parts = assemble(cfg, prepare_if_missing=False, log=None)
    ds, b, loo = parts.dataset, parts.batcher, parts.dataset.leave_one_out()
    train_step = TrainStep(cfg, parts, torch.device("cpu"))  # the product's own step
    model = train_step.model
    rng = np.random.default_rng(0)
    batches = []
    while len(batches) < args.steps + 3:
        batches += b.epoch_batches(b.train_users(), args.batch, rng, bucket=args.bucket)

    def step(users):
        train_step.forward_backward(train_step.batch(users, rng))
        train_step.apply()

    model.train()
    for u in batches[:3]:
        step(u)
    t0, n = time.perf_counter(), 0
    for u in batches[3 : 3 + args.steps]:
        step(u)
        n += len(u)
    train_s = time.perf_counter() - t0
    users = loo.eval_users

    def timed(protocol: str) -> float:  # median of `--eval_repeats` calls (one call is noisy)
        times = []
        for _ in range(args.eval_repeats):
            t0 = time.perf_counter()
            evaluate(model, b, users, loo.test_pos[users - 1], protocol=protocol, n_negatives=100, batch_size=1024)
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    full_s, sampled_s = timed("full"), timed("sampled")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out = {"dataset": ds.name, "model": args.model, "maxlen": args.maxlen, "hidden": args.hidden, "loss": args.loss,
           "attn_impl": args.attn_impl, "bucket": args.bucket, "extra": args.extra, "train_seq_per_s": n / train_s,
           "eval_full_s": full_s, "eval_sampled_s": sampled_s, "eval_users": len(users), "peak_rss_gib": rss}
    print(" | ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in out.items()))
    return out


if __name__ == "__main__":
    main()
