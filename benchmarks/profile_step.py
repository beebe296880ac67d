"""Profile training steps of a model with torch.profiler (op table sorted by self CPU time).

    python benchmarks/profile_step.py --dataset ml-100k --model sasrec --maxlen 200 --hidden 50
"""

import argparse

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from seqrec.assemble import assemble
from seqrec.config import flag_table, resolve_config
from seqrec.train.step import TrainStep

ap = argparse.ArgumentParser()
ap.add_argument("--dataset", default="ml-100k")
ap.add_argument("--model", default="sasrec")
ap.add_argument("--maxlen", type=int, default=200)
ap.add_argument("--hidden", type=int, default=50)
ap.add_argument("--loss", default="bce")
ap.add_argument("--attn_impl", default="manual")
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--rows", type=int, default=25)
a = ap.parse_args()
torch.set_num_threads(a.threads)
flags = {"dataset": a.dataset, "model": a.model, "maxlen": a.maxlen, "hidden_units": a.hidden, "num_heads": 1,
         "attn_impl": a.attn_impl, "loss": a.loss}
cfg = resolve_config({k: v for k, v in flags.items() if k in flag_table(a.model) or k == "model"})
parts = assemble(cfg, prepare_if_missing=False, log=None)
train_step = TrainStep(cfg, parts, torch.device("cpu"))  # the product's own step
rng = np.random.default_rng(0)
b = parts.batcher
batches = b.epoch_batches(b.train_users(), 128, rng, bucket=32)


def step(u):
    train_step.forward_backward(train_step.batch(u, rng))
    train_step.apply()


for u in batches[:2]:
    step(u)
with profile(activities=[ProfilerActivity.CPU]) as p:
    for u in batches[2:8]:
        step(u)
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))
