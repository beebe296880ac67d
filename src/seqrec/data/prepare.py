"""Preprocessing: k-core filtering, chronological ordering and contiguous id remapping.

The output of :func:`prepare` is a :class:`Prepared` table: one row per interaction, sorted
by user then timestamp (stable: ties keep the source file's order), with integer ids
``1..n_users`` and ``1..n_items`` (0 is reserved for padding) and the two mappings back to
the raw ids.

Id order: users and items are numbered in order of first appearance in the (filtered) source
file, as the SASRec data script does; the mappings are saved so nothing depends on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from .interactions import Interactions


@dataclass(frozen=True)
class Recipe:
    """How raw interactions become a dataset.

    ``min_user``/``min_item``: keep users (items) with at least this many interactions.
    ``iterative=False`` is the SASRec recipe: counts are taken once on the input and both
    filters applied in a single pass. ``iterative=True`` repeats until every remaining user
    and item satisfies its threshold (a true k-core).
    ``min_rating``: drop interactions rated below it (None keeps all; implicit feedback).
    ``dedup``: ``None`` keeps repeated (user, item) pairs; ``"first"``/``"last"`` keeps one.
    """

    min_user: int = 0
    min_item: int = 0
    iterative: bool = False
    min_rating: float | None = None
    dedup: str | None = None

    def __post_init__(self) -> None:
        if self.min_user < 0 or self.min_item < 0:
            raise ValueError("min_user and min_item must be >= 0")
        if self.dedup not in (None, "first", "last"):
            raise ValueError(f"dedup must be None, 'first' or 'last', got {self.dedup!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Prepared:
    """A remapped, chronologically ordered interaction table.

    ``frame`` columns: ``user`` (Int32, 1..n_users), ``item`` (Int32, 1..n_items),
    ``rating`` (Float32, NaN when absent), ``timestamp`` (Int64 seconds); sorted by
    (user, timestamp, source order). ``user_map``/``item_map``: columns ``id`` (Int32) and
    ``raw`` (the source's id, Int64 or String), ordered by ``id``.
    """

    frame: pl.DataFrame
    user_map: pl.DataFrame
    item_map: pl.DataFrame
    recipe: Recipe
    filter_log: list = field(default_factory=list)

    @property
    def n_users(self) -> int:
        return self.user_map.height

    @property
    def n_items(self) -> int:
        return self.item_map.height

    def __len__(self) -> int:
        return self.frame.height


def kcore(frame: pl.DataFrame, min_user: int, min_item: int, iterative: bool) -> tuple[pl.DataFrame, list]:
    """Filter ``frame`` (columns user, item, ...) by interaction counts.

    Returns the filtered frame (original row order kept) and a log of
    ``(pass, rows, users, items)`` after each pass.
    """
    log: list = []
    if min_user <= 1 and min_item <= 1:
        return frame, log
    passes = 0
    while True:
        passes += 1
        before = frame.height
        conds = []
        if min_user > 1:
            conds.append(pl.len().over("user") >= min_user)
        if min_item > 1:
            conds.append(pl.len().over("item") >= min_item)
        # Both conditions are evaluated on the same (pre-filter) counts: a single pass.
        frame = frame.filter(pl.all_horizontal(conds))
        log.append(
            {"pass": passes, "rows": frame.height, "users": frame["user"].n_unique(), "items": frame["item"].n_unique()}
        )
        if not iterative or frame.height == before:
            break
    return frame, log


def _remap(frame: pl.DataFrame, col: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Number the distinct values of ``col`` 1..n in order of first appearance."""
    mapping = (
        frame.select(pl.col(col).unique(maintain_order=True).alias("raw"))
        .with_row_index("id", offset=1)
        .with_columns(pl.col("id").cast(pl.Int32))
        .select("id", "raw")
    )
    joined = frame.join(mapping.rename({"raw": col, "id": f"{col}_id"}), on=col, how="left", maintain_order="left")
    return joined, mapping


def prepare(interactions: Interactions, recipe: Recipe = Recipe()) -> Prepared:
    """Filter, remap and sort ``interactions`` following ``recipe``."""
    frame = interactions.frame.with_row_index("_row")
    if frame.height == 0:
        raise ValueError(f"{interactions.source or 'input'}: no interactions to prepare")
    if recipe.min_rating is not None:
        if frame["rating"].fill_nan(None).is_null().all():
            raise ValueError(f"{interactions.source or 'input'}: has no ratings (implicit feedback), "
                             f"so --min_rating {recipe.min_rating} would drop every interaction; leave it out")
        frame = frame.filter(pl.col("rating") >= recipe.min_rating)
        if frame.height == 0:
            raise ValueError(f"{interactions.source or 'input'}: no interaction is rated >= {recipe.min_rating}; "
                             "lower --min_rating")
    if recipe.dedup is not None:
        frame = frame.sort(["user", "item", "timestamp", "_row"]).unique(
            subset=["user", "item"], keep=recipe.dedup, maintain_order=True
        ).sort("_row")
    frame, log = kcore(frame, recipe.min_user, recipe.min_item, recipe.iterative)
    if frame.height == 0:
        raise ValueError(
            f"{interactions.source or 'input'}: nothing left after filtering with {recipe}; "
            "lower --min_user/--min_item"
        )
    frame, user_map = _remap(frame, "user")
    frame, item_map = _remap(frame, "item")
    out = (
        frame.select(
            pl.col("user_id").alias("user"),
            pl.col("item_id").alias("item"),
            pl.col("rating").fill_null(float("nan")).cast(pl.Float32),
            pl.col("timestamp"),
            pl.col("_row"),
        )
        .sort(["user", "timestamp", "_row"])
        .drop("_row")
    )
    return Prepared(out, user_map, item_map, recipe, log)


def statistics(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, n_users: int, n_items: int) -> dict:
    """Summary statistics of a prepared table (plain Python numbers, JSON-ready)."""
    n = int(len(item))
    lengths = np.bincount(user, minlength=n_users + 1)[1:] if n else np.zeros(n_users, dtype=np.int64)
    stats = {
        "users": int(n_users),
        "items": int(n_items),
        "interactions": n,
        "density": n / max(1, n_users * n_items),
        "seq_len_mean": float(lengths.mean()) if n_users else 0.0,
        "seq_len_median": float(np.median(lengths)) if n_users else 0.0,
        "seq_len_min": int(lengths.min()) if n_users else 0,
        "seq_len_max": int(lengths.max()) if n_users else 0,
    }
    if n:
        stats["time_min"] = int(timestamp.min())
        stats["time_max"] = int(timestamp.max())
    return stats
