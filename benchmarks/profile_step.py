"""Profile training steps of a model with torch.profiler (op table sorted by self CPU time).

    python benchmarks/profile_step.py --dataset ml-100k --model sasrec --maxlen 200 --hidden 50
"""

import argparse

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from seqrec.data.datasets import resolve_dataset
from seqrec.models import build_model, get_model_class
from seqrec.train.batches import NegativeSampler, SequenceBatcher
from seqrec.train.losses import get_loss

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
ds = resolve_dataset(a.dataset, prepare_if_missing=False, log=None)
loo = ds.leave_one_out()
m = build_model(a.model, n_items=ds.n_items, maxlen=a.maxlen, hidden_units=a.hidden, num_heads=1, attn_impl=a.attn_impl)
b = SequenceBatcher(ds.item, ds.timestamp, ds.offsets, loo.train_end, a.maxlen, with_time=get_model_class(a.model).uses_time)
ns = NegativeSampler(ds.item, ds.offsets, loo.train_end, ds.n_items)
opt = torch.optim.Adam(m.parameters(), 1e-3)
lf = get_loss(a.loss)
rng = np.random.default_rng(0)
batches = b.epoch_batches(b.train_users(), 128, rng, bucket=32)


def step(u):
    batch = b.train_batch(u)
    batch["negatives"] = torch.from_numpy(ns.sample(u, tuple(batch["targets"].shape[1:]), rng))
    loss = lf(m, m(batch), batch["targets"], negatives=batch["negatives"])
    opt.zero_grad()
    loss.backward()
    opt.step()


for u in batches[:2]:
    step(u)
with profile(activities=[ProfilerActivity.CPU]) as p:
    for u in batches[2:8]:
        step(u)
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))
