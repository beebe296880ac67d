"""The data commands end to end: prepare, info, export and the RecBole round trip."""

import numpy as np
import polars as pl
import pytest

from seqrec.cli import main
from seqrec.data.datasets import prepare_dataset
from seqrec.data.export import export_recbole, to_interactions
from seqrec.data.prepare import Recipe
from seqrec.data.readers import read_recbole_inter
from seqrec.data.store import load_dataset


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("prepare", "info", "export", "train", "evaluate"):
        assert cmd in out


def test_prepare_synthetic_info_export(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["prepare", "synthetic", "--users", "300", "--items", "120", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    ds = load_dataset(out)
    assert f"{ds.stats['users']} users / {ds.stats['items']} items / {ds.stats['interactions']} interactions" in text
    assert main(["info", str(out)]) == 0
    assert "leave-one-out" in capsys.readouterr().out
    assert main(["export", str(out), "--format", "recbole", "--out", str(tmp_path / "rb"), "--name", "syn"]) == 0
    files = sorted(p.name for p in (tmp_path / "rb" / "syn").iterdir())
    assert files == [".seqrec-export.json", "syn.inter", "syn_future.inter", "syn_past.inter"]
    header = (tmp_path / "rb" / "syn" / "syn.inter").read_text().splitlines()[0]
    assert header == "user_id:token\titem_id:token\trating:float\ttimestamp:float"


def _dataset(tmp_path, n_users=200, n_items=80, seed=0):
    return prepare_dataset("synthetic", out=tmp_path / "ds", log=None,
                           synthetic_kwargs={"n_users": n_users, "n_items": n_items, "seed": seed})


@pytest.mark.parametrize("ids", ["mapped", "raw"])
def test_recbole_round_trip(tmp_path, ids):
    ds = _dataset(tmp_path)
    paths = export_recbole(ds, tmp_path / "rb", ids=ids, log=None)
    back = read_recbole_inter(paths[0])
    assert back.equals(to_interactions(ds, ids))
    past, future = read_recbole_inter(paths[1]), read_recbole_inter(paths[2])
    assert len(past) + len(future) == len(ds)
    assert len(past) == round(0.8 * len(ds))
    assert past.frame["timestamp"].max() <= future.frame["timestamp"].min()
    # re-preparing the exported mapped table reproduces the dataset arrays exactly
    if ids == "mapped":
        ds2 = prepare_dataset("copy", raw=paths[0], out=tmp_path / "ds2", recipe=Recipe(), log=None)
        np.testing.assert_array_equal(ds2.item, ds.item)
        np.testing.assert_array_equal(ds2.timestamp, ds.timestamp)
        np.testing.assert_array_equal(ds2.offsets, ds.offsets)


def test_ml1m_recipe_on_synthetic_ratings_dat(tmp_path):
    """The ML-1M recipe: counts taken once, items (and users) with < 5 ratings dropped."""
    rng = np.random.default_rng(3)
    rows = []
    for u in range(1, 61):
        items = rng.choice(np.arange(1, 400), size=rng.integers(20, 60), replace=False,
                           p=np.r_[np.full(50, 0.015), np.full(349, 0.25 / 349)])
        rows += [(u, int(i), int(rng.integers(1, 6)), 978300000 + int(rng.integers(0, 10**6))) for i in items]
    raw = tmp_path / "ratings.dat"
    raw.write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows))
    ds = prepare_dataset("ml-1m", raw=raw, out=tmp_path / "ml1m", log=None)
    counts = {}
    for _, i, _, _ in rows:
        counts[i] = counts.get(i, 0) + 1
    keep = {i for i, c in counts.items() if c >= 5}
    assert ds.stats["items"] == len(keep)
    assert ds.stats["interactions"] == sum(1 for r in rows if r[1] in keep)
    assert ds.stats["users"] == 60
    raw_items = set(ds.item_map()["raw"].to_list())
    assert raw_items == keep


