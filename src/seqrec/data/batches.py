"""Vectorised batch building from a dataset's CSR arrays (no Python loop per sample).

Every sequence is a slice of the flat ``item``/``timestamp`` arrays. A *window* of length
``L`` ending just before flat position ``end`` holds positions ``end-L .. end-1`` clipped at
the user's first interaction ``start``; windows are right-aligned and left-padded with 0,
so the most recent interaction is always at index ``L-1``.

Batch dict keys (the model interface, see :mod:`seqrec.models.base`):

* ``items``           int64 [B, L]  input items, 0 = padding
* ``timestamps``      int64 [B, L]  seconds, 0 at padding
* ``next_timestamps`` int64 [B, L]  timestamp of the item that follows each position (the
  target's time at the last position), 0 at padding
* ``time_scale``      int64 [B]     the user's smallest non-zero gap in the training part (s)
* ``users``           int64 [B]
* training only: ``targets`` int64 [B, L] (next item per position, 0 = no loss there)
"""

from __future__ import annotations

import numpy as np
import torch

#: What an evaluation batch gives as the time following its last position (the held-out item's).
NEXT_TIMES = ("target", "last", "median")


def window_positions(start: np.ndarray, end: np.ndarray, maxlen: int, trim: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions [B, L] of the window ending before ``end`` and its validity mask.

    With ``trim``, leading columns that are padding in every row are dropped (L <= maxlen):
    models index positions from the right end, so this changes no output and saves the
    work on padding when a batch's sequences are all shorter than ``maxlen``.
    """
    if trim and len(end):
        maxlen = int(max(1, min(maxlen, (end - start).max())))
    idx = end[:, None] - maxlen + np.arange(maxlen)[None, :]
    valid = idx >= start[:, None]
    return np.where(valid, idx, 0), valid


def user_time_scale(offsets: np.ndarray, timestamp: np.ndarray, train_end: np.ndarray) -> np.ndarray:
    """int64 [n_users + 1]: each user's smallest non-zero gap between consecutive training
    interactions (1 when there is none). Entry 0 (padding user) is 1."""
    n_users = len(offsets) - 2
    gaps = np.diff(timestamp).astype(np.float64)
    # gap j is between rows j and j+1; it belongs to a user when both rows are in its train part
    row_user = np.repeat(np.arange(n_users), np.diff(offsets[1:]))
    ok = np.zeros(len(gaps), dtype=bool)
    if len(gaps):
        same = row_user[:-1] == row_user[1:]
        in_train = np.arange(1, len(timestamp)) < train_end[row_user[1:]]
        ok = same & in_train & (gaps > 0)
    vals = np.where(ok, gaps, np.inf)
    scale = np.full(n_users + 1, np.inf)
    if len(vals):
        np.minimum.at(scale, row_user[:-1][ok] + 1, vals[ok])
    scale[~np.isfinite(scale)] = 1.0
    return scale.astype(np.int64)


def gap_stats(timestamp: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row ``r`` (the flat slice ``start[r]:end[r]``): the smallest non-zero gap between
    consecutive timestamps (1 when there is none) and the median gap (0 with < 2 items).

    Vectorised over rows: the gaps of all rows are sorted by (row, gap) once.
    """
    start = np.asarray(start, dtype=np.int64)
    end = np.asarray(end, dtype=np.int64)
    n_gaps = np.maximum(end - start - 1, 0)
    total = int(n_gaps.sum())
    min_gap = np.ones(len(start), dtype=np.int64)
    median = np.zeros(len(start), dtype=np.float64)
    if total == 0:
        return min_gap, median
    goff = np.zeros(len(start) + 1, dtype=np.int64)
    np.cumsum(n_gaps, out=goff[1:])
    row = np.repeat(np.arange(len(start)), n_gaps)
    first = np.repeat(start, n_gaps) + (np.arange(total) - goff[row])  # gap j is t[first+1] - t[first]
    ts = np.asarray(timestamp, dtype=np.int64)
    gaps = ts[first + 1] - ts[first]
    order = np.lexsort((gaps, row))
    sorted_gaps = gaps[order]
    has = n_gaps > 0
    lo = goff[:-1] + (n_gaps - 1) // 2
    hi = goff[:-1] + n_gaps // 2
    median[has] = (sorted_gaps[lo[has]] + sorted_gaps[hi[has]]) / 2.0
    pos = np.where(gaps > 0, gaps, np.iinfo(np.int64).max)
    smallest = np.full(len(start), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(smallest, row, pos)
    min_gap = np.where(smallest == np.iinfo(np.int64).max, 1, smallest)
    return min_gap, median


class SequenceBatcher:
    """Builds batches for training and evaluation from one dataset and one split.

    ``start[u-1]``: first flat row of user u; ``train_end[u-1]``: end (exclusive) of its
    training part. Timestamps are only materialised when ``with_time`` is True.

    ``next_time`` sets an evaluation batch's ``next_timestamps`` at the last position, i.e.
    when the item to be ranked happens: ``"target"``, its real timestamp (the official SS4Rec
    protocol; a model that reads it knows *when* the next interaction comes); ``"last"``, the
    last history item's (a gap of 0); ``"median"``, that plus the user's median gap in the
    history (what ``seqrec recommend`` assumes, as a live system cannot know the time).
    """

    def __init__(self, item: np.ndarray, timestamp: np.ndarray, offsets: np.ndarray, train_end: np.ndarray,
                 maxlen: int, with_time: bool = True, next_time: str = "target"):
        if next_time not in NEXT_TIMES:
            raise ValueError(f"next_time must be one of {', '.join(NEXT_TIMES)}, got {next_time!r}")
        self.next_time = next_time
        self.item = np.asarray(item, dtype=np.int64)
        self.timestamp = np.asarray(timestamp, dtype=np.int64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.start = self.offsets[1:-1]
        self.train_end = np.asarray(train_end, dtype=np.int64)
        self.maxlen = int(maxlen)
        self.with_time = with_time
        self.time_scale = user_time_scale(self.offsets, self.timestamp, self.train_end) if with_time else None

    # -- training -------------------------------------------------------------------------
    def train_users(self) -> np.ndarray:
        """User ids (1-based) with at least one (input, target) pair in their train part."""
        return np.flatnonzero(self.train_end - self.start >= 2).astype(np.int64) + 1

    def train_lengths(self, users: np.ndarray) -> np.ndarray:
        """Number of (input, target) pairs of each user's training sequence (capped at maxlen)."""
        return np.minimum(self.train_end[users - 1] - self.start[users - 1] - 1, self.maxlen)

    def epoch_batches(self, users: np.ndarray, batch_size: int, rng: np.random.Generator,
                      bucket: int = 0) -> list[np.ndarray]:
        """One epoch of user batches in random order.

        ``bucket > 0``: users are shuffled, cut into chunks of ``bucket`` batches, sorted by
        length inside each chunk, batched, and the batches shuffled -- every batch then holds
        sequences of similar length, and trimmed windows skip most of the padding (attention
        cost is quadratic in the window). ``bucket = 0``: plain shuffled batches.
        """
        order = rng.permutation(users)
        if bucket <= 0:
            return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        lengths = self.train_lengths(order)
        chunk = batch_size * bucket
        batches = []
        for i in range(0, len(order), chunk):
            c = order[i : i + chunk][np.argsort(lengths[i : i + chunk], kind="stable")]
            batches += [c[j : j + batch_size] for j in range(0, len(c), batch_size)]
        return [batches[k] for k in rng.permutation(len(batches))]

    def train_batch(self, users: np.ndarray) -> dict[str, torch.Tensor]:
        """All positions of each user's training sequence: inputs are rows
        ``start..train_end-2`` (last ``maxlen``), targets the rows one step later."""
        u0 = users - 1
        start, end = self.start[u0], self.train_end[u0] - 1
        pos, valid = window_positions(start, end, self.maxlen)
        batch = self._window(users, pos, valid)
        batch["targets"] = torch.from_numpy(np.where(valid, self.item[pos + 1], 0))
        return batch

    # -- evaluation -----------------------------------------------------------------------
    def eval_batch(self, users: np.ndarray, target_pos: np.ndarray) -> dict[str, torch.Tensor]:
        """Inputs: the ``maxlen`` rows before flat position ``target_pos`` (the user's whole
        history up to the target, so the test input includes the validation item)."""
        u0 = users - 1
        pos, valid = window_positions(self.start[u0], target_pos, self.maxlen)
        return self._window(users, pos, valid, target_pos)

    def history(self, users: np.ndarray, target_pos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """CSR (offsets [U+1], items [nnz]) of every item before each target (for exclusion)."""
        start = self.start[users - 1]
        lengths = target_pos - start
        offs = np.zeros(len(users) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offs[1:])
        flat = np.repeat(start - offs[:-1], lengths) + np.arange(offs[-1])
        return torch.from_numpy(offs), torch.from_numpy(self.item[flat])

    # -- shared ---------------------------------------------------------------------------
    def _window(self, users, pos, valid, target_pos=None) -> dict[str, torch.Tensor]:
        batch = {
            "users": torch.from_numpy(np.asarray(users, dtype=np.int64)),
            "items": torch.from_numpy(np.where(valid, self.item[pos], 0)),
        }
        if self.with_time:
            ts = np.where(valid, self.timestamp[pos], 0)
            nxt_pos = pos + 1
            if target_pos is not None:
                nxt_pos = np.minimum(nxt_pos, target_pos[:, None])
            nxt = np.where(valid, self.timestamp[np.minimum(nxt_pos, len(self.timestamp) - 1)], 0)
            if target_pos is not None and self.next_time != "target":
                # windows are right-aligned: the last column is the item just before the target
                nxt[:, -1] = ts[:, -1]
                if self.next_time == "median":
                    _, median = gap_stats(self.timestamp, self.start[np.asarray(users) - 1], target_pos)
                    nxt[:, -1] += np.round(median).astype(np.int64)
            batch["timestamps"] = torch.from_numpy(ts)
            batch["next_timestamps"] = torch.from_numpy(nxt)
            batch["time_scale"] = torch.from_numpy(self.time_scale[np.asarray(users)])
        return batch


class NegativeSampler:
    """Uniform negatives that avoid the user's training items (vectorised rejection).

    Membership is checked against a sorted array of ``user * (n_items+1) + item`` keys, so a
    batch costs one ``searchsorted``; the rare collisions are redrawn (a few rounds at most,
    after which a remaining collision is accepted, which only matters for users who consumed
    nearly every item).
    """

    def __init__(self, item: np.ndarray, offsets: np.ndarray, train_end: np.ndarray, n_items: int):
        n_users = len(offsets) - 2
        rows = np.repeat(np.arange(1, n_users + 1, dtype=np.int64), np.diff(offsets[1:]))
        keep = np.arange(len(item)) < train_end[rows - 1]
        self.n_items = int(n_items)
        self.keys = np.unique(rows[keep] * (n_items + 1) + np.asarray(item, dtype=np.int64)[keep])

    def _seen(self, users: np.ndarray, cand: np.ndarray) -> np.ndarray:
        keys = users * (self.n_items + 1) + cand
        i = np.searchsorted(self.keys, keys)
        i = np.minimum(i, len(self.keys) - 1)
        return self.keys[i] == keys

    def sample(self, users: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator, rounds: int = 8) -> np.ndarray:
        """int64 array ``[len(users), *shape]`` of items in 1..n_items."""
        users_b = np.asarray(users, dtype=np.int64).reshape((-1,) + (1,) * len(shape))
        users_b = np.broadcast_to(users_b, (len(users),) + tuple(shape))
        cand = rng.integers(1, self.n_items + 1, size=users_b.shape)
        for _ in range(rounds):
            bad = self._seen(users_b, cand)
            if not bad.any():
                break
            cand[bad] = rng.integers(1, self.n_items + 1, size=int(bad.sum()))
        return cand


def draw_negatives(kind: str, users: np.ndarray, targets: torch.Tensor, rng: np.random.Generator,
                   sampler: NegativeSampler | None, n_items: int, num_negatives: int) -> torch.Tensor | None:
    """The negatives a loss needs (``kind`` from :data:`seqrec.train.losses.NEGATIVES`):

    * ``"per_position"``: one per position, ``[B, L]``, avoiding the user's training items;
    * ``"shared"``: ``num_negatives`` uniform items, ``[N]`` shared by the batch; a negative
      equal to the target is masked by the loss;
    * ``"none"``: ``None``.
    """
    if kind == "per_position":
        return torch.from_numpy(sampler.sample(users, tuple(targets.shape[1:]), rng))
    if kind == "shared":
        return torch.from_numpy(rng.integers(1, n_items + 1, size=(num_negatives,)))
    return None
