"""A tiny next-item task shared by the model tests: sequences that follow the item chain
1 -> 2 -> ... -> n -> 1, and a check that a model learns it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def chain_batch(B: int, L: int, n_items: int, g: torch.Generator) -> dict:
    """Right-aligned chain sequences with random start, length (>= 3) and time gaps;
    ``next_timestamps`` is the following event's time (what SS4Rec uses)."""
    start = torch.randint(1, n_items + 1, (B, 1), generator=g)
    seq = (start - 1 + torch.arange(L)) % n_items + 1
    lengths = torch.randint(3, L + 1, (B,), generator=g)
    valid = torch.arange(L)[None, :] >= (L - lengths)[:, None]
    t = 1_500_000_000 + torch.cumsum(torch.randint(0, 5000, (B, L + 1), generator=g), dim=1)
    return {"items": (seq * valid).long(), "timestamps": (t[:, :-1] * valid).long(),
            "next_timestamps": (t[:, 1:] * valid).long()}


def next_item_loss(model, batch: dict) -> torch.Tensor:
    """Full-softmax CE of predicting items[:, 1:] from positions [:, :-1] (padding excluded)."""
    inp = {k: v[:, :-1] for k, v in batch.items()}
    target = batch["items"][:, 1:]
    logits = model.score_all(model(inp))
    logits[..., 0] = float("-inf")  # never predict padding
    keep = (inp["items"] != 0) & (target != 0)
    return F.cross_entropy(logits[keep], target[keep])


def assert_learns_chain(model, n_items: int, L: int, steps: int = 60, lr: float = 1e-2) -> None:
    """Adam on chain batches: the loss falls by 10x and next-item accuracy exceeds 0.9."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(1)
    model.train()
    first = None
    for _ in range(steps):
        loss = next_item_loss(model, chain_batch(32, L, n_items, g))
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        loss = next_item_loss(model, chain_batch(256, L, n_items, g))
        test_batch = chain_batch(256, L, n_items, g)
        pred = model.predict(test_batch)[:, 1:].argmax(-1) + 1
    assert loss.item() < 0.1 * first
    target = test_batch["items"][:, -1] % n_items + 1
    assert (pred == target).float().mean() > 0.9
