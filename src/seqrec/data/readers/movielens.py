"""MovieLens rating files (GroupLens releases).

==================== ====================== ==========================================
reader               file                   line format
==================== ====================== ==========================================
:func:`read_ml1m`    ``ratings.dat``        ``UserID::MovieID::Rating::Timestamp``
                     (ML-1M, also ML-10M)
:func:`read_ml100k`  ``u.data``             ``user \\t item \\t rating \\t timestamp``
:func:`read_ml_csv`  ``ratings.csv``        header ``userId,movieId,rating,timestamp``
                     (ML-20M/25M/32M,
                     ml-latest(-small))
==================== ====================== ==========================================

All three return :class:`~seqrec.data.interactions.Interactions` with Int64 user and
item ids (the raw MovieLens ids), Float64 ratings and Int64 Unix-second timestamps, in
file order. Reading is done by polars with a fixed schema; a malformed file raises
:class:`~seqrec.data.interactions.DataFormatError` naming the first bad line.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from seqrec.data.interactions import DataFormatError, Interactions
from seqrec.data.readers._check import Field, LineFormat, check_not_empty, first_line, read_checked

_ML_FIELDS = (
    Field("user id", "int"),
    Field("item id", "int"),
    Field("rating", "float"),
    Field("timestamp", "int"),
)

ML1M_FORMAT = LineFormat("::", _ML_FIELDS, encoding="latin-1")
ML100K_FORMAT = LineFormat("\t", _ML_FIELDS)
ML_CSV_FORMAT = LineFormat(",", _ML_FIELDS, header_lines=1)
ML_CSV_HEADER = "userId,movieId,rating,timestamp"

_SCHEMA = {"user": pl.Int64, "item": pl.Int64, "rating": pl.Float64, "timestamp": pl.Int64}
_REQUIRED = ("user", "item", "rating", "timestamp")


def read_ml1m(path: str | os.PathLike) -> Interactions:
    """Read ML-1M (or ML-10M) ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``.

    polars has no multi-character separator, so the file is parsed with ``:`` as the
    separator into 7 columns; columns 1, 3 and 5 (between the two colons) must be empty.
    The data is ASCII; any non-UTF-8 byte (the movie titles of ML-1M are latin-1, the
    ratings are not) is reported as a bad line.
    """
    path = Path(path)
    names = ["user", "_a", "item", "_b", "rating", "_c", "timestamp"]
    schema = {n: (_SCHEMA[n] if n in _SCHEMA else pl.String) for n in names}

    def read() -> pl.DataFrame:
        return pl.read_csv(
            path,
            has_header=False,
            separator=":",
            schema=schema,
            quote_char=None,
            encoding="utf8-lossy",
        )

    def gaps_empty(df: pl.DataFrame) -> bool:
        return all(df[c].null_count() == df.height for c in ("_a", "_b", "_c"))

    df = read_checked(path, ML1M_FORMAT, read, _REQUIRED, ("rating",), gaps_empty)
    return Interactions(df.select(_REQUIRED), source=str(path))


def read_ml100k(path: str | os.PathLike) -> Interactions:
    """Read ML-100K ``u.data``: tab-separated ``user item rating timestamp``, no header."""
    path = Path(path)

    def read() -> pl.DataFrame:
        return pl.read_csv(path, has_header=False, separator="\t", schema=_SCHEMA, quote_char=None)

    df = read_checked(path, ML100K_FORMAT, read, _REQUIRED, ("rating",))
    return Interactions(df, source=str(path))


def read_ml_csv(path: str | os.PathLike) -> Interactions:
    """Read a ``ratings.csv`` of ML-20M/25M/32M or ml-latest(-small).

    The first line must be exactly ``userId,movieId,rating,timestamp``. Ratings are
    half-stars (Float64). ML-32M (32,000,204 rows) reads in a few seconds, ~1 GB of RAM
    for the result.
    """
    path = Path(path)
    check_not_empty(path, f"a header {ML_CSV_HEADER!r} then lines of {ML_CSV_FORMAT.describe()}")
    header = first_line(path)
    if header.replace(" ", "") != ML_CSV_HEADER:
        raise DataFormatError(
            str(path), 1, f"expected the header {ML_CSV_HEADER!r}, got {header[:80]!r}"
        )

    def read() -> pl.DataFrame:
        return pl.read_csv(
            path, has_header=False, skip_lines=1, separator=",", schema=_SCHEMA, quote_char=None
        )

    df = read_checked(path, ML_CSV_FORMAT, read, _REQUIRED, ("rating",))
    return Interactions(df, source=str(path))
