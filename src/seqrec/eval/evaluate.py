"""Evaluating a model: its batches through :mod:`seqrec.eval`'s protocols (any registered model)."""

from __future__ import annotations

import numpy as np
import torch

from ..data.batches import SequenceBatcher
from .protocols import full_ranking, sampled


def _to(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def evaluate(
    model,
    batcher: SequenceBatcher,
    users: np.ndarray,
    target_pos: np.ndarray,
    *,
    device="cpu",
    protocol: str = "full",
    ks=(5, 10, 20),
    batch_size: int = 1024,
    exclude_history: bool = True,
    n_negatives: int = 100,
    item_popularity=None,
    sampler: str = "uniform",
    seed: int = 0,
    autocast=None,
    progress: bool = False,
    forward_batch: int = 128,
    return_ranks: bool = False,
) -> dict | tuple[dict, torch.Tensor]:
    """Rank each user's target (flat position ``target_pos``) given the items before it.

    ``protocol="full"``: against all items (history excluded when ``exclude_history``);
    ``protocol="sampled"``: against ``n_negatives`` sampled items. ``return_ranks`` (full
    ranking only): also return the targets' 0-based ranks ``[U]`` in the order of ``users``.
    """
    if return_ranks and protocol != "full":
        raise ValueError("return_ranks is available for the full-ranking protocol only")
    was_training = model.training
    model.eval()
    users = np.asarray(users, dtype=np.int64)
    target_pos = np.asarray(target_pos, dtype=np.int64)
    # Rows sorted by history length: each batch's window is trimmed to its longest history,
    # so short users don't pay for maxlen. Metrics are means over users: order-free.
    order = np.argsort(target_pos - batcher.start[users - 1], kind="stable")
    users, target_pos = users[order], target_pos[order]
    targets = torch.from_numpy(batcher.item[target_pos].astype(np.int64))
    history = batcher.history(users, target_pos)

    def predict(r: np.ndarray) -> torch.Tensor:
        batch = _to(batcher.eval_batch(users[r], target_pos[r]), device)
        if autocast is not None:
            with autocast():
                return model.predict(batch).float()
        return model.predict(batch).float()

    def score_fn(rows: torch.Tensor) -> torch.Tensor:
        # The model runs on sub-batches of `forward_batch` rows: rows are sorted by length,
        # so each sub-batch's window is trimmed to its own longest history.
        r = rows.numpy()
        parts = [predict(r[i : i + forward_batch]) for i in range(0, len(r), forward_batch)]
        return torch.cat(parts).cpu()

    try:
        if protocol == "full":
            out = full_ranking(score_fn, users, targets, history=history, exclude_history=exclude_history,
                               ks=ks, batch_size=batch_size, progress=progress, return_ranks=return_ranks)
            if not return_ranks:
                return out
            metrics, sorted_ranks = out
            ranks = torch.empty_like(sorted_ranks)
            ranks[torch.from_numpy(order)] = sorted_ranks  # back to the caller's order
            return metrics, ranks
        if protocol == "sampled":
            from .protocols import gather_scorer

            return sampled(gather_scorer(score_fn), users, targets, n_negatives=n_negatives, sampler=sampler,
                           item_popularity=item_popularity, n_items=model.n_items, history=history,
                           exclude_history=True, seed=seed, ks=ks,
                           batch_size=batch_size, progress=progress)
        raise ValueError(f"unknown protocol {protocol!r}: use 'full' or 'sampled'")
    finally:
        model.train(was_training)
