"""Evaluation protocols: full ranking over all items, and ranking against sampled negatives.

Both protocols are model independent: the model is reached only through a scoring function
that receives the *positions* ``0..U-1`` of the rows in the current batch (the caller looks
up the users' sequences with them). Work proceeds batch by batch under ``torch.no_grad()``
and metrics are accumulated with :class:`~seqrec.eval.metrics.MetricAccumulator`, so the
results do not depend on ``batch_size``.

History
-------
``history`` is a CSR pair ``(offsets: LongTensor [U + 1], items: LongTensor [nnz])``: row
``u`` has already interacted with ``items[offsets[u]:offsets[u + 1]]``. Item 0 entries are
ignored. With ``exclude_history=True`` those items are removed from the candidates, except
the row's target(s), which always stay rankable (repeat consumption).

Both protocols return ``{"hr@5": float, ..., "n_users": int}``.
"""

from __future__ import annotations

from typing import Callable, Sequence, Sized, Tuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from seqrec.eval.metrics import (
    DEFAULT_KS,
    METRICS,
    MetricAccumulator,
    _count_rank,
    _rank_of_targets,
    check_ks_metrics,
    check_targets,
    check_ties,
)

History = Tuple[Tensor, Tensor]
ScoreFn = Callable[[Tensor], Tensor]
"""``score_fn(batch_positions [b]) -> scores [b, n_items + 1]``."""
ItemScoreFn = Callable[[Tensor, Tensor], Tensor]
"""``score_fn_items(batch_positions [b], candidates [b, C]) -> scores [b, C]``."""

SAMPLERS = ("uniform", "popularity")


# --------------------------------------------------------------------------- validation


def _num_rows(users: Sized) -> int:
    try:
        return len(users)
    except TypeError:
        raise TypeError(
            f"users must be a sized collection (e.g. a LongTensor [U]), got {type(users).__name__}"
        ) from None


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def check_history(history: History, n_rows: int, n_items: int | None = None) -> History:
    """Validate a CSR history pair and return it as CPU ``int64`` tensors.

    Args:
        history: ``(offsets [U + 1], items [nnz])``.
        n_rows: expected ``U``.
        n_items: when given, item ids must lie in ``0..n_items`` (0 = padding, ignored).
    """
    if not (isinstance(history, (tuple, list)) and len(history) == 2):
        raise ValueError("history must be a pair (offsets [U + 1], items [nnz])")
    offsets, items = (torch.as_tensor(x).long().cpu() for x in history)
    if offsets.dim() != 1 or offsets.shape[0] != n_rows + 1:
        raise ValueError(
            f"history offsets must have shape [U + 1] = [{n_rows + 1}], got {tuple(offsets.shape)}"
        )
    if items.dim() != 1:
        raise ValueError(f"history items must be 1-D, got shape {tuple(items.shape)}")
    if int(offsets[0]) != 0 or int(offsets[-1]) != items.shape[0]:
        raise ValueError(
            f"history offsets must start at 0 and end at len(items)={items.shape[0]}, "
            f"got {int(offsets[0])} and {int(offsets[-1])}"
        )
    if n_rows and bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError("history offsets must be non-decreasing")
    if items.numel():
        lo, hi = int(items.min()), int(items.max())
        if lo < 0 or (n_items is not None and hi > n_items):
            raise ValueError(
                f"history item ids must lie in 0..n_items={n_items}, got range {lo}..{hi}"
            )
    return offsets, items


