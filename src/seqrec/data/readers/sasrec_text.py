"""The plain-text format of the SASRec reference code (e.g. ``ml-1m.txt``).

One interaction per line, ``user item`` separated by a single space, integer ids, lines
of a user in chronological order (users are usually contiguous blocks, but need not be).
The format has no timestamps and no ratings:

* without ``timestamps`` the timestamp of a row is its **position within its user's
  sequence** (0, 1, 2, ... in file order). That keeps the order exact, but time-aware
  models then see a constant gap of one "second" between consecutive events;
* with ``timestamps`` (a file with one integer Unix timestamp per line, aligned line by
  line with the interaction file) those are used instead;
* ratings are null.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from seqrec.data.interactions import DataFormatError, Interactions
from seqrec.data.readers._check import Field, LineFormat, read_checked

SASREC_FORMAT = LineFormat(" ", (Field("user id", "int"), Field("item id", "int")))
TIMESTAMP_FORMAT = LineFormat(" ", (Field("timestamp", "int"),))


def read_sasrec_text(
    path: str | os.PathLike, timestamps: str | os.PathLike | None = None
) -> Interactions:
    """Read a SASRec ``user item`` text file (see the module docstring)."""
    path = Path(path)

    def read() -> pl.DataFrame:
        return pl.read_csv(
            path,
            has_header=False,
            separator=" ",
            schema={"user": pl.Int64, "item": pl.Int64},
            quote_char=None,
        )

    df = read_checked(path, SASREC_FORMAT, read, ("user", "item"))
    if timestamps is None:
        ts = df.select(pl.int_range(pl.len(), dtype=pl.Int64).over("user")).to_series()
    else:
        ts_path = Path(timestamps)

        def read_ts() -> pl.DataFrame:
            return pl.read_csv(
                ts_path,
                has_header=False,
                separator=" ",
                schema={"timestamp": pl.Int64},
                quote_char=None,
            )

        ts = read_checked(ts_path, TIMESTAMP_FORMAT, read_ts, ("timestamp",))["timestamp"]
        if ts.len() < df.height:
            raise DataFormatError(
                str(ts_path),
                ts.len() + 1,
                f"expected a timestamp aligned with line {ts.len() + 1} of {path.name} "
                f"({df.height} lines), but the file ends",
            )
        if ts.len() > df.height:
            raise DataFormatError(
                str(ts_path),
                df.height + 1,
                f"expected {df.height} lines (one per line of {path.name}), got {ts.len()}",
            )
    frame = pl.DataFrame(
        {
            "user": df["user"],
            "item": df["item"],
            "rating": pl.Series("rating", [None] * df.height, dtype=pl.Float64),
            "timestamp": ts.alias("timestamp"),
        }
    )
    return Interactions(frame, source=str(path))
