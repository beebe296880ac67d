"""Readers: synthetic files of every format, malformed input, real data when present."""

from __future__ import annotations

import time

import polars as pl
import pytest

from seqrec.data.interactions import DataFormatError, Interactions
from seqrec.data.readers import (
    READERS,
    detect_format,
    read_amazon,
    read_any,
    read_ml100k,
    read_ml1m,
    read_ml_csv,
    read_recbole_inter,
    read_sasrec_text,
    write_recbole_inter,
)
from seqrec.data.readers import _check
from seqrec.data.readers._check import ids_maybe_int


def write(tmp_path, name, text):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def rows(x: Interactions):
    return x.frame.rows()


# ----------------------------------------------------------------------------- good files


def test_ml1m(tmp_path):
    p = write(tmp_path, "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::914::4::978301968\n")
    x = read_ml1m(p)
    assert rows(x) == [(1, 1193, 5.0, 978300760), (1, 661, 3.0, 978302109), (2, 914, 4.0, 978301968)]
    assert x.frame.schema == pl.Schema(
        {"user": pl.Int64, "item": pl.Int64, "rating": pl.Float64, "timestamp": pl.Int64}
    )


def test_ml1m_crlf_no_final_newline_and_trailing_blank_lines(tmp_path):
    p = write(tmp_path, "ratings.dat", b"1::10::5::100\r\n2::20::3::200\r\n\r\n\n")
    assert rows(read_ml1m(p)) == [(1, 10, 5.0, 100), (2, 20, 3.0, 200)]
    p = write(tmp_path, "r2.dat", b"1::10::5::100\n2::20::3::200")
    assert len(read_ml1m(p)) == 2


