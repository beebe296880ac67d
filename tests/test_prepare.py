"""k-core filtering, remapping, chronological order, splits and the dataset folder."""

import json

import numpy as np
import polars as pl
import pytest

from seqrec.data.interactions import Interactions
from seqrec.data.prepare import Recipe, kcore, prepare
from seqrec.data.splits import leave_one_out, temporal_split
from seqrec.data.store import load_dataset, save_dataset


def _inter(rows, source="t"):
    u, i, t = zip(*rows)
    return Interactions.from_columns(list(u), list(i), list(t), source=source)


def test_single_pass_vs_iterative_kcore():
    # item 9 has 2 interactions -> dropped by min_item=2? no: 2 >= 2 stays. Build a case where
    # the single pass leaves a user below threshold that the iterative filter removes.
    rows = [(1, 1, 1), (1, 2, 2), (2, 1, 3), (2, 2, 4), (3, 1, 5), (3, 3, 6)]
    frame = _inter(rows).frame
    single, log1 = kcore(frame, min_user=2, min_item=2, iterative=False)
    # item 3 (count 1) goes; user 3 keeps only (3,1): 1 interaction left but single pass keeps it
    assert sorted(single["item"].unique().to_list()) == [1, 2]
    assert 3 in single["user"].to_list()
    it, log2 = kcore(frame, min_user=2, min_item=2, iterative=True)
    assert 3 not in it["user"].to_list()
    counts_u = it.group_by("user").len()["len"].to_list()
    counts_i = it.group_by("item").len()["len"].to_list()
    assert min(counts_u) >= 2 and min(counts_i) >= 2
    assert len(log2) >= 2 and len(log1) == 1


def test_remap_contiguous_from_one_and_sorted_stable():
    rows = [(10, "b", 5), (20, "a", 1), (10, "a", 5), (10, "c", 3), (20, "b", 0)]
    p = prepare(_inter(rows))
    f = p.frame
    assert f["user"].min() == 1 and f["user"].max() == p.n_users == 2
    assert f["item"].min() == 1 and f["item"].max() == p.n_items == 3
    # user 10 appears first -> id 1; item "b" first -> id 1
    assert p.user_map.filter(pl.col("raw") == 10)["id"].item() == 1
    assert p.item_map.filter(pl.col("raw") == "b")["id"].item() == 1
    u1 = f.filter(pl.col("user") == 1)
    # chronological, ties (ts 5) keep file order: b then a
    raw_items = p.item_map.sort("id")["raw"].to_list()
    assert [raw_items[i - 1] for i in u1["item"].to_list()] == ["c", "b", "a"]
    assert u1["timestamp"].to_list() == [3, 5, 5]


def test_recipe_validation_and_empty_errors():
    with pytest.raises(ValueError, match="dedup"):
        Recipe(dedup="middle")
    with pytest.raises(ValueError, match="nothing left"):
        prepare(_inter([(1, 1, 1), (1, 2, 2)]), Recipe(min_user=5))


def test_min_rating_filters_and_refuses_sets_without_ratings():
    rated = Interactions.from_columns([1, 1, 1, 2, 2], [1, 2, 3, 1, 2], [1, 2, 3, 1, 2], rating=[5, 2, 4, 3, 4])
    out = prepare(rated, Recipe(min_rating=4, min_user=1, min_item=1))
    assert out.frame.height == 3 and out.frame["rating"].min() >= 4
    with pytest.raises(ValueError, match="rated >= 6.0; lower --min_rating"):
        prepare(rated, Recipe(min_rating=6.0, min_user=1, min_item=1))
    with pytest.raises(ValueError, match="has no ratings .*--min_rating 4 would drop every interaction"):
        prepare(_inter([(1, 1, 1), (1, 2, 2)]), Recipe(min_rating=4, min_user=1, min_item=1))


def test_dedup_keeps_first_or_last():
    rows = [(1, 1, 1), (1, 2, 2), (1, 1, 3)]
    first = prepare(_inter(rows), Recipe(dedup="first")).frame
    last = prepare(_inter(rows), Recipe(dedup="last")).frame
    assert first["timestamp"].to_list() == [1, 2]
    assert last["timestamp"].to_list() == [2, 3]


def test_leave_one_out_positions():
    # users with 5, 2, 3 interactions
    offsets = np.array([0, 0, 5, 7, 10])
    s = leave_one_out(offsets)
    assert s.train_end.tolist() == [3, 7, 8]
    assert s.valid_pos.tolist() == [3, -1, 8]
    assert s.test_pos.tolist() == [4, -1, 9]
    assert s.eval_users.tolist() == [1, 3]


