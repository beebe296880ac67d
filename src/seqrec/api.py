"""Recommendations from a trained run, for scripts and services.

>>> import seqrec.api
>>> rec = seqrec.api.load("runs/sasrec_ml-100k")              # once (model in eval mode)
>>> rec.recommend(user=196, k=5)                              # a user of the data set (raw id)
>>> rec.recommend(history=[50, 172, 181], timestamps=[...])   # anyone, from raw item ids
>>> rec.recommend_batch([196, 186, 22], k=10)                 # many users, one forward per chunk

Each recommendation is a dict ``{"rank", "item", "item_id", "score", "title"}``: ``item`` is
the raw id as in the source data, ``item_id`` the internal id (1..n_items), ``score`` the
model's score (higher is better), ``title`` the item's title when the data set has titles
(MovieLens), else ``None``. The padding item 0 is never returned; with ``exclude_seen``
the items of the history are never returned either.

How the input is built (the same batch dict as :class:`seqrec.data.batches.SequenceBatcher`,
keys ``items``, ``users`` and, for time-aware models, ``timestamps``, ``next_timestamps``,
``time_scale``):

* ``items``: the last ``maxlen`` items of the history, right-aligned (left padding 0);
  a known user's history is *all* of their interactions in the data set (train, validation
  and test part), in time order;
* ``timestamps``: their times (Unix seconds);
* ``next_timestamps``: the time of the following item; at the last position, whose
  following item is the one being recommended, the last timestamp plus the median gap
  between the history's consecutive interactions (the last timestamp itself with fewer
  than two interactions);
* ``time_scale``: the smallest non-zero gap between consecutive interactions of the whole
  history (1 s when there is none). The trainer computes it over the training part of a
  user's sequence; at recommendation time the whole history is the user's past, so both
  input paths (``user=`` and ``history=``) use the whole history and agree exactly;
* ``users``: the internal user id, 0 for a ``history=`` (no model reads it today).

A :class:`Recommender` holds no per-call state: it can serve many calls (one at a time or
from several threads; the forward passes run under ``torch.inference_mode``).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import polars as pl
import torch

from .config import RunConfig
from .data.batches import gap_stats, window_positions
from .data.store import SeqDataset
from .runs.load import load_run
from .utils.io import file_sha256

DAY = 86_400


class UnknownIdError(KeyError, ValueError):
    """A raw user or item id that the data set does not hold.

    Both a ``KeyError`` (a failed lookup) and a ``ValueError`` (bad input), so either
    ``except`` clause catches it; ``str()`` is the plain message.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class _IdMap:
    """Raw source ids <-> internal ids (1..n) of one id map (``id``, ``raw``)."""

    def __init__(self, frame: pl.DataFrame, kind: str, dataset: str):
        frame = frame.sort("id")
        self.kind = kind
        self.dataset = dataset
        self.dtype = frame.schema["raw"]
        self.is_int = self.dtype.is_integer()
        ids = frame["id"].to_numpy().astype(np.int64)
        raws = frame["raw"].to_list()
        if len(ids) and not np.array_equal(ids, np.arange(1, len(ids) + 1)):
            raise ValueError(f"{dataset}: the {kind} map's ids are not 1..{len(ids)}; re-run `seqrec prepare`")
        self.raw_by_id: list[Any] = [None] + raws
        self.id_by_raw: dict[Any, int] = {r: i for i, r in zip(ids.tolist(), raws)}

    def __len__(self) -> int:
        return len(self.raw_by_id) - 1

    def normalize(self, value: Any) -> Any:
        """``value`` as the map's raw type (``"196"`` -> 196 for integer ids, 196 -> ``"196"``
        for string ids); ``None`` when it cannot be one (then it is unknown)."""
        if isinstance(value, (bool, np.bool_)):
            return None
        if self.is_int:
            if isinstance(value, (int, np.integer)):
                return int(value)
            if isinstance(value, str):
                try:
                    return int(value.strip())
                except ValueError:
                    return None
            if isinstance(value, (float, np.floating)) and float(value).is_integer():
                return int(value)
            return None
        if self.dtype == pl.String:
            if isinstance(value, (np.integer,)):
                value = int(value)
            return str(value) if isinstance(value, (int, str)) else None
        return value

    def lookup(self, value: Any) -> int | None:
        key = self.normalize(value)
        try:
            return self.id_by_raw.get(key) if key is not None else None
        except TypeError:  # unhashable input
            return None

    def ids(self, values: Iterable[Any]) -> np.ndarray:
        """Internal ids of raw ids; :class:`UnknownIdError` listing every unknown one."""
        values = list(values)
        ids = [self.lookup(v) for v in values]
        missing = [v for v, i in zip(values, ids) if i is None]
        if missing:
            raise self.unknown(missing)
        return np.asarray(ids, dtype=np.int64)

    def describe(self) -> str:
        """E.g. "943 users; raw ids 1..943" (a short description for error messages)."""
        n = len(self)
        if n == 0:
            return f"no {self.kind}s"
        raws = self.raw_by_id[1:]
        if self.is_int:
            return f"{n:,} {self.kind}s; raw ids {min(raws)}..{max(raws)}"
        examples = ", ".join(repr(r) for r in raws[:3])
        return f"{n:,} {self.kind}s; raw ids such as {examples}"

    def unknown(self, values: Sequence[Any]) -> UnknownIdError:
        shown = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in values[:10])
        more = f" and {len(values) - 10} more" if len(values) > 10 else ""
        what = f"{self.kind} {shown} is" if len(values) == 1 else f"{self.kind}s {shown}{more} are"
        return UnknownIdError(f"{what} not in dataset {self.dataset} ({self.describe()})")


