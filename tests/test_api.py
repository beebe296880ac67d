"""seqrec.api: top-k from a saved run, by user or by history; errors; titles on ML-100K."""

import numpy as np
import pytest
import torch

import seqrec.api as api
from seqrec.data.datasets import prepare_dataset
from seqrec.assemble import assemble
from seqrec.config import resolve_config
from seqrec.train.trainer import train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "ds"
    return prepare_dataset("synthetic", out=out, log=None,
                           synthetic_kwargs={"n_users": 150, "n_items": 50, "seed": 5, "mean_length": 14, "max_length": 40})


def _run(dataset, run_dir, model, loss):
    torch.set_num_threads(1)
    cfg = resolve_config({"dataset": str(dataset.path), "train_dir": str(run_dir), "model": model, "no_mhc": True,
                          "maxlen": 20, "hidden_units": 32, "num_heads": 2, "batch_size": 64, "num_epochs": 1,
                          "warmup_steps": 0, "lr": 0.005, "progress": False, "eval_negatives": 0, "patience": 0,
                          "device": "cpu", **({"time_unit": "day"} if model == "tisasrec" else {})})
    train(cfg, log=lambda *_: None)
    return run_dir


@pytest.fixture(scope="module")
def recommenders(dataset, tmp_path_factory):
    base = tmp_path_factory.mktemp("api_runs")
    return {"sasrec": api.load(_run(dataset, base / "sasrec", "sasrec", "ce")),
            "tisasrec": api.load(_run(dataset, base / "tisasrec", "tisasrec", "bce"))}


def _raw_user(rec, uid):
    return rec.dataset.user_map().sort("id")["raw"][uid - 1]


def _manual_batch(ds, uid, maxlen, with_time):
    """The model input for the item after user uid's whole history, built independently."""
    items, ts = (np.array(a, dtype=np.int64) for a in ds.sequence(uid))
    it, tt = items[-maxlen:], ts[-maxlen:]
    batch = {"items": torch.from_numpy(it)[None], "users": torch.tensor([uid])}
    if with_time:
        gaps = np.diff(ts)
        nxt = np.append(tt[1:], tt[-1] + (int(round(np.median(gaps))) if len(gaps) else 0))
        batch.update(timestamps=torch.from_numpy(tt)[None], next_timestamps=torch.from_numpy(nxt)[None],
                     time_scale=torch.tensor([int(gaps[gaps > 0].min()) if (gaps > 0).any() else 1]))
    return batch, items


@pytest.mark.parametrize("name", ["sasrec", "tisasrec"])
def test_top_k_equals_a_manual_argsort_of_predict(recommenders, name):
    rec = recommenders[name]
    ds = rec.dataset
    item_raw = dict(zip(*(ds.item_map()[c].to_list() for c in ("id", "raw"))))
    for uid in (1, 7, 42, ds.n_users):
        out = rec.recommend(user=_raw_user(rec, uid), k=10)
        batch, history = _manual_batch(ds, uid, rec.maxlen, rec.uses_time)
        with torch.no_grad():
            scores = rec.model.predict(batch)[0].clone()
        scores[0] = -np.inf
        scores[torch.from_numpy(history)] = -np.inf
        order = torch.argsort(scores, descending=True)[:10]
        assert [r["item_id"] for r in out] == order.tolist()
        assert np.allclose([r["score"] for r in out], scores[order].numpy(), atol=1e-5)
        assert [r["rank"] for r in out] == list(range(1, 11))
        assert all(r["item"] == item_raw[r["item_id"]] and r["title"] is None for r in out)
        got = [r["item_id"] for r in out]
        assert 0 not in got and not set(got) & set(history.tolist())
        s = [r["score"] for r in out]
        assert s == sorted(s, reverse=True)


def test_user_and_history_paths_agree(recommenders):
    rec = recommenders["tisasrec"]
    ds = rec.dataset
    for uid in (3, 10, 99):
        items, ts = ds.sequence(uid)
        raw_items = [rec._items.raw_by_id[i] for i in items]
        by_user = rec.recommend(user=_raw_user(rec, uid), k=8)
        by_history = rec.recommend(history=raw_items, timestamps=[int(t) for t in ts], k=8)
        assert [r["item"] for r in by_user] == [r["item"] for r in by_history]
        assert np.allclose([r["score"] for r in by_user], [r["score"] for r in by_history], atol=1e-5)


def test_raw_user_ids_as_int_or_str(recommenders):
    rec = recommenders["sasrec"]
    raw = _raw_user(rec, 5)
    assert rec.recommend(user=raw, k=5) == rec.recommend(user=str(raw), k=5)
    assert rec.recommend(user=np.int64(raw), k=5) == rec.recommend(user=raw, k=5)


def test_recommend_batch_matches_single_calls(recommenders):
    rec = recommenders["tisasrec"]
    users = [_raw_user(rec, u) for u in (1, 2, 3, 50, 51, 120, 150)]
    batched = rec.recommend_batch(users, k=6, chunk_size=3)  # chunks mix short and long histories
    assert len(batched) == len(users)
    for u, got in zip(users, batched):
        one = rec.recommend(user=u, k=6)
        assert [r["item_id"] for r in got] == [r["item_id"] for r in one]
        assert np.allclose([r["score"] for r in got], [r["score"] for r in one], atol=1e-5)


