"""Ranks of target items and the top-K metrics computed from them.

Conventions
-----------
* Items are integer ids ``1..n_items``. Column 0 of a score matrix is the padding item: it is
  never a candidate (as if its score were ``-inf``), so a score matrix has shape
  ``[U, n_items + 1]`` and there are ``n_items`` candidates per row.
* A *rank* is 0-based: rank 0 is the top of the list.

Tie policy
----------
``ties="pessimistic"`` (the default) places the target *after* every other candidate whose
score is ``>=`` its own, i.e. ``rank = #{j != target : s_j >= s_target}``. Ties therefore
never flatter a model: a constant score matrix gives every target rank ``n_items - 1`` and
HR@10 = 0 (with more than 10 items). ``ties="average"`` returns the mean of the pessimistic
rank and the optimistic rank ``#{j : s_j > s_target}``, i.e. the expected rank under random
tie-breaking (a float, possibly ``x.5``); a constant matrix gives ``(n_items - 1) / 2``.

Non-finite scores
-----------------
* A NaN score of a non-target candidate counts as ``-inf`` (it never outranks the target).
* A NaN target score gets the worst rank, ``n_candidates - 1`` (``n_items - 1`` in full
  ranking), under both tie policies: a broken score must not look like a hit.
* A ``-inf`` target score ties with every ``-inf`` (and NaN) candidate, so its pessimistic
  rank is also the worst one.

Multi-target rows
-----------------
``targets`` may be a padded ``LongTensor [U, T]`` where ``0`` marks "no target". Each target
is ranked among all ``n_items`` candidates (the other targets of the row count as ordinary
candidates), padding slots get rank ``-1``. Per row: HR@K = any target in the top K,
Recall@K = hits / n_targets, NDCG@K = DCG / ideal DCG (ideal: ``min(n_targets, K)`` hits at
the top), MRR@K = reciprocal rank of the first hit. Rows without any target are skipped (they
do not count in ``n_users``).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor

TIES = ("pessimistic", "average")
METRICS = ("hr", "ndcg", "mrr", "recall")
DEFAULT_KS = (5, 10, 20)

# Comparisons are done on row chunks of about this many elements so that the boolean
# intermediate stays in cache (4-5x faster than one big comparison on CPU).
_CHUNK_ELEMENTS = 1 << 18


def check_ties(ties: str) -> str:
    """Return ``ties`` if it is a known tie policy, else raise ``ValueError``."""
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    return ties


def check_ks_metrics(
    ks: Iterable[int], metrics: Iterable[str]
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Validate cut-offs (positive ints) and metric names; return them as tuples."""
    ks = tuple(ks)
    metrics = tuple(metrics)
    if not ks:
        raise ValueError("ks must contain at least one cut-off")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"every cut-off in ks must be a positive int, got {k!r}")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {metrics!r}")
    return ks, metrics


def metric_keys(ks: Sequence[int], metrics: Sequence[str]) -> list[str]:
    """The result keys, e.g. ``["hr@5", "hr@10", "ndcg@5", ...]`` (metric-major order)."""
    return [f"{m}@{k}" for m in metrics for k in ks]


def check_targets(targets: Tensor, n_rows: int, n_items: int | None = None) -> Tensor:
    """Validate a target tensor and return it as ``int64``.

    Args:
        targets: ``[U]`` (one target per row, ids in ``1..n_items``) or ``[U, T]`` (padded,
            ``0`` = no target, other ids in ``1..n_items``).
        n_rows: expected ``U``.
        n_items: number of real items; range is checked only when given.
    """
    if not isinstance(targets, Tensor):
        targets = torch.as_tensor(targets)
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"targets must be an integer tensor, got dtype {targets.dtype}")
    if targets.dim() not in (1, 2):
        raise ValueError(f"targets must have shape [U] or [U, T], got {tuple(targets.shape)}")
    if targets.shape[0] != n_rows:
        raise ValueError(
            f"targets has {targets.shape[0]} rows but the scores/users have {n_rows}"
        )
    targets = targets.long()
    if targets.numel() == 0:
        return targets
    lowest = 1 if targets.dim() == 1 else 0
    lo, hi = int(targets.min()), int(targets.max())
    if lo < lowest:
        what = "target ids must be >= 1 (0 is the padding item)" if lowest else (
            "target ids must be >= 0 (0 = no target)"
        )
        raise ValueError(f"{what}; got min target {lo}")
    if n_items is not None and hi > n_items:
        raise ValueError(f"target ids must be <= n_items={n_items}; got max target {hi}")
    return targets


