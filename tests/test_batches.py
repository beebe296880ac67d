"""Vectorised batch building against a per-user reference."""

import numpy as np
import torch

from seqrec.data.splits import leave_one_out
from seqrec.data.batches import NegativeSampler, SequenceBatcher, user_time_scale


def _toy(seed=0, n_users=20, n_items=30):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 12, size=n_users)
    offsets = np.zeros(n_users + 2, dtype=np.int64)
    np.cumsum(lengths, out=offsets[2:])
    item = rng.integers(1, n_items + 1, size=offsets[-1])
    ts = np.concatenate([np.cumsum(rng.integers(0, 5, size=n)) + 1000 for n in lengths]).astype(np.int64)
    return item, ts, offsets, n_items


def test_train_batch_matches_reference():
    item, ts, offsets, _ = _toy()
    loo = leave_one_out(offsets)
    b = SequenceBatcher(item, ts, offsets, loo.train_end, maxlen=5)
    users = b.train_users()
    batch = b.train_batch(users)
    L = batch["items"].shape[1]
    assert L == min(5, max(loo.train_end[u - 1] - offsets[u] - 1 for u in users))
    for row, u in enumerate(users):
        s, e = offsets[u], loo.train_end[u - 1]
        seq, tseq = item[s:e], ts[s:e]
        inp, tgt, tin = seq[:-1][-L:], seq[1:][-L:], tseq[:-1][-L:]
        pad = L - len(inp)
        assert batch["items"][row].tolist() == [0] * pad + inp.tolist()
        assert batch["targets"][row].tolist() == [0] * pad + tgt.tolist()
        assert batch["timestamps"][row].tolist() == [0] * pad + tin.tolist()
        assert batch["next_timestamps"][row].tolist() == [0] * pad + tseq[1:][-L:].tolist()


def test_windows_are_trimmed_to_the_longest_sequence():
    offsets = np.array([0, 0, 3, 5])
    item = np.arange(1, 6)
    b = SequenceBatcher(item, np.arange(5), offsets, np.array([3, 5]), maxlen=50)
    batch = b.train_batch(np.array([1, 2]))
    assert batch["items"].tolist() == [[1, 2], [0, 4]]
    assert batch["targets"].tolist() == [[2, 3], [0, 5]]


def test_eval_batch_and_history():
    item, ts, offsets, _ = _toy(1)
    loo = leave_one_out(offsets)
    b = SequenceBatcher(item, ts, offsets, loo.train_end, maxlen=4)
    users = loo.eval_users
    pos = loo.test_pos[users - 1]
    batch = b.eval_batch(users, pos)
    hoff, hitems = b.history(users, pos)
    L = batch["items"].shape[1]
    for row, u in enumerate(users):
        s = offsets[u]
        seq = item[s : pos[row]]
        pad = max(0, L - len(seq))
        assert batch["items"][row].tolist() == [0] * pad + seq[-L:].tolist()
        # the last input's "next" timestamp is the target's
        assert batch["next_timestamps"][row, -1] == ts[pos[row]]
        assert hitems[hoff[row] : hoff[row + 1]].tolist() == seq.tolist()


def test_eval_next_time_modes_change_only_the_last_next_timestamp():
    import pytest

    from seqrec.api import sequence_batch

    item, ts, offsets, _ = _toy(2)
    loo = leave_one_out(offsets)
    users = loo.eval_users
    pos = loo.test_pos[users - 1]
    batches = {m: SequenceBatcher(item, ts, offsets, loo.train_end, maxlen=4, next_time=m).eval_batch(users, pos)
               for m in ("target", "last", "median")}
    for m in ("last", "median"):  # everything but the last column's "next" time is the same
        for k, v in batches["target"].items():
            if k == "next_timestamps":
                assert torch.equal(v[:, :-1], batches[m][k][:, :-1])
            else:
                assert torch.equal(v, batches[m][k])
    for row, u in enumerate(users):
        s, t = offsets[u], pos[row]
        assert batches["target"]["next_timestamps"][row, -1] == ts[t]
        assert batches["last"]["next_timestamps"][row, -1] == ts[t - 1]
        gaps = np.diff(ts[s:t])
        median = np.median(gaps) if len(gaps) else 0.0
        assert batches["median"]["next_timestamps"][row, -1] == ts[t - 1] + int(np.round(median))
    # "median" is what the recommendation API assumes for the same histories
    api = sequence_batch(item, ts, offsets[users], pos, maxlen=4, users=users, with_time=True)
    assert torch.equal(api["next_timestamps"][:, -1], batches["median"]["next_timestamps"][:, -1])
    # training batches are untouched by the option
    tr = [SequenceBatcher(item, ts, offsets, loo.train_end, 4, next_time=m).train_batch(users) for m in ("target", "last")]
    assert all(torch.equal(tr[0][k], tr[1][k]) for k in tr[0])
    with pytest.raises(ValueError, match="next_time must be one of target, last, median"):
        SequenceBatcher(item, ts, offsets, loo.train_end, 4, next_time="future")


def test_user_time_scale_uses_train_part_only():
    offsets = np.array([0, 0, 4, 7])
    ts = np.array([0, 10, 10, 13, 5, 5, 5], dtype=np.int64)
    train_end = np.array([4, 5])
    scale = user_time_scale(offsets, ts, train_end)
    assert scale.tolist() == [1, 3, 1]  # user 2 has no non-zero gap in its train part
    train_end2 = np.array([2, 5])
    assert user_time_scale(offsets, ts, train_end2).tolist() == [1, 10, 1]


def test_negative_sampler_avoids_training_items():
    item, ts, offsets, n_items = _toy(2, n_users=50, n_items=15)
    loo = leave_one_out(offsets)
    ns = NegativeSampler(item, offsets, loo.train_end, n_items)
    rng = np.random.default_rng(0)
    users = np.arange(1, 51)
    neg = ns.sample(users, (40,), rng)
    assert neg.shape == (50, 40) and neg.min() >= 1 and neg.max() <= n_items
    for r, u in enumerate(users):
        seen = set(item[offsets[u] : loo.train_end[u - 1]].tolist())
        if len(seen) < n_items - 3:
            assert not (set(neg[r].tolist()) & seen)
    # reproducible
    assert (ns.sample(users, (40,), np.random.default_rng(0)) == neg).all()