def sequence_batch(item: np.ndarray, timestamp: np.ndarray, start: np.ndarray, end: np.ndarray, maxlen: int,
                   users: np.ndarray, with_time: bool, next_times: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """The model input for predicting the item after each slice ``start[r]:end[r]`` of the
    flat arrays (the batch dict of :mod:`seqrec.train.batches`, window trimmed to the
    longest row; see the module docstring for the time features)."""
    start = np.asarray(start, dtype=np.int64)
    end = np.asarray(end, dtype=np.int64)
    if np.any(end <= start):
        raise ValueError("every history needs at least one item")
    pos, valid = window_positions(start, end, maxlen)
    batch = {"users": torch.from_numpy(np.asarray(users, dtype=np.int64)),
             "items": torch.from_numpy(np.where(valid, np.asarray(item)[pos], 0).astype(np.int64))}
    if with_time:
        ts_all = np.asarray(timestamp, dtype=np.int64)
        ts = np.where(valid, ts_all[pos], 0)
        nxt = np.where(valid, ts_all[np.minimum(pos + 1, len(ts_all) - 1)], 0)
        min_gap, median_gap = gap_stats(ts_all, start, end)
        # the last column is always a real item (windows are right-aligned): its successor is
        # the recommended item, expected one median gap after the last interaction
        nxt[:, -1] = ts[:, -1] + np.round(median_gap).astype(np.int64)
        if next_times is not None:  # the caller knows when the next event happens (-1: not given)
            given = np.asarray(next_times, dtype=np.int64) >= 0
            nxt[given, -1] = np.asarray(next_times, dtype=np.int64)[given]
        batch.update(timestamps=torch.from_numpy(ts), next_timestamps=torch.from_numpy(nxt),
                     time_scale=torch.from_numpy(min_gap))
    return batch


@dataclass(frozen=True)
class Query:
    """One checked request (see :meth:`Recommender.query`): internal item ids and timestamps of
    the history, the next event's time (-1: not given), how many items, whether to exclude seen."""

    user: int
    items: np.ndarray
    timestamps: np.ndarray
    next_time: int
    k: int
    exclude_seen: bool


class Recommender:
    """Top-k next-item recommendations from a trained model (see the module docstring).

    Build it with :func:`load`. Attributes: ``cfg`` (the run's configuration), ``dataset``
    (:class:`~seqrec.data.store.SeqDataset`), ``model`` (in eval mode), ``device``,
    ``maxlen``, ``uses_time``.
    """

    def __init__(self, cfg: RunConfig, dataset: SeqDataset, model: torch.nn.Module, device: torch.device,
                 scorer: Any = None, backend: str = "torch"):
        self.cfg = cfg
        self.dataset = dataset
        self.model = model.eval()
        self.device = device
        self.backend = backend
        # batch dict -> scores [B, n_items + 1]: the model's own predict, or an exported graph
        self._scores = scorer if scorer is not None else self.model.predict
        self.maxlen = int(cfg.data.maxlen)
        self.uses_time = bool(getattr(model, "uses_time", False))
        self.n_items = int(dataset.n_items)
        self._users = _IdMap(dataset.user_map(), "user", dataset.name)
        item_map = dataset.item_map()
        self._items = _IdMap(item_map, "item", dataset.name)
        self._titles: list[str | None] | None = None
        if "title" in item_map.columns:
            self._titles = [None] + item_map.sort("id")["title"].to_list()
        self._item = np.asarray(dataset.item)
        self._timestamp = np.asarray(dataset.timestamp)
        self._offsets = np.asarray(dataset.offsets, dtype=np.int64)

    # -- lookups --------------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return len(self._users)

    @property
    def has_titles(self) -> bool:
        return self._titles is not None

    def user_id(self, user: Any) -> int:
        """Internal id of a raw user id; :class:`UnknownIdError` when not in the data."""
        uid = self._users.lookup(user)
        if uid is None:
            raise self._users.unknown([user])
        return uid

    def user_ids(self, users: Iterable[Any]) -> np.ndarray:
        """Internal ids of raw user ids; :class:`UnknownIdError` listing every unknown one."""
        return self._users.ids(users)

    def item_ids(self, items: Iterable[Any]) -> np.ndarray:
        """Internal ids of raw item ids; :class:`UnknownIdError` listing every unknown one."""
        return self._items.ids(items)

    def item_titles(self, items: Iterable[Any]) -> list[str | None]:
        """Titles of raw item ids (``None`` for items without a title, or when the data set
        has none); :class:`UnknownIdError` for ids not in the data."""
        ids = self.item_ids(items)
        if self._titles is None:
            return [None] * len(ids)
        return [self._titles[i] for i in ids]

    # -- recommendations ------------------------------------------------------------------
    def recommend(self, user: Any = None, *, history: Sequence[Any] | None = None,
                  timestamps: Sequence[float] | None = None, k: int = 10,
                  exclude_seen: bool = True) -> list[dict]:
        """Top-``k`` next items for a known ``user`` (raw id) or for a ``history`` of raw
        item ids (oldest first, optional ``timestamps`` in Unix seconds)."""
        if (user is None) == (history is None):
            raise ValueError("pass either user= (a user of the data set) or history= (raw item ids), not both")
        if user is not None:
            if timestamps is not None:
                raise ValueError("timestamps= goes with history=; a user's timestamps come from the data set")
            return self.recommend_batch([user], k=k, exclude_seen=exclude_seen)[0]
        items = self._history_ids(history)
        ts = self._history_times(timestamps, len(items))
        batch = sequence_batch(items, ts, np.array([0]), np.array([len(items)]), self.maxlen,
                               np.array([0]), self.uses_time)
        return self._top_k(batch, [items], k, exclude_seen)[0]

    def recommend_batch(self, users: Sequence[Any], k: int = 10, *, exclude_seen: bool = True,
                        chunk_size: int = 256) -> list[list[dict]]:
        """Top-``k`` for many known users (raw ids), in order; one forward per ``chunk_size``
        users. Unknown users raise :class:`UnknownIdError` (listing them) before any work."""
        uid = self.user_ids(users)
        start, end = self._offsets[uid], self._offsets[uid + 1]
        out: list[list[dict]] = []
        for c in range(0, len(uid), chunk_size):
            sl = slice(c, c + chunk_size)
            batch = sequence_batch(self._item, self._timestamp, start[sl], end[sl], self.maxlen, uid[sl],
                                   self.uses_time)
            seen = [self._item[s:e] for s, e in zip(start[sl], end[sl])] if exclude_seen else None
            out += self._top_k(batch, seen, k, exclude_seen)
        return out

    def recommend_table(self, users: Sequence[Any] | None = None, k: int = 10, *, exclude_seen: bool = True,
                        chunk_size: int = 1024, progress: bool = False) -> pl.DataFrame:
        """Top-``k`` for many users as one table: columns ``user``, ``rank``, ``item`` (raw ids)
        and ``score``, ``k`` rows per user in the order given (default: every user of the data
        set). One forward pass per ``chunk_size`` users; memory stays bounded by the chunk (the
        table itself holds ``k`` rows per user). Unknown users raise before any work.

        Chunks are cut from the users sorted by history length, so each chunk's window is
        trimmed to its own longest history (exact: positions count from the right end) instead
        of ``maxlen`` for every chunk; rows come back in the order given."""
        uid = np.arange(1, self.n_users + 1, dtype=np.int64) if users is None else self.user_ids(users)
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        from tqdm.auto import tqdm

        start, end = self._offsets[uid], self._offsets[uid + 1]
        kk = min(int(k), self.n_items)
        order = np.argsort(np.minimum(end - start, self.maxlen), kind="stable")  # by window length
        top_i = np.zeros((len(uid), kk), dtype=np.int64)
        top_s = np.full((len(uid), kk), -np.inf, dtype=np.float32)
        with tqdm(total=len(uid), unit="user", desc="recommend", disable=not progress) as bar:
            for c in range(0, len(uid), chunk_size):
                rows = order[c : c + chunk_size]
                batch = sequence_batch(self._item, self._timestamp, start[rows], end[rows], self.maxlen, uid[rows],
                                       self.uses_time)
                seen = [self._item[a:b] for a, b in zip(start[rows], end[rows])] if exclude_seen else None
                top_s[rows], top_i[rows] = self._top_k_arrays(batch, seen, kk)
                bar.update(len(rows))
        u = np.repeat(uid, kk)
        i, sc = top_i.reshape(-1), top_s.reshape(-1)
        keep = np.isfinite(sc)  # fewer than k items left after the exclusions
        rank = np.tile(np.arange(1, kk + 1, dtype=np.int32), len(uid))
        user_raw = pl.Series("user", self._users.raw_by_id[1:], dtype=self._users.dtype)
        item_raw = pl.Series("item", self._items.raw_by_id[1:], dtype=self._items.dtype)
        return pl.DataFrame({
            "user": user_raw.gather(pl.Series(u[keep] - 1)),
            "rank": pl.Series(rank[keep], dtype=pl.Int32),
            "item": item_raw.gather(pl.Series(i[keep] - 1)),
            "score": pl.Series(sc[keep].astype(np.float32), dtype=pl.Float32),
        })

    # -- queries: one validated request each, many answered in one forward pass ------------
    def query(self, user: Any = None, *, history: Sequence[Any] | None = None,
              timestamps: Sequence[float] | None = None, next_time: float | str | None = None, k: int = 10,
              exclude_seen: bool = True) -> "Query":
        """Check one request and turn it into arrays (raises ``UnknownIdError`` / ``ValueError``
        with the reason): a known ``user`` or a ``history``; ``next_time`` (Unix seconds, or
        ``"now"``) is when the recommended interaction happens, for time-aware models; without
        it the last interaction plus the history's median gap is assumed."""
        if (user is None) == (history is None):
            raise ValueError("give either user (a user of the data set) or history (item ids), not both")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= self.n_items:
            raise ValueError(f"k must be an integer in 1..{self.n_items} (the catalogue), got {k!r}")
        if user is not None:
            if timestamps is not None:
                raise ValueError("timestamps go with history; a user's timestamps come from the data set")
            uid = self.user_id(user)
            s, e = self._offsets[uid], self._offsets[uid + 1]
            items, ts = np.asarray(self._item[s:e], dtype=np.int64), np.asarray(self._timestamp[s:e], dtype=np.int64)
        else:
            uid = 0
            items = self._history_ids(history)
            ts = self._history_times(timestamps, len(items))
        nt = -1
        if next_time is not None:
            if next_time == "now":
                nt = int(time.time())
            else:
                try:
                    nt = int(float(next_time))
                except (TypeError, ValueError):
                    raise ValueError(f"next_time must be Unix seconds or \"now\", got {next_time!r}") from None
                if nt < 0:
                    raise ValueError(f"next_time must be >= 0 Unix seconds, got {next_time!r}")
        return Query(uid, items, ts, nt, int(k), bool(exclude_seen))

    def answer(self, queries: Sequence["Query"]) -> list[list[dict]]:
        """The recommendations of many queries, in order, from one forward pass."""
        if not queries:
            return []
        lengths = np.array([len(q.items) for q in queries], dtype=np.int64)
        end = np.cumsum(lengths)
        start = end - lengths
        items = np.concatenate([q.items for q in queries])
        ts = np.concatenate([q.timestamps for q in queries])
        nxt = np.array([q.next_time for q in queries], dtype=np.int64)
        batch = sequence_batch(items, ts, start, end, self.maxlen, np.array([q.user for q in queries]),
                               self.uses_time, nxt if (nxt >= 0).any() else None)
        seen = [q.items if q.exclude_seen else q.items[:0] for q in queries]
        kk = max(q.k for q in queries)
        top_s, top_i = self._top_k_arrays(batch, seen, kk)
        return [self._records(top_s[r, : q.k], top_i[r, : q.k]) for r, q in enumerate(queries)]

    def _records(self, scores: np.ndarray, items: np.ndarray) -> list[dict]:
        recs = []
        for s, i in zip(scores.tolist(), items.tolist()):
            if s == float("-inf"):  # fewer than k items left after the exclusions
                break
            recs.append({"rank": len(recs) + 1, "item": self._items.raw_by_id[i], "item_id": i, "score": s,
                         "title": self._titles[i] if self._titles is not None else None})
        return recs

    # -- internals ------------------------------------------------------------------------
    def _history_ids(self, history: Sequence[Any]) -> np.ndarray:
        if isinstance(history, (str, bytes)) or not isinstance(history, Iterable):
            raise ValueError("history= must be a list of raw item ids, oldest first")
        items = self.item_ids(list(history))
        if len(items) == 0:
            raise ValueError("history= is empty: give at least one item")
        return items

    def _history_times(self, timestamps: Sequence[float] | None, n: int) -> np.ndarray:
        if timestamps is None:
            if self.uses_time:
                warnings.warn(
                    f"{self.cfg.model_name} is time-aware but no timestamps= were given: using one interaction "
                    "per day ending now (pass timestamps= in Unix seconds for real intervals)",
                    UserWarning, stacklevel=3)
            now = int(time.time())
            return now - DAY * np.arange(n - 1, -1, -1, dtype=np.int64)
        ts = np.asarray(list(timestamps), dtype=np.float64)
        if ts.ndim != 1 or len(ts) != n:
            raise ValueError(f"timestamps= has {ts.size} values for {n} history items: give one per item")
        if not np.all(np.isfinite(ts)):
            raise ValueError("timestamps= must be finite Unix seconds")
        if np.any(np.diff(ts) < 0):
            raise ValueError("timestamps= must be non-decreasing (history is oldest first)")
        return ts.astype(np.int64)

    @torch.inference_mode()
    def _top_k_arrays(self, batch: dict[str, torch.Tensor], seen: list[np.ndarray] | None, k: int
                      ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, items) ``[B, k]`` of the best items, padding and ``seen`` excluded (-inf)."""
        if self.backend == "torch":
            batch = {key: v.to(self.device) for key, v in batch.items()}
        scores = self._scores(batch).float().to(self.device)  # (B, n_items + 1)
        scores[:, 0] = float("-inf")
        if seen is not None:
            rows = np.repeat(np.arange(len(seen)), [len(s) for s in seen])
            cols = np.concatenate(seen).astype(np.int64) if len(rows) else np.zeros(0, dtype=np.int64)
            scores[torch.from_numpy(rows).to(self.device), torch.from_numpy(cols).to(self.device)] = float("-inf")
        top_scores, top_items = torch.topk(scores, k, dim=1)
        return top_scores.cpu().numpy(), top_items.cpu().numpy()

    def _top_k(self, batch: dict[str, torch.Tensor], seen: list[np.ndarray] | None, k: int,
               exclude_seen: bool) -> list[list[dict]]:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        kk = min(int(k), self.n_items)
        top_scores, top_items = self._top_k_arrays(batch, seen if exclude_seen else None, kk)
        out = []
        for srow, irow in zip(top_scores, top_items):
            recs = []
            for s, i in zip(srow.tolist(), irow.tolist()):
                if s == float("-inf"):  # fewer than k items left after the exclusions
                    break
                recs.append({"rank": len(recs) + 1, "item": self._items.raw_by_id[i], "item_id": i, "score": s,
                             "title": self._titles[i] if self._titles is not None else None})
            out.append(recs)
        return out


BACKENDS = ("torch", "onnx", "torchscript")


def load(run_dir: str | Path, checkpoint: str = "best.pt", device: str = "cpu", backend: str = "torch",
         graph: str | Path | None = None, compile: bool = False) -> Recommender:
    """Load a run folder's model (``checkpoint``, default the best validation epoch) and its
    dataset for recommendations. ``device``: cpu, cuda or auto (the torch backend; the graph
    backends run on the CPU).

    ``backend="onnx"`` (onnxruntime, the ``export`` extra) or ``"torchscript"`` scores with an
    exported graph of the same checkpoint: ``graph`` (default ``RUN/model.onnx`` or
    ``RUN/model.pt``, exported there, checked, on first use; see :mod:`seqrec.export`). The
    answers equal the torch backend's (scores within 1e-4, same items).

    ``compile=True`` (torch backend) runs the model through ``torch.compile``: the first calls
    wait while it compiles (again for each new batch shape, until shapes go dynamic); where it
    cannot compile, one line says so and it runs eagerly."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if graph is not None and backend == "torch":
        raise ValueError("--graph needs --backend onnx or torchscript")
    if compile and backend != "torch":
        raise ValueError("--compile is for the torch backend (an exported graph is already compiled by its runtime)")
    if backend == "torch":
        run = load_run(run_dir, checkpoint, device)
        if compile:
            from .utils.compile import compile_model

            compile_model(run.model)
        return Recommender(run.cfg, run.dataset, run.model, run.device)
    from .export import SUFFIX, GraphScorer, export_run

    run = load_run(run_dir, checkpoint, "cpu")
    stem = "model" if checkpoint == "best.pt" else f"model-{Path(checkpoint).stem}"
    path = Path(graph) if graph is not None else run.folder.path / f"{stem}{SUFFIX[backend]}"
    write = f"`seqrec export-model {run_dir} --format {backend} --checkpoint {checkpoint} --out {path}`"
    if graph is not None and not path.exists():
        raise FileNotFoundError(f"no exported graph at {path}: write it with {write}")
    scorer = GraphScorer(path, backend) if path.exists() else None
    digest = file_sha256(run.folder.checkpoint(checkpoint))
    if scorer is None or scorer.meta.get("checkpoint_sha256") != digest:
        if graph is not None:  # the user's file: never replaced behind their back
            raise ValueError(f"{path} was not exported from {run.folder.checkpoint(checkpoint)} (another run, "
                             f"or the checkpoint changed since): export it again with {write}")
        export_run(run, backend, path, checkpoint=checkpoint, log=None)  # first use, or stale
        scorer = GraphScorer(path, backend)
    return Recommender(run.cfg, run.dataset, run.model, run.device, scorer=scorer, backend=backend)
