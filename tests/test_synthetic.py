"""Tests for seqrec.data.synthetic and the ML-32M-shaped benchmark generator."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from seqrec.data.interactions import Interactions
from seqrec.data.synthetic import EPOCH_2000, generate, generate_with_truth

ROOT = Path(__file__).resolve().parents[1]


def _arrays(inter: Interactions):
    f = inter.frame
    return f["user"].to_numpy(), f["item"].to_numpy(), f["timestamp"].to_numpy()


def test_deterministic_with_seed():
    a = generate(n_users=200, n_items=100, seed=3)
    b = generate(n_users=200, n_items=100, seed=3)
    c = generate(n_users=200, n_items=100, seed=4)
    assert a.equals(b)
    assert not a.equals(c)
    assert a.frame.equals(b.frame)


def test_schema_ids_and_counts():
    inter = generate(n_users=300, n_items=120, mean_length=20, min_length=5, seed=0)
    assert isinstance(inter, Interactions)
    f = inter.frame
    assert f.columns == ["user", "item", "rating", "timestamp"]
    assert f.schema["user"] == pl.Int64 and f.schema["item"] == pl.Int64
    assert f.schema["rating"] == pl.Float64 and f.schema["timestamp"] == pl.Int64
    assert inter.n_users == 300
    assert f["user"].min() == 1 and f["user"].max() == 300
    assert f["item"].min() >= 1 and f["item"].max() <= 120
    assert f["rating"].null_count() == 0
    assert set(f["rating"].unique().to_list()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    # mean length near the request (heavy tail makes it noisy at 300 users)
    assert 14 < len(inter) / 300 < 27
    assert f["timestamp"].min() >= EPOCH_2000


def test_order_and_timestamps():
    inter = generate(n_users=400, n_items=200, seed=1)
    u, _, ts = _arrays(inter)
    assert np.all(np.diff(u) >= 0), "users must be grouped in ascending order"
    same = u[1:] == u[:-1]
    assert np.all(np.diff(ts)[same] > 0), "per-user timestamps must increase"


def test_min_and_max_length():
    inter = generate(n_users=500, n_items=100, mean_length=8, min_length=6, seed=2, max_length=40)
    lengths = inter.frame.group_by("user").len()["len"].to_numpy()
    assert lengths.min() >= 6
    assert lengths.max() <= 40
    # heavy tail: the longest user is well above the mean
    inter2 = generate(n_users=2000, n_items=100, mean_length=30, seed=2)
    l2 = inter2.frame.group_by("user").len()["len"].to_numpy()
    assert l2.max() > 4 * l2.mean()


def test_popularity_skew():
    inter = generate(n_users=1000, n_items=500, seed=0)
    counts = np.sort(np.bincount(inter.frame["item"].to_numpy()))[::-1]
    top = counts[: 50].sum() / counts.sum()
    assert top > 0.3  # uniform would give 0.10
    pure = generate(n_users=1000, n_items=500, seed=0, p_follow=0.0)
    counts = np.sort(np.bincount(pure.frame["item"].to_numpy()))[::-1]
    assert counts[:50].sum() / counts.sum() > 0.55  # Zipf(1) over 500 items: ~0.66


def test_sequential_signal_matches_p_follow():
    for p in (0.7, 0.4):
        inter, truth = generate_with_truth(n_users=1000, n_items=500, seed=5, p_follow=p)
        u, i, _ = _arrays(inter)
        same = u[1:] == u[:-1]
        hit = truth.successor[i[:-1]] == i[1:]
        rate = hit[same].mean()
        assert abs(rate - p) < 0.03, (p, rate)
        # an order-blind baseline: probability a random next item equals the successor
        perm = np.random.default_rng(0).permutation(len(i) - 1)
        chance = (truth.successor[i[:-1]] == i[1:][perm])[same].mean()
        assert chance < 0.02
    # the truth is a permutation made of cycles: every item has one predecessor
    succ = truth.successor[1:]
    assert sorted(succ.tolist()) == list(range(1, 501))


def test_time_signal_changes_next_item_after_long_gaps():
    inter, truth = generate_with_truth(n_users=1000, n_items=500, seed=7, time_signal=True)
    u, i, ts = _arrays(inter)
    same = u[1:] == u[:-1]
    gap = np.diff(ts)
    hit = truth.successor[i[:-1]] == i[1:]
    short = same & (gap < 3600)
    long = same & (gap > 6 * 3600)
    assert abs(hit[short].mean() - 0.7) < 0.03
    assert hit[long].mean() < 0.15
    # after long gaps users land on popular items more often than within sessions
    pop = truth.popularity[i[1:]]
    assert pop[long].mean() > 1.5 * pop[short & ~hit].mean()
    # without the flag, the gap carries no information
    inter0, truth0 = generate_with_truth(n_users=1000, n_items=500, seed=7)
    u, i, ts = _arrays(inter0)
    same = u[1:] == u[:-1]
    gap = np.diff(ts)
    hit = truth0.successor[i[:-1]] == i[1:]
    assert abs(hit[same & (gap > 6 * 3600)].mean() - 0.7) < 0.05


def test_invalid_arguments():
    with pytest.raises(ValueError):
        generate(n_users=0)
    with pytest.raises(ValueError):
        generate(p_follow=1.5)
    with pytest.raises(ValueError):
        generate(min_length=5, max_length=3)


# ---- benchmarks/make_ml32m_like.py ---------------------------------------------------


def _load_bench():
    path = ROOT / "benchmarks" / "make_ml32m_like.py"
    spec = importlib.util.spec_from_file_location("make_ml32m_like", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ml32m_like_smoke(tmp_path):
    bench = _load_bench()
    out = tmp_path / "ml" / "ratings.csv"
    rows, users, items = 12_000, 150, 900
    bench.main(["--out", str(out), "--rows", str(rows), "--users", str(users),
                "--items", str(items), "--seed", "1", "--no-progress"])
    assert out.exists()
    assert not [p for p in out.parent.iterdir() if p.name != "ratings.csv"], "temp file left"
    assert out.read_text().splitlines()[0] == "userId,movieId,rating,timestamp"
    df = pl.read_csv(out)
    assert df.columns == ["userId", "movieId", "rating", "timestamp"]
    assert df.height == rows
    per_user = df.group_by("userId").len()
    assert per_user.height == users and per_user["len"].min() >= 20
    assert df["movieId"].n_unique() == items
    assert df["movieId"].min() >= 1
    ratings = set(df["rating"].unique().to_list())
    assert ratings <= {x / 2 for x in range(1, 11)}
    assert 0.5 in ratings or 1.5 in ratings or 3.5 in ratings  # half stars occur
    assert df["timestamp"].min() >= 788_918_400 and df["timestamp"].max() < 1_704_067_200
    # sorted by user then timestamp
    assert df.equals(df.sort(["userId", "timestamp"], maintain_order=True))
    # ratings formatted like MovieLens ("4.0", "3.5")
    line = out.read_text().splitlines()[1].split(",")
    assert len(line[2]) == 3 and line[2][1] == "."
    dups = df.height - df.select("userId", "movieId").unique().height
    assert dups <= rows * 0.001
    # same seed, same bytes
    out2 = tmp_path / "again.csv"
    bench.main(["--out", str(out2), "--rows", str(rows), "--users", str(users),
                "--items", str(items), "--seed", "1", "--no-progress"])
    assert out.read_bytes() == out2.read_bytes()


def test_ml32m_like_rejects_impossible_sizes(tmp_path):
    bench = _load_bench()
    with pytest.raises(SystemExit):
        bench.main(["--out", str(tmp_path / "r.csv"), "--rows", "100", "--users", "10",
                    "--items", "50", "--no-progress"])
