"""A prepared dataset on disk: a folder with a manifest and memory-mapped arrays.

Layout::

    <folder>/
      manifest.json      name, source, recipe, statistics, md5 of every array, created, version
      item.npy           int32 [N]   item id per interaction (1..n_items)
      timestamp.npy      int64 [N]   seconds
      rating.npy         float32 [N] NaN when the source has no ratings
      offsets.npy        int64 [n_users + 2]; user u's rows are offsets[u]:offsets[u+1] (u=0 empty)
      user_map.parquet   id (int32), raw (source id)
      item_map.parquet   id (int32), raw (source id) [, title]

Rows are sorted by user then time, so a user's sequence is one contiguous slice (CSR).
Everything is written into a temporary folder and renamed when complete.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl

from .. import __version__
from ..utils.io import atomic_dir, file_md5
from .prepare import Prepared, statistics
from .splits import (EvalSplit, LeaveOneOut, TemporalSplit, leave_one_out, loo_eval_split, loo_refit_split,
                     temporal_eval_split, temporal_split)

MANIFEST = "manifest.json"
ARRAYS = ("item", "timestamp", "rating", "offsets")
FORMAT_VERSION = 1


def save_dataset(
    folder: str | Path,
    prepared: Prepared,
    *,
    name: str,
    source: dict,
    item_titles: pl.DataFrame | None = None,
) -> "SeqDataset":
    """Write ``prepared`` to ``folder`` atomically and return it loaded.

    ``source``: provenance (reader, path, md5 of the raw file, URL...).
    ``item_titles``: optional frame with columns ``raw`` and ``title`` joined onto the item map.
    """
    folder = Path(folder)
    frame = prepared.frame
    user = frame["user"].to_numpy().astype(np.int32, copy=False)
    item = frame["item"].to_numpy().astype(np.int32, copy=False)
    ts = frame["timestamp"].to_numpy().astype(np.int64, copy=False)
    rating = frame["rating"].to_numpy().astype(np.float32, copy=False)
    counts = np.bincount(user, minlength=prepared.n_users + 1)
    offsets = np.zeros(prepared.n_users + 2, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    item_map = prepared.item_map
    if item_titles is not None and item_titles.height:
        titles = item_titles.select(pl.col("raw").cast(item_map.schema["raw"], strict=False), pl.col("title"))
        titles = titles.unique(subset="raw", keep="first")
        item_map = item_map.join(titles, on="raw", how="left", maintain_order="left")
    stats = statistics(user, item, ts, prepared.n_users, prepared.n_items)
    with atomic_dir(folder, MANIFEST) as tmp:
        arrays = {"item": item, "timestamp": ts, "rating": rating, "offsets": offsets}
        for key, arr in arrays.items():
            np.save(tmp / f"{key}.npy", np.ascontiguousarray(arr))
        prepared.user_map.write_parquet(tmp / "user_map.parquet")
        item_map.write_parquet(tmp / "item_map.parquet")
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seqrec_version": __version__,
            "source": source,
            "recipe": prepared.recipe.to_dict(),
            "filter_log": prepared.filter_log,
            "statistics": stats,
            "has_ratings": bool(np.isfinite(rating).any()) if len(rating) else False,
            "has_titles": "title" in item_map.columns,
            "checksums": {f"{k}.npy": file_md5(tmp / f"{k}.npy") for k in arrays},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return load_dataset(folder)


@dataclass
class SeqDataset:
    """A loaded prepared dataset (arrays are read-only memory maps)."""

    path: Path
    manifest: dict
    item: np.ndarray
    timestamp: np.ndarray
    rating: np.ndarray
    offsets: np.ndarray

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 2

    @property
    def n_items(self) -> int:
        return int(self.manifest["statistics"]["items"])

    @property
    def stats(self) -> dict:
        return self.manifest["statistics"]

    def __len__(self) -> int:
        return len(self.item)

    @cached_property
    def lengths(self) -> np.ndarray:
        """int64 [n_users + 1]; entry 0 (padding user) is 0."""
        return np.diff(self.offsets)

    @cached_property
    def user(self) -> np.ndarray:
        """int32 [N] user id of each row (derived from offsets)."""
        return np.repeat(np.arange(self.n_users + 1, dtype=np.int32), self.lengths)

    def sequence(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """Items and timestamps of one user (1-based id), in time order."""
        if not 1 <= user <= self.n_users:
            raise KeyError(f"user id {user} out of range 1..{self.n_users}")
        s, e = self.offsets[user], self.offsets[user + 1]
        return self.item[s:e], self.timestamp[s:e]

    def user_map(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / "user_map.parquet")

    def item_map(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / "item_map.parquet")

    def item_popularity(self) -> np.ndarray:
        """int64 [n_items + 1] interaction count per item (entry 0 = 0)."""
        return np.bincount(self.item, minlength=self.n_items + 1)

    def leave_one_out(self) -> LeaveOneOut:
        return leave_one_out(self.offsets)

    def eval_split(self, kind: str = "loo", fraction: float = 0.8) -> EvalSplit:
        """The training/validation/test split the trainer uses: ``loo`` or ``temporal``."""
        if kind == "loo":
            return loo_eval_split(self.offsets)
        if kind == "temporal":
            return temporal_eval_split(self.offsets, np.asarray(self.timestamp), fraction)
        if kind == "loo_refit":
            return loo_refit_split(self.offsets)
        raise ValueError(f"unknown split {kind!r}: use loo, loo_refit or temporal")

    def temporal_split(self, fraction: float = 0.8) -> TemporalSplit:
        return temporal_split(self.user, self.item, self.timestamp, fraction)

    def verify(self) -> None:
        """Recompute the arrays' md5 and compare with the manifest."""
        for fname, md5 in self.manifest.get("checksums", {}).items():
            got = file_md5(self.path / fname)
            if got != md5:
                raise ValueError(f"{self.path / fname}: checksum mismatch ({got} != {md5}); re-run `seqrec prepare`")

    def summary(self) -> str:
        s = self.stats
        lines = [
            f"dataset     {self.name}  ({self.path})",
            f"users       {s['users']:,}",
            f"items       {s['items']:,}",
            f"interactions {s['interactions']:,}",
            f"density     {s['density']:.5f}",
            f"seq length  mean {s['seq_len_mean']:.1f}, median {s['seq_len_median']:.0f}, "
            f"min {s['seq_len_min']}, max {s['seq_len_max']}",
        ]
        if "time_min" in s:
            lines.append(f"time span   {_date(s['time_min'])} .. {_date(s['time_max'])}")
        return "\n".join(lines)


def _date(seconds: int) -> str:
    try:
        return str(_dt.datetime.fromtimestamp(seconds, _dt.timezone.utc).date())
    except (OverflowError, OSError, ValueError):
        return f"{seconds} s (outside the calendar: are these seconds?)"


def load_dataset(folder: str | Path, mmap: bool = True) -> SeqDataset:
    """Load a prepared dataset folder (memory-mapped by default: near-instant)."""
    folder = Path(folder)
    mpath = folder / MANIFEST
    if not mpath.exists():
        raise FileNotFoundError(
            f"{folder} is not a prepared dataset (no {MANIFEST}); run `seqrec prepare` first"
        )
    manifest = json.loads(mpath.read_text(encoding="utf-8"))
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{folder}: dataset format {manifest.get('format_version')} is not supported "
            f"(expected {FORMAT_VERSION}); re-run `seqrec prepare`"
        )
    mode = "r" if mmap else None
    arrays = {k: np.load(folder / f"{k}.npy", mmap_mode=mode) for k in ARRAYS}
    return SeqDataset(path=folder, manifest=manifest, **arrays)
