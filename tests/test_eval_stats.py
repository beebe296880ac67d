"""Paired comparison statistics and the per-user ranks they are computed from."""

import math

import numpy as np
import pytest
import torch

from seqrec.eval import full_ranking, metrics_from_ranks, paired_difference, rank_of_targets


def test_paired_difference_matches_the_textbook_formulas():
    rng = np.random.default_rng(0)
    a = rng.random(500)
    b = a + rng.normal(0.01, 0.05, 500)
    r = paired_difference(torch.from_numpy(a), torch.from_numpy(b))
    d = b - a
    se = d.std(ddof=1) / math.sqrt(len(d))
    assert r["diff"] == pytest.approx(d.mean()) and r["se"] == pytest.approx(se)
    assert r["mean_a"] == pytest.approx(a.mean()) and r["mean_b"] == pytest.approx(b.mean())
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((d.mean() - 1.959964 * se, d.mean() + 1.959964 * se))
    assert r["z"] == pytest.approx(d.mean() / se)
    assert r["p"] == pytest.approx(math.erfc(abs(d.mean() / se) / math.sqrt(2)))
    assert r["n"] == 500 and r["a_better"] + r["b_better"] == int((d != 0).sum())
    wide = paired_difference(torch.from_numpy(a), torch.from_numpy(b), confidence=0.99)
    assert wide["ci_high"] - wide["ci_low"] == pytest.approx(2 * 2.575829 * se, rel=1e-5)


def test_paired_hits_reduce_to_mcnemar():
    # 0/1 hits: only discordant users matter; z is McNemar's normal statistic up to the
    # sample-variance terms (b - c)^2 / n and (n - 1) / n.
    n, only_a, only_b, both = 4000, 60, 95, 300
    a = torch.zeros(n)
    b = torch.zeros(n)
    a[:only_a] = 1
    b[only_a:only_a + only_b] = 1
    a[-both:] = b[-both:] = 1
    r = paired_difference(a, b)
    assert (r["a_better"], r["b_better"]) == (only_a, only_b)
    expected_z = (only_b - only_a) / math.sqrt((only_a + only_b - (only_b - only_a) ** 2 / n) * n / (n - 1))
    assert r["z"] == pytest.approx(expected_z)
    assert r["z"] == pytest.approx((only_b - only_a) / math.sqrt(only_a + only_b), rel=0.01)


def test_paired_difference_edge_cases_and_errors():
    same = paired_difference(torch.ones(10), torch.ones(10))
    assert same["diff"] == 0 and same["se"] == 0 and same["p"] == 1.0
    shifted = paired_difference(torch.zeros(10), torch.full((10,), 0.5))
    assert shifted["se"] == 0 and shifted["p"] == 0.0 and shifted["z"] == math.inf
    with pytest.raises(ValueError, match="same length"):
        paired_difference(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="at least 2 rows"):
        paired_difference(torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match="confidence"):
        paired_difference(torch.ones(3), torch.ones(3), confidence=95)
    with pytest.raises(ValueError, match="finite"):
        paired_difference(torch.tensor([1.0, float("nan")]), torch.ones(2))


@pytest.mark.parametrize("ties", ["pessimistic", "average"])
def test_full_ranking_returns_the_ranks_behind_its_metrics(ties):
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (37, 21), generator=g).float()  # many ties
    targets = torch.randint(1, 21, (37,), generator=g)
    metrics, ranks = full_ranking(scores, range(37), targets, ks=(5, 10), batch_size=8, ties=ties,
                                  return_ranks=True)
    expected = rank_of_targets(scores, targets, ties=ties)
    assert torch.equal(ranks, expected)
    assert metrics == pytest.approx(metrics_from_ranks(ranks, ks=(5, 10)))
    assert metrics == full_ranking(scores, range(37), targets, ks=(5, 10), batch_size=8, ties=ties)
