"""The common interaction table every reader returns.

An :class:`Interactions` wraps a polars ``DataFrame`` with exactly four columns:

======== ================================ ===========================================
column   dtype                            meaning
======== ================================ ===========================================
user     Int64 or String (raw ids)        the user, as the source names it
item     Int64 or String (raw ids)        the item, as the source names it
rating   Float64 (null when absent)       explicit rating, if the source has one
timestamp Int64                           seconds since the Unix epoch
======== ================================ ===========================================

Rows keep the order of the source file. Ids are *raw* (not remapped); remapping to
contiguous integers happens in :mod:`seqrec.data.prepare`.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

COLUMNS = ("user", "item", "rating", "timestamp")


class DataFormatError(ValueError):
    """Raised when an input file does not have the expected format.

    The message always names the file, the (1-based) line number when known, and what was
    expected, e.g. ``ratings.dat, line 17: expected 4 fields separated by '::', got 3``.
    """

    def __init__(self, path: str, line: int | None, message: str):
        self.path = str(path)
        self.line = line
        self.reason = message
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Interactions:
    """A validated interaction table (see module docstring)."""

    frame: pl.DataFrame
    source: str = ""

    def __post_init__(self) -> None:
        missing = [c for c in COLUMNS if c not in self.frame.columns]
        if missing:
            raise ValueError(f"Interactions from {self.source!r} lack columns {missing}")
        if self.frame.schema["timestamp"] != pl.Int64:
            raise ValueError(
                f"Interactions from {self.source!r}: timestamp must be Int64 seconds, "
                f"got {self.frame.schema['timestamp']}"
            )
        if self.frame.columns != list(COLUMNS):
            object.__setattr__(self, "frame", self.frame.select(COLUMNS))

    @classmethod
    def from_columns(cls, user, item, timestamp, rating=None, source: str = "") -> "Interactions":
        """Build from array-likes (numpy arrays, lists, polars Series)."""
        n = len(user)
        frame = pl.DataFrame(
            {
                "user": user,
                "item": item,
                "rating": pl.Series("rating", rating, dtype=pl.Float64)
                if rating is not None
                else pl.Series("rating", [None] * n, dtype=pl.Float64),
                "timestamp": pl.Series("timestamp", timestamp).cast(pl.Int64),
            }
        )
        return cls(frame, source)

    def __len__(self) -> int:
        return self.frame.height

    @property
    def n_users(self) -> int:
        return self.frame["user"].n_unique()

    @property
    def n_items(self) -> int:
        return self.frame["item"].n_unique()

    def equals(self, other: "Interactions") -> bool:
        """Same rows in the same order (raw ids compared as strings, so Int64 vs String
        tokens of the same id are equal)."""
        a = self.frame.with_columns(pl.col("user").cast(pl.String), pl.col("item").cast(pl.String))
        b = other.frame.with_columns(pl.col("user").cast(pl.String), pl.col("item").cast(pl.String))
        return a.equals(b)

    def __repr__(self) -> str:
        return (
            f"Interactions(source={self.source!r}, rows={len(self)}, "
            f"users={self.n_users}, items={self.n_items})"
        )
