"""Batch recommendations: every user (or a listed set) to a Parquet table, equal to the API's
one-by-one answers, chunk size irrelevant, errors before anything is written."""

import polars as pl
import pytest

import seqrec.api
from seqrec.cli import main
from seqrec.config import resolve_config
from seqrec.data.datasets import prepare_dataset
from seqrec.train.trainer import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("batch")
    ds = prepare_dataset("synthetic", out=base / "ds", log=None,
                         synthetic_kwargs={"n_users": 90, "n_items": 60, "seed": 3, "max_length": 20})
    cfg = resolve_config({"model": "tisasrec", "dataset": str(ds.path), "train_dir": str(base / "run"), "maxlen": 10,
                          "hidden_units": 16, "num_heads": 1, "num_epochs": 1, "eval_negatives": 5, "progress": False,
                          "device": "cpu"})
    train(cfg, log=None)
    return base / "run"


def test_all_users_to_parquet_equal_the_api(run, tmp_path):
    out = tmp_path / "recs.parquet"
    assert main(["recommend", str(run), "--all", "--k", "5", "--out", str(out), "--device", "cpu"]) == 0
    table = pl.read_parquet(out)
    assert table.columns == ["user", "rank", "item", "score"] and table.height == 90 * 5
    rec = seqrec.api.load(run)
    assert table["user"].n_unique() == rec.n_users
    # chunks run in history-length order; rows come back in the users' order
    assert table["user"].unique(maintain_order=True).to_list() == rec.dataset.user_map().sort("id")["raw"].to_list()
    for raw in table["user"].unique().to_list()[:12]:
        mine = table.filter(pl.col("user") == raw).sort("rank")
        api = rec.recommend(raw, k=5)
        assert mine["item"].to_list() == [r["item"] for r in api]
        assert mine["score"].to_list() == pytest.approx([r["score"] for r in api], abs=1e-5)
        assert mine["rank"].to_list() == [1, 2, 3, 4, 5] and mine["score"].is_sorted(descending=True)
    small = rec.recommend_table(k=5, chunk_size=7)  # the chunk size never changes the answer
    assert small["item"].to_list() == table["item"].to_list()


def test_listed_users_and_errors(run, tmp_path, capsys):
    rec = seqrec.api.load(run)
    users = [rec.dataset.user_map()["raw"][i] for i in (4, 0, 17)]
    listed = tmp_path / "users.txt"
    listed.write_text("\n".join(map(str, users)) + "\n\n")
    out = tmp_path / "some.parquet"
    assert main(["recommend", str(run), "--users", str(listed), "--k", "3", "--out", str(out)]) == 0
    table = pl.read_parquet(out)
    assert table["user"].unique(maintain_order=True).to_list() == users and table.height == 9
    listed.write_text("nobody\n")
    bad = tmp_path / "bad.parquet"
    assert main(["recommend", str(run), "--users", str(listed), "--out", str(bad)]) == 2
    assert "nobody" in capsys.readouterr().err and not bad.exists()
    assert main(["recommend", str(run), "--all", "--out", str(tmp_path / "x.csv")]) == 2
    assert "Parquet" in capsys.readouterr().err
    assert main(["recommend", str(run), "--all"]) == 2
    assert "--out" in capsys.readouterr().err
