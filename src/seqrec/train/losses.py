"""Training losses over all positions of a sequence (padding never contributes).

Every loss takes the model (for its scoring interface), the hidden states ``h`` [B, L, D],
the targets [B, L] (0 = no loss at that position) and, where needed, negatives. Register a
new loss with :func:`register_loss`; the trainer looks losses up by name only.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LOSSES: dict[str, Callable] = {}

# How many sampled negatives each loss needs per position (None: none / its own sampling).
NEGATIVES: dict[str, str] = {}


def register_loss(name: str, negatives: str = "none"):
    """``negatives``: "none", "per_position" (one per position) or "shared" (N per batch)."""

    def deco(fn):
        LOSSES[name] = fn
        NEGATIVES[name] = negatives
        return fn

    return deco


def get_loss(name: str) -> Callable:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


@register_loss("bce", negatives="per_position")
def bce_loss(model, h, targets, negatives=None, **_):
    """SASRec/TiSASRec papers: binary cross-entropy, one sampled negative per position."""
    mask = targets > 0
    hm = h[mask]  # (M, D)
    pos = model.score_items(hm, targets[mask].unsqueeze(-1)).squeeze(-1)
    neg = model.score_items(hm, negatives[mask].unsqueeze(-1)).squeeze(-1)
    return F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos)) + F.binary_cross_entropy_with_logits(
        neg, torch.zeros_like(neg)
    )


@register_loss("bpr", negatives="per_position")
def bpr_loss(model, h, targets, negatives=None, **_):
    """Bayesian personalised ranking: -log sigmoid(s_pos - s_neg), one negative per position."""
    mask = targets > 0
    hm = h[mask]
    pos = model.score_items(hm, targets[mask].unsqueeze(-1)).squeeze(-1)
    neg = model.score_items(hm, negatives[mask].unsqueeze(-1)).squeeze(-1)
    return -F.logsigmoid(pos - neg).mean()


@register_loss("ce")
def ce_loss(model, h, targets, **_):
    """Full softmax cross-entropy over all items (SASRec+ / RecBole CE); padding column excluded."""
    mask = targets > 0
    logits = model.score_all(h[mask])  # (M, n_items + 1)
    logits[:, 0] = float("-inf")
    return F.cross_entropy(logits.float(), targets[mask])


@register_loss("sampled_softmax", negatives="shared")
def sampled_softmax_loss(model, h, targets, negatives=None, **_):
    """Softmax over the target and N negatives, ``negatives [N]`` shared by the batch. A
    negative equal to the target is masked out."""
    mask = targets > 0
    hm = h[mask]
    t = targets[mask]
    pos = model.score_items(hm, t.unsqueeze(-1))  # (M, 1)
    neg = hm @ model.output_embedding()[negatives].T  # (M, N)
    same = negatives.unsqueeze(0) == t.unsqueeze(1)
    neg = neg.masked_fill(same, float("-inf"))
    logits = torch.cat([pos, neg], dim=1).float()
    return F.cross_entropy(logits, torch.zeros(len(t), dtype=torch.long, device=h.device))