def _count_rank(others: Tensor, target_scores: Tensor, ties: str, self_included: bool) -> Tensor:
    """Rank of ``target_scores`` among the scores in ``others``.

    Args:
        others: ``[U, N]`` candidate scores.
        target_scores: ``[U, 1]`` score of each row's target.
        ties: tie policy (see module docstring).
        self_included: whether the target's own score is one of the ``N`` columns (full
            ranking) or not (sampled ranking, where ``others`` are the negatives).

    Returns:
        ``[U]`` ranks: ``int64`` for pessimistic ties, ``float64`` for average ties.
    """
    n_rows, n_cols = others.shape
    n_other = n_cols - 1 if self_included else n_cols
    worst = max(n_other, 0)
    chunk = n_rows if others.is_cuda else max(1, _CHUNK_ELEMENTS // max(n_cols, 1))
    ge = torch.empty(n_rows, dtype=torch.int64, device=others.device)
    gt = torch.empty_like(ge) if ties == "average" else None
    for start in range(0, n_rows, chunk):
        rows = slice(start, start + chunk)
        block, st = others[rows], target_scores[rows]
        ge[rows] = (block >= st).view(torch.uint8).sum(1, dtype=torch.int32)
        if gt is not None:
            gt[rows] = (block > st).view(torch.uint8).sum(1, dtype=torch.int32)
    st = target_scores.squeeze(1)
    nan = torch.isnan(st)
    worst_t = torch.full_like(ge, worst)
    # NaN >= x is False, so a NaN (or -inf) target would count too few items: force worst.
    pess = torch.where(nan | (st == float("-inf")), worst_t, ge - int(self_included))
    if gt is None:
        return pess
    opt = torch.where(nan, worst_t, gt)
    return (pess + opt).to(torch.float64) / 2


def rank_of_targets(scores: Tensor, targets: Tensor, ties: str = "pessimistic") -> Tensor:
    """0-based rank of each target among the ``n_items`` real items of its row.

    Args:
        scores: ``[U, n_items + 1]`` float scores; column 0 (padding) is never ranked.
        targets: ``[U]`` target ids in ``1..n_items``, or padded ``[U, T]`` (0 = no target).
        ties: ``"pessimistic"`` (default) or ``"average"``; see the module docstring.

    Returns:
        Ranks with the shape of ``targets``; ``int64`` for pessimistic ties, ``float64`` for
        average ties. Padding slots of multi-target rows get ``-1``.
    """
    check_ties(ties)
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(
            f"scores must have shape [U, n_items + 1] with n_items >= 1, got {tuple(scores.shape)}"
        )
    targets = check_targets(targets, scores.shape[0], scores.shape[1] - 1)
    return _rank_of_targets(scores, targets.to(scores.device), ties)


def _rank_of_targets(scores: Tensor, targets: Tensor, ties: str) -> Tensor:
    """:func:`rank_of_targets` without validation (targets already on ``scores.device``)."""
    if not scores.dtype.is_floating_point:
        scores = scores.float()
    candidates = scores[:, 1:]
    if targets.dim() == 1:
        return _count_rank(candidates, scores.gather(1, targets[:, None]), ties, True)
    columns = []
    for j in range(targets.shape[1]):
        column = targets[:, j : j + 1]
        columns.append(_count_rank(candidates, scores.gather(1, column), ties, True))
    if not columns:
        dtype = torch.int64 if ties == "pessimistic" else torch.float64
        return torch.empty(targets.shape, dtype=dtype, device=scores.device)
    ranks = torch.stack(columns, dim=1)
    return ranks.masked_fill(targets == 0, -1)


def per_user_metrics(
    ranks: Tensor, ks: Sequence[int] = DEFAULT_KS, metrics: Sequence[str] = METRICS
) -> dict[str, Tensor]:
    """Per-row metric values from ranks.

    Args:
        ranks: ``[U]`` 0-based ranks (one target per row), or ``[U, T]`` with ``-1`` for
            padding slots (multi-target rows; rows with no valid slot are dropped).
        ks: cut-offs.
        metrics: subset of ``("hr", "ndcg", "mrr", "recall")``.

    Returns:
        ``{"hr@10": Tensor [U'], ...}`` float64 values in ``[0, 1]``, ``U'`` = rows kept.
    """
    ks, metrics = check_ks_metrics(ks, metrics)
    if ranks.dim() == 1:
        return _single_target_metrics(ranks.double(), ks, metrics)
    if ranks.dim() == 2:
        return _multi_target_metrics(ranks.double(), ks, metrics)
    raise ValueError(f"ranks must have shape [U] or [U, T], got {tuple(ranks.shape)}")


def _single_target_metrics(r: Tensor, ks: Sequence[int], metrics: Sequence[str]) -> dict:
    discount = 1.0 / torch.log2(r + 2.0)
    reciprocal = 1.0 / (r + 1.0)
    zero = torch.zeros((), dtype=r.dtype, device=r.device)
    out: dict[str, Tensor] = {}
    for m in metrics:
        for k in ks:
            hit = r < k
            if m in ("hr", "recall"):
                out[f"{m}@{k}"] = hit.to(r.dtype)
            elif m == "ndcg":
                out[f"{m}@{k}"] = torch.where(hit, discount, zero)
            else:  # mrr
                out[f"{m}@{k}"] = torch.where(hit, reciprocal, zero)
    return out


def _multi_target_metrics(r: Tensor, ks: Sequence[int], metrics: Sequence[str]) -> dict:
    valid = r >= 0
    n_targets = valid.sum(1)
    keep = n_targets > 0
    r, valid, n_targets = r[keep], valid[keep], n_targets[keep]
    r = r.masked_fill(~valid, float("inf"))
    first = r.min(1).values
    discount = 1.0 / torch.log2(r + 2.0)  # 0 for padding slots (rank inf)
    zero = torch.zeros((), dtype=r.dtype, device=r.device)
    out: dict[str, Tensor] = {}
    for m in metrics:
        for k in ks:
            hits = r < k
            if m == "hr":
                value = hits.any(1).to(r.dtype)
            elif m == "recall":
                value = hits.sum(1).to(r.dtype) / n_targets.to(r.dtype)
            elif m == "mrr":
                value = torch.where(first < k, 1.0 / (first + 1.0), zero)
            else:  # ndcg
                dcg = torch.where(hits, discount, zero).sum(1)
                ideal_table = torch.cumsum(
                    1.0 / torch.log2(torch.arange(k, device=r.device, dtype=r.dtype) + 2.0), 0
                )
                ideal = ideal_table[n_targets.clamp(max=k) - 1]
                value = dcg / ideal
            out[f"{m}@{k}"] = value
    return out


class MetricAccumulator:
    """Running sums of per-user metrics, so evaluation can proceed batch by batch.

    >>> acc = MetricAccumulator(ks=(10,))
    >>> acc.update(torch.tensor([0, 3, 50]))   # ranks of three users
    >>> round(acc.result()["hr@10"], 3)        # 2 of 3 users hit
    0.667
    """

    def __init__(self, ks: Sequence[int] = DEFAULT_KS, metrics: Sequence[str] = METRICS):
        self.ks, self.metrics = check_ks_metrics(ks, metrics)
        self.keys = metric_keys(self.ks, self.metrics)
        self._sums = {key: 0.0 for key in self.keys}
        self.n_users = 0

    def update(self, values: Tensor | Mapping[str, Tensor]) -> None:
        """Add a batch.

        Args:
            values: either ranks (``[b]`` or ``[b, T]``, see :func:`per_user_metrics`) or a
                mapping ``{"hr@10": Tensor [b], ...}`` of per-user values that has every key
                of this accumulator (extra keys are ignored).
        """
        if isinstance(values, Tensor):
            per_user = per_user_metrics(values, self.ks, self.metrics)
        elif isinstance(values, Mapping):
            missing = [key for key in self.keys if key not in values]
            if missing:
                raise ValueError(f"per-user metrics lack keys {missing}")
            per_user = {key: torch.as_tensor(values[key]) for key in self.keys}
        else:
            raise TypeError(f"update() takes ranks or a mapping, got {type(values).__name__}")
        sizes = {int(v.numel()) for v in per_user.values()}
        if len(sizes) != 1:
            raise ValueError(f"per-user metric tensors have different lengths: {sorted(sizes)}")
        stacked = torch.stack([per_user[key].reshape(-1).double() for key in self.keys])
        for key, total in zip(self.keys, stacked.sum(1).tolist()):
            self._sums[key] += total
        self.n_users += sizes.pop()

    def result(self) -> dict[str, float]:
        """Means over all users seen so far (NaN if none), plus ``"n_users"`` (an int)."""
        n = self.n_users
        out: dict[str, float] = {
            key: (self._sums[key] / n if n else float("nan")) for key in self.keys
        }
        out["n_users"] = n
        return out


def metrics_from_ranks(
    ranks: Tensor, ks: Sequence[int] = DEFAULT_KS, metrics: Sequence[str] = METRICS
) -> dict[str, float]:
    """Mean metrics over users, e.g. ``{"hr@10": 0.31, "ndcg@10": 0.17, ..., "n_users": 6040}``.

    Args:
        ranks: ``[U]`` or ``[U, T]`` ranks as returned by :func:`rank_of_targets`.
        ks: cut-offs.
        metrics: subset of ``("hr", "ndcg", "mrr", "recall")``.
    """
    acc = MetricAccumulator(ks, metrics)
    acc.update(ranks)
    return acc.result()