def test_bad_input_exits_with_line_number(tmp_path, capsys):
    bad = tmp_path / "u.data"
    bad.write_text("1\t2\t3\t881250949\n1,3,4,881250950\n")
    assert main(["prepare", "ml-100k", "--raw", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "u.data" in err and "line 2" in err
    assert not (tmp_path / "o").exists()


def test_unknown_dataset_is_a_clear_error(capsys):
    assert main(["info", "no-such-set"]) == 2
    assert "unknown dataset" in capsys.readouterr().err


# -- real data (skipped without ../shared/data) ---------------------------------------------

def test_prepare_ml100k_real(shared_file, tmp_path, capsys):
    raw = shared_file("ml-100k/u.data").parent
    assert main(["prepare", "ml-100k", "--raw", str(raw), "--out", str(tmp_path / "d")]) == 0
    assert "943 users / 1682 items / 100000 interactions" in capsys.readouterr().out
    ds = load_dataset(tmp_path / "d")
    assert ds.manifest["has_titles"]
    titles = ds.item_map()
    assert titles.filter(pl.col("raw") == 1)["title"].item() == "Toy Story (1995)"


@pytest.mark.parametrize("name,expected", [("beauty", (22363, 12101, 198502)), ("sports", (35598, 18357, 296337))])
def test_prepare_amazon_real(shared_file, tmp_path, name, expected):
    folder = shared_file("amazon/Beauty_item_org_rank.txt").parent
    ds = prepare_dataset(name, raw=folder, out=tmp_path / name, log=None)
    assert (ds.stats["users"], ds.stats["items"], ds.stats["interactions"]) == expected


def test_prepare_latest_small_and_ml1m_sample(shared_file, tmp_path):
    small = prepare_dataset("ml-latest-small", raw=shared_file("ml-latest-small/ratings.csv").parent,
                            out=tmp_path / "s", log=None)
    assert small.stats["users"] == 671 and small.stats["interactions"] > 90000
    sample = prepare_dataset("ml-1m", raw=shared_file("ml-1m-sample/ratings.dat").parent, out=tmp_path / "m", log=None)
    assert sample.stats["users"] == 70 and sample.stats["interactions"] < 10000
    assert sample.manifest["has_titles"]


def test_prepare_amazon_from_either_file_of_the_pair(tmp_path):
    # Users 1-3, items 5-8; the time file's fields are timestamps, never items.
    (tmp_path / "Toy_item_org_rank.txt").write_text("1 5 6 7\n2 6 7\n3 8 5 6\n")
    (tmp_path / "Toy_time_org_rank.txt").write_text("1 100 100 200\n2 50 60\n3 10 20 30\n")
    items = {}
    for given in ("Toy_item_org_rank.txt", "Toy_time_org_rank.txt", ""):
        ds = prepare_dataset("toy", raw=tmp_path / given, fmt="amazon", out=tmp_path / f"o{len(items)}", log=None,
                             recipe=Recipe(min_user=1, min_item=1))
        items[given] = sorted(ds.item_map()["raw"].to_list())
    assert items["Toy_item_org_rank.txt"] == items["Toy_time_org_rank.txt"] == [5, 6, 7, 8]
    with pytest.raises(ValueError, match="not an Amazon sequence file"):
        prepare_dataset("toy", raw=tmp_path / "Toy_item_org_rank.txt.bak", fmt="amazon", out=tmp_path / "x", log=None)


def test_format_option_overrides_a_known_dataset_reader(tmp_path, capsys):
    # A RecBole ml-1m.inter prepared under the known name ml-1m: --format says how to read it.
    inter = tmp_path / "ml-1m.inter"
    rows = [(u, i, 4.0, 978300000 + 60 * (u * 10 + i)) for u in range(1, 7) for i in range(1, 6)]
    inter.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                     + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    assert main(["prepare", "ml-1m", "--raw", str(inter), "--format", "recbole", "--out", str(tmp_path / "d"),
                 "--min_user", "1", "--min_item", "1"]) == 0
    assert "6 users / 5 items / 30 interactions" in capsys.readouterr().out


def test_prepare_synthetic_defaults_are_the_generators(tmp_path, capsys):
    # `seqrec prepare synthetic` and `seqrec train --dataset synthetic` (which prepares it on
    # the fly without options) must build the same set.
    import inspect

    from seqrec.data.synthetic import generate

    assert main(["prepare", "synthetic", "--out", str(tmp_path / "cli")]) == 0
    on_the_fly = prepare_dataset("synthetic", out=tmp_path / "api", log=None)
    assert load_dataset(tmp_path / "cli").stats == on_the_fly.stats
    defaults = inspect.signature(generate).parameters
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for opt, param in (("users", "n_users"), ("items", "n_items"), ("seed", "seed")):
        assert f"synthetic: {'number of ' + opt if opt != 'seed' else 'seed'} (default: {defaults[param].default})" \
            in help_text
