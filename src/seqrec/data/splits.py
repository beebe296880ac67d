"""Evaluation splits over a prepared dataset (CSR layout: ``offsets`` per user).

* :func:`leave_one_out`: per user, train = all but the last two interactions, valid target =
  the second last, test target = the last. Users with fewer than 3 interactions keep all of
  them in train and are not evaluated.
* :func:`temporal_split`: the seeds' global past/future split: the first ``fraction`` of all
  interactions by time form the past, the rest the future (ties in time keep the prepared
  order, so the split is exactly ``round(fraction * N)`` rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LeaveOneOut:
    """Positions into the dataset's flat arrays, for users ``1..n_users`` (index u-1).

    ``train_end[u-1]``: the user's train interactions are ``offsets[u]:train_end[u-1]``.
    ``valid_pos``/``test_pos``: flat position of the validation/test target, -1 if the user
    is too short to be evaluated.
    """

    train_end: np.ndarray
    valid_pos: np.ndarray
    test_pos: np.ndarray

    @property
    def eval_users(self) -> np.ndarray:
        """User ids (1-based) that have a validation and a test target."""
        return np.flatnonzero(self.test_pos >= 0).astype(np.int64) + 1


def leave_one_out(offsets: np.ndarray) -> LeaveOneOut:
    """``offsets``: int64 [n_users + 2]; user u's interactions are ``offsets[u]:offsets[u+1]``
    (u = 0 is the empty padding user)."""
    starts = offsets[1:-1].astype(np.int64)
    ends = offsets[2:].astype(np.int64)
    lengths = ends - starts
    ok = lengths >= 3
    train_end = np.where(ok, ends - 2, ends)
    valid_pos = np.where(ok, ends - 2, -1)
    test_pos = np.where(ok, ends - 1, -1)
    return LeaveOneOut(train_end, valid_pos, test_pos)


@dataclass(frozen=True)
class TemporalSplit:
    is_past: np.ndarray  # bool [N], over the dataset's flat arrays
    cutoff_time: int  # timestamp of the first future interaction
    stats: dict


def temporal_split(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, fraction: float = 0.8) -> TemporalSplit:
    """Global time split: the earliest ``fraction`` of interactions are the past.

    Reports users and items seen only in the future (cold-start for a model trained on the
    past).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"temporal split fraction must be in (0, 1), got {fraction}")
    n = len(timestamp)
    if n == 0:
        raise ValueError("cannot split an empty dataset")
    n_past = int(round(fraction * n))
    order = np.argsort(timestamp, kind="stable")
    is_past = np.zeros(n, dtype=bool)
    is_past[order[:n_past]] = True
    cutoff = int(timestamp[order[n_past]]) if n_past < n else int(timestamp[order[-1]]) + 1

    def _only_future(ids: np.ndarray) -> tuple[int, int]:
        past = np.unique(ids[is_past])
        fut = np.unique(ids[~is_past])
        only = np.setdiff1d(fut, past, assume_unique=True)
        fut_rows = int(np.isin(ids[~is_past], only).sum()) if len(only) else 0
        return int(len(only)), fut_rows

    fu, fu_rows = _only_future(user)
    fi, fi_rows = _only_future(item)
    stats = {
        "fraction": fraction,
        "past_rows": int(n_past),
        "future_rows": int(n - n_past),
        "cutoff_time": cutoff,
        "past_users": int(len(np.unique(user[is_past]))),
        "future_users": int(len(np.unique(user[~is_past]))),
        "future_only_users": fu,
        "future_rows_of_future_only_users": fu_rows,
        "future_only_items": fi,
        "future_rows_of_future_only_items": fi_rows,
    }
    return TemporalSplit(is_past, cutoff, stats)
