"""Paired comparison of two models evaluated on the same rows (users).

Two models ranked on the same test users are *paired* samples: the standard error of their
difference comes from the per-user differences, which is much smaller than the two unpaired
standard errors combined (the users that are easy for one model are mostly easy for the other).
For a 0/1 metric such as HR@10 the test below is McNemar's test in its normal form: only the
users where exactly one model hits count.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch
from torch import Tensor


def paired_difference(a: Tensor, b: Tensor, confidence: float = 0.95) -> dict[str, float]:
    """``b - a`` for per-row metric values ``a``, ``b`` ``[U]`` of the same rows.

    Returns ``mean_a``, ``mean_b``, ``diff`` (mean of ``b - a``), ``se`` (sample standard
    deviation of the differences over ``sqrt(U)``), ``ci_low`` / ``ci_high`` (normal interval at
    ``confidence``), ``z``, ``p`` (two-sided, normal approximation: fine for the thousands of
    users of a recommendation test set, not for a handful), ``n``, and ``a_better`` /
    ``b_better`` (rows where one is strictly higher).
    """
    a = torch.as_tensor(a, dtype=torch.float64).flatten()
    b = torch.as_tensor(b, dtype=torch.float64).flatten()
    if a.shape != b.shape:
        raise ValueError(f"paired values must have the same length, got {a.numel()} and {b.numel()}")
    if a.numel() < 2:
        raise ValueError(f"a paired comparison needs at least 2 rows, got {a.numel()}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("paired values must be finite")
    d = b - a
    n = d.numel()
    diff = float(d.mean())
    se = float(d.std(unbiased=True)) / math.sqrt(n)
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * se
    if se > 0:
        z = diff / se
        p = 2.0 * (1.0 - NormalDist().cdf(abs(z)))
    else:  # every difference is the same value
        z, p = (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    return {"mean_a": float(a.mean()), "mean_b": float(b.mean()), "diff": diff, "se": se,
            "ci_low": diff - half, "ci_high": diff + half, "z": z, "p": p, "n": n,
            "a_better": int((d < 0).sum()), "b_better": int((d > 0).sum())}