def test_unknown_user_and_items_are_clear_errors(recommenders):
    rec = recommenders["sasrec"]
    with pytest.raises(ValueError, match=r"user 99999 is not in dataset synthetic \(150 users; raw ids"):
        rec.recommend(user=99999)
    with pytest.raises(KeyError):  # also a KeyError (a failed lookup)
        rec.recommend(user="not-a-user")
    known = rec._items.raw_by_id[1]
    with pytest.raises(ValueError, match=r"items 99999, 'zzz' are not in dataset synthetic") as err:
        rec.recommend(history=[known, 99999, "zzz"])
    assert str(known) + "," not in str(err.value).split("(")[0]  # only the unknown ones are listed
    with pytest.raises(ValueError, match="users 123456, 654321 are not"):
        rec.recommend_batch([_raw_user(rec, 1), 123456, 654321])


def test_argument_errors(recommenders):
    rec = recommenders["tisasrec"]
    items = [rec._items.raw_by_id[i] for i in (1, 2, 3)]
    with pytest.raises(ValueError, match="3 history items"):
        rec.recommend(history=items, timestamps=[1, 2])
    with pytest.raises(ValueError, match="non-decreasing"):
        rec.recommend(history=items, timestamps=[3, 2, 1])
    with pytest.raises(ValueError, match="either user= .* or history="):
        rec.recommend()
    with pytest.raises(ValueError, match="either user="):
        rec.recommend(user=_raw_user(rec, 1), history=items)
    with pytest.raises(ValueError, match="empty"):
        rec.recommend(history=[])
    with pytest.raises(ValueError, match="k must be"):
        rec.recommend(history=items, timestamps=[1, 2, 3], k=0)


def test_time_aware_model_without_timestamps_warns(recommenders):
    rec = recommenders["tisasrec"]
    items = [rec._items.raw_by_id[i] for i in (4, 5, 6)]
    with pytest.warns(UserWarning, match="no timestamps"):
        out = rec.recommend(history=items, k=5)
    assert len(out) == 5
    # equal one-day spacing ending now: the same as passing those timestamps
    same = rec.recommend(history=items, timestamps=[0, 86_400, 172_800], k=5)
    assert [r["item"] for r in out] == [r["item"] for r in same]


def test_exclusion_and_k_larger_than_the_catalogue(recommenders):
    rec = recommenders["sasrec"]
    raw = _raw_user(rec, 1)
    n_seen = len(set(rec.dataset.sequence(1)[0].tolist()))
    out = rec.recommend(user=raw, k=10_000)
    assert len(out) == rec.n_items - n_seen  # every unseen item, never padding
    every = rec.recommend(user=raw, k=10_000, exclude_seen=False)
    assert len(every) == rec.n_items and {r["item_id"] for r in every} == set(range(1, rec.n_items + 1))


def test_titles_on_real_movielens_100k(shared_file, tmp_path):
    raw = shared_file("ml-100k/u.data").parent
    ds = prepare_dataset("ml-100k", raw=raw, out=tmp_path / "ml100k", log=None)
    torch.manual_seed(0)
    cfg = resolve_config({"model": "sasrec", "maxlen": 20, "hidden_units": 16, "num_heads": 1})
    model = assemble(cfg, ds).model
    rec = api.Recommender(cfg, ds, model, torch.device("cpu"))  # an untrained model: titles only
    assert rec.has_titles
    assert rec.item_titles([1, "50"]) == ["Toy Story (1995)", "Star Wars (1977)"]
    out = rec.recommend(user=196, k=5)
    assert len(out) == 5 and all(isinstance(r["title"], str) and r["title"] for r in out)
    assert all(r["title"] == rec.item_titles([r["item"]])[0] for r in out)
    with pytest.raises(ValueError, match=r"^user 99999 is not in dataset ml-100k \(943 users; raw ids 1\.\.943\)$"):
        rec.recommend(user=99999)


def test_sequence_batch_time_features():
    # two histories in flat arrays: [0:4] with gaps 10, 0, 30 and [4:5] with a single item
    item = np.array([3, 1, 2, 5, 4])
    ts = np.array([100, 110, 110, 140, 7])
    b = api.sequence_batch(item, ts, np.array([0, 4]), np.array([4, 5]), maxlen=3, users=np.array([1, 2]),
                           with_time=True)
    assert b["items"].tolist() == [[1, 2, 5], [0, 0, 4]]  # last maxlen, right-aligned
    assert b["timestamps"].tolist() == [[110, 110, 140], [0, 0, 7]]
    # next item's time; after the last one: last + median gap (10), or the last time itself
    assert b["next_timestamps"].tolist() == [[110, 140, 150], [0, 0, 7]]
    assert b["time_scale"].tolist() == [10, 1]  # smallest non-zero gap of the whole history
    assert set(api.sequence_batch(item, ts, np.array([0]), np.array([4]), 3, np.array([0]), False)) == {"items", "users"}


def test_string_raw_ids(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    rows += [f"u{u}\titem{rng.integers(0, 30)}\t4\t{1000 + 100 * j}" for u in range(20) for j in range(8)]
    (tmp_path / "s.inter").write_text("\n".join(rows) + "\n")
    ds = prepare_dataset("strs", raw=tmp_path / "s.inter", out=tmp_path / "ds", log=None)
    cfg = resolve_config({"model": "sasrec", "maxlen": 10, "hidden_units": 8, "num_heads": 1})
    rec = api.Recommender(cfg, ds, assemble(cfg, ds).model, torch.device("cpu"))
    out = rec.recommend(user="u3", k=3)
    assert len(out) == 3 and all(isinstance(r["item"], str) and r["item"].startswith("item") for r in out)
    with pytest.raises(ValueError, match=r"user 3 is not in dataset strs \(20 users; raw ids such as 'u0'"):
        rec.recommend(user=3)