def test_ml100k(tmp_path):
    p = write(tmp_path, "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    assert rows(read_ml100k(p)) == [(196, 242, 3.0, 881250949), (186, 302, 3.0, 891717742)]


def test_ml_csv(tmp_path):
    p = write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n")
    assert rows(read_ml_csv(p)) == [(1, 31, 2.5, 1260759144), (1, 1029, 3.0, 1260759179)]


def test_recbole_fields_by_name(tmp_path):
    text = (
        "timestamp:float\titem_id:token\tgenre:token_seq\tuser_id:token\n"
        "978300760.0\t0000031852\tComedy Drama\tA1\n"
        "978300761.9\t12\t\tA2\n"
    )
    x = read_recbole_inter(write(tmp_path, "d.inter", text))
    assert x.frame.schema["user"] == pl.String and x.frame.schema["item"] == pl.String
    # leading zeros kept, no rating field -> null, float timestamps rounded down
    assert rows(x) == [("A1", "0000031852", None, 978300760), ("A2", "12", None, 978300761)]


def test_recbole_integer_tokens_become_int64(tmp_path):
    text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t5\t4\t10\n2\t6\t\t11\n"
    x = read_recbole_inter(write(tmp_path, "d.inter", text))
    assert x.frame.schema["user"] == pl.Int64 and x.frame.schema["item"] == pl.Int64
    assert rows(x) == [(1, 5, 4.0, 10), (2, 6, None, 11)]


def test_recbole_round_trip_synthetic(tmp_path):
    x = Interactions.from_columns(
        user=["u1", "u2", "007", 'q"x'],
        item=["a", "b", "c", "d\te"],
        timestamp=[5, 3, 1_700_000_000, -1],
        rating=[1.0, None, 3.5, 0.30000000000000004],
    )
    path = tmp_path / "out" / "x.inter"
    write_recbole_inter(x, path)
    header = path.read_text(encoding="utf-8").splitlines()[0]
    assert header == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    y = read_recbole_inter(path)
    assert y.equals(x)
    assert [p.name for p in path.parent.iterdir()] == ["x.inter"]  # no temp file left


def test_recbole_write_int_ids_and_custom_names(tmp_path):
    x = Interactions.from_columns(user=[3, 1], item=[10, 20], timestamp=[1, 2])
    path = write_recbole_inter(x, tmp_path / "x.inter", name_fields={"user": "uid"})
    lines = path.read_text().splitlines()
    assert lines == ["uid:token\titem_id:token\trating:float\ttimestamp:float", "3\t10\t\t1", "1\t20\t\t2"]
    y = read_recbole_inter(path, user_field="uid")
    assert y.equals(x) and y.frame.schema["user"] == pl.Int64


def test_recbole_write_rejects_null_ids_and_leaves_nothing(tmp_path):
    x = Interactions.from_columns(user=["a", ""], item=["b", "c"], timestamp=[1, 2])
    with pytest.raises(ValueError, match="empty user"):
        write_recbole_inter(x, tmp_path / "x.inter")
    assert list(tmp_path.iterdir()) == []


def test_sasrec_positions(tmp_path):
    p = write(tmp_path, "ml-1m.txt", "1 10\n1 11\n2 10\n1 12\n2 13\n")
    x = read_sasrec_text(p)
    assert rows(x) == [(1, 10, None, 0), (1, 11, None, 1), (2, 10, None, 0), (1, 12, None, 2), (2, 13, None, 1)]


def test_sasrec_with_timestamps(tmp_path):
    p = write(tmp_path, "d.txt", "1 10\n1 11\n2 10\n")
    t = write(tmp_path, "d_ts.txt", "100\n200\n50\n")
    assert [r[3] for r in rows(read_sasrec_text(p, timestamps=t))] == [100, 200, 50]


def test_amazon(tmp_path):
    items = write(tmp_path, "Toy_item_org_rank.txt", "1 5 6 7\n2 6\n3 8 5\n")
    write(tmp_path, "Toy_time_org_rank.txt", "1 100 100 200\n2 50\n3 10.0 20.7\n")
    x = read_amazon(items)
    assert rows(x) == [
        (1, 5, None, 100), (1, 6, None, 100), (1, 7, None, 200),
        (2, 6, None, 50), (3, 8, None, 10), (3, 5, None, 20),
    ]  # fmt: skip


def test_ids_maybe_int():
    assert ids_maybe_int(pl.Series(["1", "-2", "0"])).dtype == pl.Int64
    for bad in (["1", "01"], ["+1"], ["-0"], ["1", "a"], ["99999999999999999999"], [" 1"]):
        assert ids_maybe_int(pl.Series(bad)).dtype == pl.String, bad


# ----------------------------------------------------------------------------- bad input

ML100K_OK = "1\t10\t5\t100\n2\t20\t3\t200\n"
CSV_HEAD = "userId,movieId,rating,timestamp\n"
INTER_HEAD = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"

BAD = [
    # (reader, file name, content, line, expectation fragment)
    (read_ml100k, "u.data", "1,10,5,100\n2,20,3,200\n", 1, "expected 4 fields separated by '\\t'"),
    (read_ml100k, "u.data", ML100K_OK + "3\t30\t4\n4\t40\t2\t400\n", 3, "got 3 field(s)"),
    (read_ml100k, "u.data", ML100K_OK + "3\t30\t4\t12:00\n", 3, "expected an integer for timestamp, got '12:00'"),
    (read_ml100k, "u.data", "x1\t10\t5\t100\n", 1, "expected an integer for user id, got 'x1'"),
    (read_ml100k, "u.data", ML100K_OK + "3\t30\t4", 3, "got 3 field(s)"),  # truncated last line
    (read_ml100k, "u.data", "1\t10\t5\t100\n\n2\t20\t3\t200\n", 2, "blank line"),
    (read_ml100k, "u.data", "", 1, "empty file"),
    (read_ml100k, "u.data", "\n\n", 1, "empty file"),
    (read_ml100k, "u.data", ML100K_OK + "3\t30\t4\t300\t9\n", 3, "got 5 field(s)"),
    (read_ml100k, "u.data", ML100K_OK + "3\t30\tnan\t300\n", 3, "expected a number for rating"),
    (read_ml1m, "ratings.dat", "1::10::5::100\n1::11::5:101\n", 2, "expected 4 fields separated by '::'"),
    (read_ml1m, "ratings.dat", "1::10::5::100\n1:x:11::5::101\n", 2, "separated by '::'"),
    (read_ml1m, "ratings.dat", "1::10::5::100\n2::20::3::abc\n", 2, "expected an integer for timestamp"),
    (read_ml1m, "ratings.dat", "1::10::5::100\n2::20::3::200::\n", 2, "got 5 field(s)"),
    (read_ml1m, "ratings.dat", "1::10::5::100\n2::20::3", 2, "got 3 field(s)"),
    (read_ml1m, "ratings.dat", "1\t10\t5\t100\n", 1, "expected 4 fields separated by '::'"),
    (read_ml_csv, "ratings.csv", "user,item,rating,ts\n1,2,3,4\n", 1, "expected the header 'userId,movieId,rating,timestamp'"),
    (read_ml_csv, "ratings.csv", "1,31,2.5,1260759144\n", 1, "expected the header"),
    (read_ml_csv, "ratings.csv", CSV_HEAD + "1,31,2.5,1\n1,32,x,2\n", 3, "expected a number for rating, got 'x'"),
    (read_ml_csv, "ratings.csv", CSV_HEAD + "1,31,2.5,1\n1,32,2\n", 3, "got 3 field(s)"),
    (read_ml_csv, "ratings.csv", CSV_HEAD + "1;31;2.5;1\n", 2, "separated by ','"),
    (read_ml_csv, "ratings.csv", CSV_HEAD, 2, "no data lines"),
    (read_ml_csv, "ratings.csv", "", 1, "empty file"),
    (read_recbole_inter, "x.inter", "user_id:token\titem_id:token\trating:float\n1\t2\t3\n", 1, "timestamp field ('timestamp') is required for sequential data"),
    (read_recbole_inter, "x.inter", "user_id\titem_id:token\ttimestamp:float\n", 1, "expected a RecBole header"),
    (read_recbole_inter, "x.inter", "item_id:token\ttimestamp:float\n1\t2\n", 1, "expected a user field 'user_id'"),
    (read_recbole_inter, "x.inter", INTER_HEAD + "1\t2\t3\t4\n1\t3\t\tyesterday\n", 3, "expected a number for timestamp:float, got 'yesterday'"),
    (read_recbole_inter, "x.inter", INTER_HEAD + "1\t2\t3\t4\n1\t3\t4\n", 3, "got 3 field(s)"),
    (read_recbole_inter, "x.inter", INTER_HEAD + "1\t2\t3\t4\n\t3\t4\t5\n", 3, "expected a non-empty value for user_id:token"),
    (read_recbole_inter, "x.inter", INTER_HEAD + "1,2,3,4\n", 2, "expected 4 fields separated by '\\t'"),
    (read_recbole_inter, "x.inter", "", 1, "empty file"),
    (read_sasrec_text, "s.txt", "1 10\n1 11 5\n", 2, "expected 2 fields separated by ' '"),
    (read_sasrec_text, "s.txt", "1 10\n1 abc\n", 2, "expected an integer for item id, got 'abc'"),
    (read_sasrec_text, "s.txt", "1\t10\n", 1, "expected 2 fields"),
]


@pytest.mark.parametrize("scan", ["bulk", "python"])
@pytest.mark.parametrize("reader,name,content,line,expected", BAD, ids=[f"{b[0].__name__}-{i}" for i, b in enumerate(BAD)])
def test_bad_input(tmp_path, monkeypatch, scan, reader, name, content, line, expected):
    if scan == "python":  # the line-by-line fallback must give the same answer
        monkeypatch.setattr(_check, "_scan_polars", lambda scan: False)
    path = write(tmp_path, name, content)
    with pytest.raises(DataFormatError) as info:
        reader(path)
    message = str(info.value)
    assert name in message
    assert f"line {line}:" in message, message
    assert expected in message, message
    assert info.value.line == line


def test_ml1m_latin1_garbage_reported(tmp_path):
    path = write(tmp_path, "ratings.dat", b"1::10::5::100\n2::2\xe90::3::200\n")
    with pytest.raises(DataFormatError, match=r"ratings.dat, line 2: expected an integer for item id"):
        read_ml1m(path)


def test_sasrec_timestamps_misaligned(tmp_path):
    p = write(tmp_path, "d.txt", "1 10\n1 11\n2 10\n")
    t = write(tmp_path, "d_ts.txt", "100\n200\n")
    with pytest.raises(DataFormatError, match=r"d_ts.txt, line 3: expected a timestamp aligned with line 3 of d.txt"):
        read_sasrec_text(p, timestamps=t)
    t = write(tmp_path, "d_ts.txt", "100\n200\n300\n400\n")
    with pytest.raises(DataFormatError, match=r"d_ts.txt, line 4: expected 3 lines"):
        read_sasrec_text(p, timestamps=t)
    t = write(tmp_path, "d_ts.txt", "100\nnoon\n300\n")
    with pytest.raises(DataFormatError, match=r"d_ts.txt, line 2: expected an integer for timestamp"):
        read_sasrec_text(p, timestamps=t)


AMAZON_BAD = [
    ("1 5 6\n2 7\n", "1 10 20\n3 30\n", "Toy_time_org_rank.txt, line 2: expected user '2'"),
    ("1 5 6\n2 7 8\n", "1 10 20\n2 30\n", "Toy_time_org_rank.txt, line 2: expected 2 timestamps for user '2'"),
    ("1 5 6\n2\n", "1 10 20\n2\n", "Toy_item_org_rank.txt, line 2: expected a user id followed by at least one item"),
    ("1 5 6\n\n2 7\n", "1 10 20\n\n2 30\n", "Toy_item_org_rank.txt, line 2: expected a user id followed by at least one item, got a blank line"),
    ("1 5 6\n2 7\n3 8\n", "1 10 20\n2 30\n", "Toy_time_org_rank.txt, line 3: expected a line aligned with line 3 of Toy_item_org_rank.txt"),
    ("1 5 6\n2 7\n", "1 10 20\n2 30\n3 40\n", "Toy_item_org_rank.txt, line 3: expected a line aligned"),
    ("1 5 6\n2 7\n", "1 10 20\n2 May-3\n", "Toy_time_org_rank.txt, line 2: expected a numeric Unix timestamp, got 'May-3'"),
    ("", "", "Toy_item_org_rank.txt, line 1: empty file"),
]


@pytest.mark.parametrize("items,times,expected", AMAZON_BAD)
def test_amazon_bad(tmp_path, items, times, expected):
    write(tmp_path, "Toy_item_org_rank.txt", items)
    write(tmp_path, "Toy_time_org_rank.txt", times)
    with pytest.raises(DataFormatError) as info:
        read_amazon(tmp_path / "Toy_item_org_rank.txt", tmp_path / "Toy_time_org_rank.txt")
    assert expected in str(info.value), str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_ml100k(tmp_path / "nope.data")


# ----------------------------------------------------------------------------- read_any


def test_read_any_detection(tmp_path):
    (tmp_path / "a").mkdir()
    write(tmp_path / "a", "ratings.dat", "1::10::5::100\n")
    write(tmp_path, "u.data", ML100K_OK)
    write(tmp_path, "my.csv", CSV_HEAD + "1,2,3.5,4\n")
    write(tmp_path, "x.inter", INTER_HEAD + "1\t2\t3\t4\n")
    write(tmp_path, "seq.txt", "1 2\n")
    write(tmp_path, "odd.name", "1::10::5::100\n")
    write(tmp_path, "Toy_item_org_rank.txt", "1 5\n")
    write(tmp_path, "Toy_time_org_rank.txt", "1 9\n")
    assert detect_format(tmp_path / "a") == ("ml1m", tmp_path / "a" / "ratings.dat")
    assert detect_format(tmp_path / "u.data")[0] == "ml100k"
    assert detect_format(tmp_path / "my.csv")[0] == "ml_csv"
    assert detect_format(tmp_path / "x.inter")[0] == "recbole"
    assert detect_format(tmp_path / "seq.txt")[0] == "sasrec"
    assert detect_format(tmp_path / "odd.name")[0] == "ml1m"
    assert detect_format(tmp_path / "Toy_time_org_rank.txt") == ("amazon", tmp_path / "Toy_item_org_rank.txt")
    assert len(read_any(tmp_path / "a")) == 1
    assert rows(read_any(tmp_path / "Toy_time_org_rank.txt")) == [(1, 5, None, 9)]
    assert rows(read_any(tmp_path / "seq.txt", fmt="sasrec")) == [(1, 2, None, 0)]
    with pytest.raises(ValueError, match="expected exactly one"):
        detect_format(tmp_path)  # several candidates
    with pytest.raises(ValueError, match="unknown format"):
        read_any(tmp_path / "u.data", fmt="nope")
    assert set(READERS) == {"ml1m", "ml100k", "ml_csv", "recbole", "sasrec", "amazon"}


# ----------------------------------------------------------------------------- real data


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def test_real_ml100k(shared_file):
    x, dt = timed(read_ml100k, shared_file("ml-100k/u.data"))
    assert (len(x), x.n_users, x.n_items) == (100_000, 943, 1_682)
    assert x.frame["user"].value_counts()["count"].min() >= 20
    assert dt < 5


def test_real_ml_latest_small(shared_file):
    x, dt = timed(read_ml_csv, shared_file("ml-latest-small/ratings.csv"))
    # its README: 100004 ratings by 671 users; 9066 of the 9125 movies have a rating
    assert (len(x), x.n_users, x.n_items) == (100_004, 671, 9_066)
    assert set(x.frame["rating"].unique().to_list()) <= {i / 2 for i in range(1, 11)}
    assert dt < 5


def test_real_ml1m_sample(shared_file):
    x = read_ml1m(shared_file("ml-1m-sample/ratings.dat"))
    assert len(x) == 10_000
    assert x.frame["user"].min() == 1 and x.frame["user"].max() == 70
    assert x.frame.row(0) == (1, 1193, 5.0, 978300760)


@pytest.mark.parametrize(
    "name,users,items,n", [("Beauty", 22_363, 12_101, 198_502), ("Sports", 35_598, 18_357, 296_337)]
)
def test_real_amazon(shared_file, name, users, items, n):
    item_path = shared_file(f"amazon/{name}_item_org_rank.txt")
    shared_file(f"amazon/{name}_time_org_rank.txt")
    x, dt = timed(read_amazon, item_path)
    assert (x.n_users, x.n_items, len(x)) == (users, items, n)
    assert x.frame["timestamp"].min() > 800_000_000  # Unix seconds (1995+)
    # chronological per user
    back = x.frame.select((pl.col("timestamp").diff().over("user") < 0).any()).item()
    assert not back
    assert dt < 5


def test_real_recbole_round_trip(shared_file, tmp_path):
    x = read_ml100k(shared_file("ml-100k/u.data"))
    path = write_recbole_inter(x, tmp_path / "ml-100k.inter")
    y = read_recbole_inter(path)
    assert y.equals(x)
    assert y.frame.schema == x.frame.schema
