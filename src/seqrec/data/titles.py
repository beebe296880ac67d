"""Item titles from MovieLens metadata files (for `seqrec recommend` and reports)."""

from __future__ import annotations

from pathlib import Path

import polars as pl


def read_titles(path: str | Path) -> pl.DataFrame:
    """Return a frame with columns ``raw`` (Int64 movie id) and ``title``.

    Understands ``movies.dat`` (ML-1M/10M: ``MovieID::Title::Genres``, latin-1),
    ``u.item`` (ML-100K: ``id|title|...``, latin-1) and ``movies.csv`` (ML-20M/25M/32M,
    latest-small: ``movieId,title,genres`` with a header and quoted titles).
    """
    path = Path(path)
    if path.name == "movies.csv":
        df = pl.read_csv(path, columns=["movieId", "title"], schema_overrides={"movieId": pl.Int64})
        return df.rename({"movieId": "raw"})
    # The older MovieLens files are latin-1: re-encode to UTF-8 for polars.
    data = path.read_bytes().decode("latin-1").encode("utf-8")
    if path.name == "u.item":
        df = pl.read_csv(data, separator="|", has_header=False, quote_char=None, columns=[0, 1])
        return df.select(pl.col(df.columns[0]).cast(pl.Int64).alias("raw"), pl.col(df.columns[1]).alias("title"))
    lines = pl.Series("line", [x for x in data.decode("utf-8").splitlines() if x])
    parts = lines.str.split_exact("::", 2).struct.rename_fields(["raw", "title", "genres"]).struct.unnest()
    return parts.select(pl.col("raw").cast(pl.Int64), pl.col("title"))
