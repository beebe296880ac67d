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


@dataclass(frozen=True)
class EvalSplit:
    """What the trainer needs from a split: each user's training prefix and the
    (user, target position) pairs to validate and test on.

    ``train_end[u-1]``: end (exclusive) of user u's training rows ``offsets[u]:train_end[u-1]``;
    ``valid_users``/``valid_pos`` and ``test_users``/``test_pos``: 1-based user ids and flat
    positions of their targets (the input is everything of that user before the target).
    """

    name: str
    train_end: np.ndarray
    valid_users: np.ndarray
    valid_pos: np.ndarray
    test_users: np.ndarray
    test_pos: np.ndarray
    stats: dict


def loo_eval_split(offsets: np.ndarray) -> EvalSplit:
    loo = leave_one_out(offsets)
    users = loo.eval_users
    return EvalSplit("leave-one-out", loo.train_end, users, loo.valid_pos[users - 1], users,
                     loo.test_pos[users - 1], {"eval_users": int(len(users))})


def loo_refit_split(offsets: np.ndarray) -> EvalSplit:
    """Leave-one-out with the validation item moved into training (the "refit" protocol:
    train on train + validation for a chosen number of epochs, then test once). No users are
    validated; the test targets are leave-one-out's."""
    loo = leave_one_out(offsets)
    users = loo.eval_users
    train_end = loo.train_end.copy()
    train_end[users - 1] = loo.test_pos[users - 1]  # up to (not including) the test target
    empty = np.zeros(0, dtype=np.int64)
    return EvalSplit("leave-one-out, refit on train + validation", train_end, empty, empty, users,
                     loo.test_pos[users - 1], {"eval_users": int(len(users))})


def temporal_eval_split(offsets: np.ndarray, timestamp: np.ndarray, fraction: float = 0.8,
                        valid_fraction: float = 0.5) -> EvalSplit:
    """The seeds' global past/future split, made trainable.

    The first ``fraction`` of all interactions by time are the past (training data). The
    future is cut in time again: its first ``valid_fraction`` is the validation period, the
    rest the test period. A user is validated on their first interaction in the validation
    period and tested on their first interaction in the test period (each with all their
    earlier interactions as input, so the test input includes validation-period items);
    users without an interaction in a period are not evaluated on it. Items first seen in the
    future stay rankable but untrained (they are counted in ``stats``).
    """
    n_users = len(offsets) - 2
    user = np.repeat(np.arange(1, n_users + 1), np.diff(offsets[1:]))
    n = len(timestamp)
    order = np.argsort(timestamp, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    n_past = int(round(fraction * n))
    n_valid_end = n_past + int(round(valid_fraction * (n - n_past)))
    period = np.where(rank < n_past, 0, np.where(rank < n_valid_end, 1, 2))
    starts = offsets[1:-1]
    # rows of a user are in time order, so its past rows form a prefix
    past_count = np.bincount(user[period == 0], minlength=n_users + 1)[1:]
    train_end = starts + past_count

    def first_in(p: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.flatnonzero(period == p)
        u, first = np.unique(user[rows], return_index=True)
        pos = rows[first]
        keep = pos > starts[u - 1]  # needs at least one earlier interaction as input
        return u[keep].astype(np.int64), pos[keep].astype(np.int64)

    vu, vp = first_in(1)
    tu, tp = first_in(2)
    stats = {"past_rows": n_past, "valid_rows": n_valid_end - n_past, "test_rows": n - n_valid_end,
             "valid_users": int(len(vu)), "test_users": int(len(tu)),
             "cutoff_time": int(timestamp[order[n_past]]) if n_past < n else None}
    return EvalSplit("temporal", train_end, vu, vp, tu, tp, stats)
