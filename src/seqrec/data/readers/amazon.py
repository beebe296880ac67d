"""Per-user sequence files of the Amazon review data sets (Beauty, Sports, ...).

Two aligned files, one line per user, fields separated by whitespace::

    <Name>_item_org_rank.txt:   user item item item ...     (in time order)
    <Name>_time_org_rank.txt:   user ts   ts   ts   ...     (Unix seconds)

Line *k* of both files must name the same user and have the same number of fields; a
mismatch raises :class:`DataFormatError` naming the line. Timestamps are Unix seconds
(the review day for these versions, so ties are common); fractional timestamps are
rounded down. Ids are Int64 when every id is a canonical integer (as in these files),
else strings. Ratings are null. Rows come out user by user, in line order.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from seqrec.data.interactions import DataFormatError, Interactions
from seqrec.data.readers._check import check_not_empty, float_to_seconds, ids_maybe_int

ITEM_SUFFIX = "_item_org_rank.txt"
TIME_SUFFIX = "_time_org_rank.txt"
_TOKENS = r"\S+"


def amazon_pair(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(item_file, time_file)`` for either file of an Amazon pair."""
    path = Path(path)
    name = path.name
    if name.endswith(ITEM_SUFFIX):
        return path, path.with_name(name[: -len(ITEM_SUFFIX)] + TIME_SUFFIX)
    if name.endswith(TIME_SUFFIX):
        return path.with_name(name[: -len(TIME_SUFFIX)] + ITEM_SUFFIX), path
    raise ValueError(
        f"{path}: not an Amazon sequence file (expected a name ending in {ITEM_SUFFIX!r} "
        f"or {TIME_SUFFIX!r})"
    )


def _token_lines(path: Path, what: str) -> pl.Series:
    """One list of whitespace-separated tokens per line (line k at index k-1)."""
    check_not_empty(path, f"one line per user: 'user {what} {what} ...'")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataFormatError(str(path), line, "expected UTF-8 text, got undecodable bytes") from None
    lines = text.split("\n")
    while lines and lines[-1].strip() == "":  # tolerate trailing blank lines
        lines.pop()
    tokens = pl.Series("tokens", lines, dtype=pl.String).str.extract_all(_TOKENS)
    n = tokens.list.len()
    bad = (n < 2).arg_true()
    if bad.len():
        k = int(bad[0])
        got = "a blank line" if n[k] == 0 else f"only {lines[k].strip()[:40]!r}"
        raise DataFormatError(
            str(path), k + 1, f"expected a user id followed by at least one {what}, got {got}"
        )
    return tokens


def read_amazon(
    item_path: str | os.PathLike, time_path: str | os.PathLike | None = None
) -> Interactions:
    """Read an Amazon ``*_item_org_rank.txt`` with its aligned ``*_time_org_rank.txt``.

    ``time_path`` defaults to the sibling file with ``_time_`` in place of ``_item_``.
    """
    item_path = Path(item_path)
    if time_path is None:
        item_path, time_path = amazon_pair(item_path)
    time_path = Path(time_path)
    items = _token_lines(item_path, "item")
    times = _token_lines(time_path, "timestamp")

    if items.len() != times.len():
        short, long_ = (time_path, item_path) if times.len() < items.len() else (item_path, time_path)
        k = min(items.len(), times.len()) + 1
        raise DataFormatError(
            str(short),
            k,
            f"expected a line aligned with line {k} of {long_.name} "
            f"({max(items.len(), times.len())} lines), but the file has {min(items.len(), times.len())}",
        )
    df = pl.DataFrame({"items": items, "times": times}).with_row_index("line", offset=1)
    df = df.with_columns(
        pl.col("items").list.first().alias("user"),
        pl.col("times").list.first().alias("time_user"),
        pl.col("items").list.len().alias("n_items"),
        pl.col("times").list.len().alias("n_times"),
    )
    bad = df.filter((pl.col("user") != pl.col("time_user")) | (pl.col("n_items") != pl.col("n_times")))
    if bad.height:
        row = bad.row(0, named=True)
        if row["user"] != row["time_user"]:
            msg = (
                f"expected user {row['user']!r} (as on line {row['line']} of {item_path.name}), "
                f"got {row['time_user']!r}"
            )
        else:
            msg = (
                f"expected {row['n_items'] - 1} timestamps for user {row['user']!r} "
                f"(as many as items on line {row['line']} of {item_path.name}), "
                f"got {row['n_times'] - 1}"
            )
        raise DataFormatError(str(time_path), row["line"], msg)

    long = df.select(
        "line",
        "user",
        pl.col("items").list.slice(1).alias("item"),
        pl.col("times").list.slice(1).alias("ts"),
    ).explode("item", "ts")
    ts_int = long["ts"].cast(pl.Int64, strict=False)
    if ts_int.null_count():
        ts_float = long["ts"].cast(pl.Float64, strict=False)
        not_ok = ts_float.is_null() | ~ts_float.is_finite() | (ts_float.abs() > 2.0**62)
        if not_ok.any():
            k = int(not_ok.arg_true()[0])
            raise DataFormatError(
                str(time_path),
                int(long["line"][k]),
                f"expected a numeric Unix timestamp, got {long['ts'][k]!r}",
            )
        ts_int = float_to_seconds(ts_float)
    frame = pl.DataFrame(
        {
            "user": ids_maybe_int(long["user"]),
            "item": ids_maybe_int(long["item"]),
            "rating": pl.Series("rating", [None] * long.height, dtype=pl.Float64),
            "timestamp": ts_int.alias("timestamp"),
        }
    )
    return Interactions(frame, source=str(item_path))