def _history_pairs(history: History, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Flat ``(rows, items)`` of history entries to exclude, rows ascending.

    Padding entries (item 0) and entries equal to a target of their row are dropped.
    """
    offsets, items = history
    n_rows = offsets.shape[0] - 1
    rows = torch.repeat_interleave(torch.arange(n_rows), offsets.diff())
    row_targets = targets[rows]
    if targets.dim() == 1:
        is_target = items == row_targets
    else:
        is_target = (items[:, None] == row_targets).any(1)
    keep = (items != 0) & ~is_target
    return rows[keep], items[keep]


def _batches(n_rows: int, batch_size: int, progress: bool, desc: str):
    bar = tqdm(total=n_rows, desc=desc, disable=not progress, unit="user", leave=False)
    for start in range(0, n_rows, batch_size):
        stop = min(start + batch_size, n_rows)
        yield start, stop
        bar.update(stop - start)
    bar.close()


# --------------------------------------------------------------------------- full ranking


@torch.no_grad()
def full_ranking(
    score_fn: ScoreFn | Tensor,
    users: Sized,
    targets: Tensor,
    *,
    history: History | None = None,
    exclude_history: bool = True,
    ks: Sequence[int] = DEFAULT_KS,
    metrics: Sequence[str] = METRICS,
    batch_size: int = 1024,
    ties: str = "pessimistic",
    n_items: int | None = None,
    progress: bool = False,
    return_ranks: bool = False,
) -> dict[str, float] | tuple[dict[str, float], Tensor]:
    """Rank each row's target(s) against all ``n_items`` items.

    Args:
        score_fn: ``score_fn(batch_positions: LongTensor [b]) -> FloatTensor [b, n_items + 1]``
            where ``batch_positions`` are the (CPU) row positions ``start..stop-1`` of the
            batch; or a precomputed score matrix ``[U, n_items + 1]``. Column 0 is padding and
            is never ranked. When masking history, ``full_ranking`` may overwrite the returned
            tensor in place unless it is a view (views, and precomputed matrices, are copied).
        users: the evaluated users, e.g. a LongTensor ``[U]`` of ids. Only ``len(users)`` is
            used: rows are identified by position.
        targets: ``[U]`` item ids in ``1..n_items``, or padded ``[U, T]`` (0 = no target).
        history: optional CSR pair ``(offsets [U + 1], items [nnz])`` of seen items.
        exclude_history: give the history items ``-inf`` (never the row's targets).
        ks: cut-offs. metrics: subset of ``("hr", "ndcg", "mrr", "recall")``.
        batch_size: rows scored at once.
        ties: ``"pessimistic"`` (default) or ``"average"``; see :mod:`seqrec.eval.metrics`.
        n_items: optional; otherwise taken from the score width.
        progress: show a tqdm bar.
        return_ranks: also return the 0-based ranks, ``[U]`` (or ``[U, T]``, -1 for padding
            slots) in row order, e.g. for paired tests (:func:`seqrec.eval.paired_difference`).

    Returns:
        ``{"hr@5": float, ..., "n_users": int}`` (means over rows; for multi-target rows,
        rows without a target are skipped); with ``return_ranks``, ``(metrics, ranks)``.
    """
    check_ties(ties)
    ks, metrics = check_ks_metrics(ks, metrics)
    _check_batch_size(batch_size)
    n_rows = _num_rows(users)
    targets = check_targets(targets, n_rows, n_items)
    matrix = score_fn if isinstance(score_fn, Tensor) else None
    if matrix is not None:
        if matrix.dim() != 2 or matrix.shape[0] != n_rows:
            raise ValueError(
                f"score matrix must have shape [U={n_rows}, n_items + 1], got {tuple(matrix.shape)}"
            )
    elif not callable(score_fn):
        raise TypeError("score_fn must be a callable or a precomputed score matrix")
    if history is not None:
        history = check_history(history, n_rows)

    acc = MetricAccumulator(ks, metrics)
    all_ranks: list[Tensor] = []
    mask_rows = mask_cols = mask_rows_cpu = None
    prepared = False
    for start, stop in _batches(n_rows, batch_size, progress, "full ranking"):
        if matrix is not None:
            scores, owned = matrix[start:stop], False
        else:
            scores = score_fn(torch.arange(start, stop))
            if not isinstance(scores, Tensor):
                raise TypeError(f"score_fn must return a Tensor, got {type(scores).__name__}")
            owned = scores._base is None and not scores.requires_grad
            scores = scores.detach()
        expected_width = None if n_items is None else n_items + 1
        if scores.dim() != 2 or scores.shape[0] != stop - start or scores.shape[1] < 2 or (
            expected_width is not None and scores.shape[1] != expected_width
        ):
            width = "n_items + 1" if expected_width is None else str(expected_width)
            raise ValueError(
                f"scores for rows {start}..{stop - 1} must have shape [{stop - start}, {width}], "
                f"got {tuple(scores.shape)}"
            )
        if not scores.dtype.is_floating_point:
            scores, owned = scores.float(), True

        if not prepared:  # first batch: n_items is known now
            n_items = scores.shape[1] - 1
            targets = check_targets(targets, n_rows, n_items)
            if history is not None and exclude_history:
                history = check_history(history, n_rows, n_items)
                mask_rows_cpu, mask_cols = _history_pairs(history, targets)
                mask_rows = mask_rows_cpu.to(scores.device)
                mask_cols = mask_cols.to(scores.device)
            prepared = True

        batch_targets = targets[start:stop].to(scores.device)
        if mask_rows is not None:
            lo, hi = torch.searchsorted(mask_rows_cpu, torch.tensor([start, stop])).tolist()
            if hi > lo:
                if not owned:
                    scores = scores.clone()
                index = (mask_rows[lo:hi] - start, mask_cols[lo:hi])
                scores.index_put_(index, torch.tensor(float("-inf"), dtype=scores.dtype,
                                                      device=scores.device))
        ranks = _rank_of_targets(scores, batch_targets, ties)
        acc.update(ranks)
        if return_ranks:
            all_ranks.append(ranks.cpu())
    if return_ranks:
        shape = (0,) if targets.dim() == 1 else (0, targets.shape[1])
        return acc.result(), torch.cat(all_ranks) if all_ranks else torch.zeros(shape, dtype=torch.long)
    return acc.result()


# --------------------------------------------------------------------------- sampled ranking


def gather_scorer(full_score_fn: ScoreFn | Tensor) -> ItemScoreFn:
    """Turn a full scoring function (or score matrix ``[U, n_items + 1]``) into an item scorer.

    The returned ``fn(batch_positions [b], candidates [b, C]) -> [b, C]`` computes (or looks
    up) the full scores and gathers the candidate columns.
    """
    if isinstance(full_score_fn, Tensor):
        matrix = full_score_fn

        def from_matrix(positions: Tensor, candidates: Tensor) -> Tensor:
            positions = positions.to(matrix.device)
            return matrix[positions[:, None], candidates.to(matrix.device)]

        return from_matrix

    def gather(positions: Tensor, candidates: Tensor) -> Tensor:
        scores = full_score_fn(positions)
        return scores.gather(1, candidates.to(scores.device))

    return gather


def _sampling_weights(
    sampler: str, item_popularity: Tensor | None, n_items: int
) -> Tensor | None:
    """``None`` for uniform sampling, else float64 weights ``[n_items + 1]`` with ``w[0] = 0``."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if sampler == "uniform":
        return None
    if item_popularity is None:
        raise ValueError('sampler="popularity" needs item_popularity [n_items + 1]')
    weights = torch.as_tensor(item_popularity).detach().to("cpu", torch.float64).clone()
    if weights.shape != (n_items + 1,):
        raise ValueError(
            f"item_popularity must have shape [n_items + 1] = [{n_items + 1}], "
            f"got {tuple(weights.shape)}"
        )
    weights[0] = 0.0
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError("item_popularity must be finite and non-negative")
    if not bool((weights > 0).any()):
        raise ValueError("item_popularity has no item with positive popularity")
    return weights


# Up to this many (row, item) cells, history membership is a dense boolean table (one gather
# per check); beyond it, a binary search over sorted (row, item) keys. Both give the same answer.
DENSE_MEMBERSHIP_CELLS = 1 << 26


class _HistoryMembership:
    """``contains(rows, items)``: is ``items[r, j]`` in the history of row ``rows[r]``?"""

    def __init__(self, hist_keys: Tensor, n_rows: int, n_items: int):
        self.keys, self.width, self.dense = hist_keys, n_items + 1, None
        if n_rows * self.width <= DENSE_MEMBERSHIP_CELLS:
            self.dense = torch.zeros(n_rows * self.width, dtype=torch.bool)
            self.dense[hist_keys] = True

    def contains(self, row_ids: Tensor, block: Tensor) -> Tensor:
        keys = row_ids[:, None] * self.width + block
        if self.dense is not None:
            return self.dense[keys]
        found = torch.searchsorted(self.keys, keys).clamp_(max=self.keys.numel() - 1)
        return self.keys[found] == keys  # keys are sorted: membership by binary search


def _invalid_negatives(
    block: Tensor, row_ids: Tensor, row_targets: Tensor, membership: _HistoryMembership | None
) -> Tensor:
    """``[r, k]`` mask of negatives to redraw: the target, history items, repeated items.

    Of equal items in a row, the first (by column) is kept and the later ones are redrawn.
    """
    bad = block == row_targets[:, None]
    if membership is not None:
        bad |= membership.contains(row_ids, block)
    values, order = block.sort(dim=1, stable=True)
    repeated = torch.zeros_like(bad)
    repeated.scatter_(1, order[:, 1:], values[:, 1:] == values[:, :-1])
    return bad | repeated


def sample_negatives(
    targets: Tensor,
    n_items: int,
    n_negatives: int = 100,
    *,
    sampler: str = "uniform",
    item_popularity: Tensor | None = None,
    history: History | None = None,
    seed: int = 0,
    max_rounds: int = 32,
) -> Tensor:
    """Draw ``n_negatives`` distinct negative item ids per row.

    Negatives lie in ``1..n_items``, are never the row's target, never an item of the row's
    ``history`` (when given), and are distinct within a row. They are drawn uniformly or
    proportionally to ``item_popularity`` (items with popularity 0 are never drawn): all rows
    are drawn up front, then collisions are redrawn in vectorised rounds (a redraw touches
    only the colliding entries, so the result is proportional sampling without replacement
    up to the order of the redraws). Rows still colliding after ``max_rounds`` rounds (only
    possible when few items are allowed) are finished exactly with a per-row
    ``torch.multinomial(..., replacement=False)`` over the allowed items.

    The result depends only on ``(targets, n_items, n_negatives, sampler, popularity,
    history, seed)``: one CPU ``torch.Generator`` seeded with ``seed`` draws every row.

    Args:
        targets: ``[U]`` target ids in ``1..n_items``.
        n_items: number of real items.
        n_negatives: negatives per row.
        sampler: ``"uniform"`` or ``"popularity"``.
        item_popularity: ``[n_items + 1]`` non-negative weights (entry 0 ignored).
        history: optional CSR pair ``(offsets [U + 1], items [nnz])`` of items to avoid.
        seed: generator seed.
        max_rounds: vectorised redraw rounds before the exact per-row fallback.

    Returns:
        CPU LongTensor ``[U, n_negatives]``.

    Raises:
        ValueError: if some row has fewer than ``n_negatives`` allowed items.
    """
    targets = torch.as_tensor(targets).cpu()
    if targets.dim() != 1:
        raise ValueError(f"sampled evaluation needs one target per row: targets [U], "
                         f"got shape {tuple(targets.shape)}")
    n_rows = targets.shape[0]
    targets = check_targets(targets, n_rows, n_items)
    if isinstance(n_negatives, bool) or not isinstance(n_negatives, int) or n_negatives < 0:
        raise ValueError(f"n_negatives must be a non-negative int, got {n_negatives!r}")
    weights = _sampling_weights(sampler, item_popularity, n_items)
    drawable = torch.ones(n_items + 1, dtype=torch.bool) if weights is None else weights > 0
    drawable[0] = False

    hist_keys = None
    n_hist = torch.zeros(n_rows, dtype=torch.long)
    if history is not None:
        offsets, items = check_history(history, n_rows, n_items)
        rows, items = _history_pairs((offsets, items), targets)
        keep = drawable[items]
        hist_keys = torch.unique(rows[keep] * (n_items + 1) + items[keep])  # sorted
        n_hist = torch.bincount(hist_keys // (n_items + 1), minlength=n_rows)
    allowed = int(drawable.sum()) - drawable[targets].long() - n_hist
    short = (allowed < n_negatives).nonzero().flatten()
    if short.numel():
        row = int(short[0])
        raise ValueError(
            f"row {row} has only {int(allowed[row])} items allowed as negatives "
            f"(not the target, not in history, positive popularity) but n_negatives="
            f"{n_negatives}; {short.numel()} row(s) are affected"
        )

    generator = torch.Generator().manual_seed(seed)
    if weights is None:

        def draw(m: int) -> Tensor:
            return torch.randint(1, n_items + 1, (m,), generator=generator)

    else:
        cdf = torch.cumsum(weights, 0)
        total = float(cdf[-1])
        last = int(drawable.nonzero().max())

        def draw(m: int) -> Tensor:
            u = torch.rand(m, dtype=torch.float64, generator=generator) * total
            return torch.searchsorted(cdf, u, right=True).clamp_(max=last)

    negatives = draw(n_rows * n_negatives).view(n_rows, n_negatives)
    if n_negatives == 0:
        return negatives
    membership = (_HistoryMembership(hist_keys, n_rows, n_items)
                  if hist_keys is not None and hist_keys.numel() else None)
    rows = torch.arange(n_rows)
    for round_ in range(max_rounds + 1):
        block = negatives[rows]
        bad = _invalid_negatives(block, rows, targets[rows], membership)
        has_bad = bad.any(1)
        rows, block, bad = rows[has_bad], block[has_bad], bad[has_bad]
        if rows.numel() == 0:
            break
        if round_ == max_rounds:
            _finish_rows_exactly(negatives, rows, bad, targets, drawable, weights,
                                 hist_keys, n_items, generator)
            break
        block[bad] = draw(int(bad.sum()))
        negatives[rows] = block
    return negatives


def _finish_rows_exactly(
    negatives: Tensor,
    rows: Tensor,
    bad: Tensor,
    targets: Tensor,
    drawable: Tensor,
    weights: Tensor | None,
    hist_keys: Tensor | None,
    n_items: int,
    generator: torch.Generator,
) -> None:
    """Replace the ``bad`` entries of ``negatives[rows]`` by an exact draw (rare; per row)."""
    base = drawable.double() if weights is None else weights
    for row, row_bad in zip(rows.tolist(), bad):
        w = base.clone()
        w[targets[row]] = 0.0
        if hist_keys is not None:
            lo, hi = torch.searchsorted(
                hist_keys, torch.tensor([row * (n_items + 1), (row + 1) * (n_items + 1)])
            ).tolist()
            w[hist_keys[lo:hi] - row * (n_items + 1)] = 0.0
        current = negatives[row]
        w[current[~row_bad]] = 0.0
        current[row_bad] = torch.multinomial(
            w, int(row_bad.sum()), replacement=False, generator=generator
        )


@torch.no_grad()
def sampled(
    score_fn_items: ItemScoreFn | Tensor,
    users: Sized,
    targets: Tensor,
    *,
    n_negatives: int = 100,
    sampler: str = "uniform",
    item_popularity: Tensor | None = None,
    n_items: int | None = None,
    history: History | None = None,
    exclude_history: bool = True,
    seed: int = 0,
    ks: Sequence[int] = DEFAULT_KS,
    metrics: Sequence[str] = METRICS,
    batch_size: int = 1024,
    ties: str = "pessimistic",
    progress: bool = False,
) -> dict[str, float]:
    """Rank each row's target against ``n_negatives`` sampled negatives.

    Negatives come from :func:`sample_negatives` (distinct per row, never the target, never
    a history item when ``exclude_history``), so they are reproducible with ``seed`` and
    independent of ``batch_size``. The rank of a target is its rank among its ``1 +
    n_negatives`` candidates, with the same tie and NaN policy as full ranking.

    Args:
        score_fn_items: ``fn(batch_positions [b], candidates [b, 1 + n_negatives]) ->
            scores [b, 1 + n_negatives]`` with the target in column 0 (candidates are CPU
            LongTensors); or a precomputed score matrix ``[U, n_items + 1]``. Use
            :func:`gather_scorer` to adapt a full scoring function.
        users: the evaluated users; only ``len(users)`` is used (rows are positions).
        targets: ``[U]`` item ids in ``1..n_items``.
        n_negatives, sampler, item_popularity, seed: see :func:`sample_negatives`.
        n_items: number of real items; may be omitted when ``item_popularity`` or a score
            matrix gives it.
        history, exclude_history: CSR history whose items are never drawn as negatives.
        ks, metrics, batch_size, ties, progress: as in :func:`full_ranking`.

    Returns:
        ``{"hr@5": float, ..., "n_users": int}``.
    """
    check_ties(ties)
    ks, metrics = check_ks_metrics(ks, metrics)
    _check_batch_size(batch_size)
    n_rows = _num_rows(users)
    n_items = _infer_n_items(n_items, item_popularity, score_fn_items)
    if isinstance(score_fn_items, Tensor):
        if score_fn_items.dim() != 2 or score_fn_items.shape[0] != n_rows:
            raise ValueError(
                f"score matrix must have shape [U={n_rows}, n_items + 1], "
                f"got {tuple(score_fn_items.shape)}"
            )
        scorer = gather_scorer(score_fn_items)
    elif callable(score_fn_items):
        scorer = score_fn_items
    else:
        raise TypeError("score_fn_items must be a callable or a precomputed score matrix")
    targets = torch.as_tensor(targets)
    if targets.dim() != 1:
        raise ValueError(f"sampled evaluation needs one target per row: targets [U], "
                         f"got shape {tuple(targets.shape)}")
    targets = check_targets(targets, n_rows, n_items).cpu()
    negatives = sample_negatives(
        targets,
        n_items,
        n_negatives,
        sampler=sampler,
        item_popularity=item_popularity,
        history=history if exclude_history else None,
        seed=seed,
    )

    acc = MetricAccumulator(ks, metrics)
    width = 1 + n_negatives
    for start, stop in _batches(n_rows, batch_size, progress, "sampled ranking"):
        candidates = torch.cat([targets[start:stop, None], negatives[start:stop]], dim=1)
        scores = scorer(torch.arange(start, stop), candidates)
        if not isinstance(scores, Tensor) or scores.shape != (stop - start, width):
            shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(
                f"score_fn_items for rows {start}..{stop - 1} must return [{stop - start}, "
                f"{width}] (target in column 0), got {shape}"
            )
        if not scores.dtype.is_floating_point:
            scores = scores.float()
        acc.update(_count_rank(scores[:, 1:], scores[:, :1], ties, self_included=False))
    return acc.result()


def _infer_n_items(
    n_items: int | None, item_popularity: Tensor | None, scores: object
) -> int:
    candidates = {}
    if n_items is not None:
        candidates["n_items"] = int(n_items)
    if item_popularity is not None:
        candidates["len(item_popularity) - 1"] = len(item_popularity) - 1
    if isinstance(scores, Tensor) and scores.dim() == 2:
        candidates["score matrix width - 1"] = scores.shape[1] - 1
    if not candidates:
        raise ValueError("n_items is required (or give item_popularity or a score matrix)")
    if len(set(candidates.values())) > 1:
        raise ValueError(f"inconsistent number of items: {candidates}")
    value = next(iter(candidates.values()))
    if value < 1:
        raise ValueError(f"n_items must be >= 1, got {value}")
    return value


__all__ = [
    "History",
    "ItemScoreFn",
    "SAMPLERS",
    "ScoreFn",
    "check_history",
    "full_ranking",
    "gather_scorer",
    "sample_negatives",
    "sampled",
]