def test_temporal_split_fraction_and_cold_start_report():
    user = np.array([1, 1, 1, 2, 2, 3, 3, 3, 3, 3])
    item = np.array([1, 2, 3, 1, 2, 4, 5, 1, 2, 6])
    ts = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    sp = temporal_split(user, item, ts, 0.8)
    assert sp.is_past.sum() == 8 and not sp.is_past[-2:].any()
    assert sp.cutoff_time == 9
    assert sp.stats["future_only_users"] == 0
    assert sp.stats["future_only_items"] == 1  # item 6
    sp2 = temporal_split(user, item, ts, 0.5)
    assert sp2.stats["future_only_users"] == 1  # user 3 only after t=5
    with pytest.raises(ValueError, match="fraction"):
        temporal_split(user, item, ts, 1.5)


def test_temporal_split_is_by_time_not_by_row():
    user = np.array([1, 1, 2, 2])
    ts = np.array([100, 400, 200, 300])
    sp = temporal_split(user, np.array([1, 2, 3, 4]), ts, 0.5)
    assert sp.is_past.tolist() == [True, False, True, False]


def test_dataset_folder_roundtrip(tmp_path):
    rows = [(u, (u * 7 + k) % 13 + 1, 1000 * u + k) for u in range(1, 30) for k in range(6)]
    p = prepare(_inter(rows))
    ds = save_dataset(tmp_path / "ds", p, name="toy", source={"reader": "test"})
    ds2 = load_dataset(tmp_path / "ds")
    assert isinstance(ds2.item, np.memmap)
    assert ds2.n_users == 29 and ds2.n_items == p.n_items and len(ds2) == len(rows)
    np.testing.assert_array_equal(ds2.item, p.frame["item"].to_numpy())
    np.testing.assert_array_equal(ds2.user, p.frame["user"].to_numpy())
    items, times = ds2.sequence(3)
    assert (np.diff(times) >= 0).all() and len(items) == 6
    m = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert m["statistics"]["interactions"] == len(rows) and set(m["checksums"]) == {
        "item.npy", "timestamp.npy", "rating.npy", "offsets.npy"}
    ds2.verify()
    # no temp folders left behind
    assert [x.name for x in tmp_path.iterdir()] == ["ds"]


def test_dataset_folder_detects_corruption_and_missing(tmp_path):
    rows = [(u, k + 1, k) for u in range(1, 5) for k in range(4)]
    save_dataset(tmp_path / "ds", prepare(_inter(rows)), name="toy", source={})
    arr = np.load(tmp_path / "ds" / "item.npy")
    arr[0] += 1
    np.save(tmp_path / "ds" / "item.npy", arr)
    with pytest.raises(ValueError, match="checksum"):
        load_dataset(tmp_path / "ds").verify()
    with pytest.raises(FileNotFoundError, match="seqrec prepare"):
        load_dataset(tmp_path / "nope")


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    rows = [(u, k + 1, k) for u in range(1, 5) for k in range(4)]
    p = prepare(_inter(rows))
    import seqrec.data.store as store

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "file_md5", boom)
    with pytest.raises(RuntimeError):
        save_dataset(tmp_path / "ds", p, name="toy", source={})
    assert list(tmp_path.iterdir()) == []


def test_temporal_eval_split_periods_and_targets():
    from seqrec.data.splits import temporal_eval_split

    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 15, size=40)
    offsets = np.zeros(42, dtype=np.int64)
    np.cumsum(lengths, out=offsets[2:])
    ts = np.concatenate([np.sort(rng.integers(0, 10_000, size=n)) for n in lengths]).astype(np.int64)
    sp = temporal_eval_split(offsets, ts, fraction=0.8, valid_fraction=0.5)
    n = len(ts)
    order = np.argsort(ts, kind="stable")
    period = np.empty(n, dtype=int)
    n_past = round(0.8 * n)
    n_valid_end = n_past + round(0.5 * (n - n_past))
    period[order[:n_past]], period[order[n_past:n_valid_end]], period[order[n_valid_end:]] = 0, 1, 2
    for u in range(1, 41):
        s, e = offsets[u], offsets[u + 1]
        p = period[s:e]
        assert (p[: sp.train_end[u - 1] - s] == 0).all() and (p[sp.train_end[u - 1] - s :] > 0).all()
        for users, pos, k in ((sp.valid_users, sp.valid_pos, 1), (sp.test_users, sp.test_pos, 2)):
            rows = np.flatnonzero(p == k)
            if u in users:
                assert pos[list(users).index(u)] == s + rows[0] and rows[0] > 0
            else:
                assert len(rows) == 0 or rows[0] == 0
    assert sp.stats["past_rows"] == n_past
