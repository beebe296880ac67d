"""Tests for seqrec.eval.protocols: full ranking and sampled-negative ranking."""

from __future__ import annotations

import math

import pytest
import torch

from seqrec.eval import (
    full_ranking,
    gather_scorer,
    metrics_from_ranks,
    sample_negatives,
    sampled,
)

INF = float("inf")


def make_history(lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(x) for x in lists])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    items = torch.tensor([i for x in lists for i in x], dtype=torch.long)
    return offsets, items


def random_case(seed: int, n_rows: int = 37, n_items: int = 50, max_hist: int = 8):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 20, (n_rows, n_items + 1), generator=gen).float()
    targets = torch.randint(1, n_items + 1, (n_rows,), generator=gen)
    lists = []
    for u in range(n_rows):
        length = int(torch.randint(0, max_hist + 1, (1,), generator=gen))
        items = torch.randint(0, n_items + 1, (length,), generator=gen).tolist()  # dups, 0s
        if u % 3 == 0:
            items.append(int(targets[u]))  # target also in history (repeat consumption)
        lists.append(items)
    return scores, targets, lists


def ref_full_rank(row: list[float], target: int, seen: set[int], ties: str) -> float:
    """Brute-force rank over items 1..n minus the history (the target always stays)."""
    s_t = row[target]
    others = [row[j] for j in range(1, len(row)) if j != target and j not in seen]
    pess = sum(1 for x in others if x >= s_t)
    opt = sum(1 for x in others if x > s_t)
    return pess if ties == "pessimistic" else (pess + opt) / 2


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-12), key


# ----------------------------------------------------------------- full ranking


@pytest.mark.parametrize("ties", ["pessimistic", "average"])
def test_full_ranking_with_history_matches_brute_force(ties):
    scores, targets, lists = random_case(0)
    result = full_ranking(scores, range(len(targets)), targets, history=make_history(lists),
                          ks=(1, 5, 10), ties=ties, batch_size=8)
    rows = scores.tolist()
    ranks = [ref_full_rank(rows[u], int(targets[u]), set(lists[u]), ties)
             for u in range(len(targets))]
    assert_same(result, metrics_from_ranks(torch.tensor(ranks), ks=(1, 5, 10)))


def test_history_exclusion_keeps_the_target():
    # item 2 is the target and also in the history; items 1 and 3 beat it but 1 was seen
    scores = torch.tensor([[0.0, 5.0, 1.0, 3.0, 0.5]])
    history = make_history([[1, 2, 2]])
    kept = full_ranking(scores, [7], torch.tensor([2]), history=history, ks=(1, 2))
    assert kept["hr@1"] == 0.0 and kept["hr@2"] == 1.0 and kept["mrr@2"] == 0.5
    ignored = full_ranking(scores, [7], torch.tensor([2]), history=history, ks=(2, 3),
                           exclude_history=False)
    assert ignored["hr@2"] == 0.0 and ignored["hr@3"] == 1.0


def test_history_does_not_modify_inputs():
    scores, targets, lists = random_case(1)
    original = scores.clone()
    full_ranking(scores, range(len(targets)), targets, history=make_history(lists))
    assert torch.equal(scores, original)
    # a score_fn returning views of the matrix must not corrupt it either
    full_ranking(lambda pos: scores[int(pos[0]) : int(pos[-1]) + 1], range(len(targets)),
                 targets, history=make_history(lists), batch_size=5)
    assert torch.equal(scores, original)


def test_padding_column_ignored_in_full_ranking():
    scores, targets, lists = random_case(2)
    base = full_ranking(scores, range(len(targets)), targets, history=make_history(lists))
    scores[:, 0] = 1e30
    assert_same(full_ranking(scores, range(len(targets)), targets,
                             history=make_history(lists)), base)


@pytest.mark.parametrize("batch_size", [1, 4, 16, 1000])
def test_full_ranking_function_matches_matrix_and_batch_size(batch_size):
    scores, targets, lists = random_case(3)
    history = make_history(lists)
    reference = full_ranking(scores, range(len(targets)), targets, history=history)
    calls = []

    def score_fn(positions: torch.Tensor) -> torch.Tensor:
        calls.append(positions.tolist())
        return scores[positions] * 2.0 + 1.0  # same ordering, fresh tensor

    result = full_ranking(score_fn, torch.arange(100, 100 + len(targets)), targets,
                          history=history, batch_size=batch_size)
    assert_same(result, reference)
    assert sum(calls, []) == list(range(len(targets)))
    assert result["n_users"] == len(targets)


def test_full_ranking_multi_target_matches_brute_force():
    gen = torch.Generator().manual_seed(4)
    n_rows, n_items = 20, 30
    scores = torch.randn(n_rows, n_items + 1, generator=gen)
    targets = torch.zeros(n_rows, 3, dtype=torch.long)
    lists = []
    for u in range(n_rows):
        count = 1 + u % 3
        targets[u, :count] = torch.randperm(n_items, generator=gen)[:count] + 1
        lists.append(torch.randint(1, n_items + 1, (5,), generator=gen).tolist())
    result = full_ranking(scores, range(n_rows), targets, history=make_history(lists),
                          ks=(3, 10), batch_size=6)
    rows = scores.tolist()
    expected = torch.full((n_rows, 3), -1, dtype=torch.long)
    for u in range(n_rows):
        row_targets = set(targets[u].tolist()) - {0}
        seen = set(lists[u]) - row_targets  # every target stays rankable
        for j, t in enumerate(targets[u].tolist()):
            if t:
                expected[u, j] = ref_full_rank(rows[u], t, seen, "pessimistic")
    assert_same(result, metrics_from_ranks(expected, ks=(3, 10)))


def test_full_ranking_constant_scores_is_not_flattered():
    n_items = 500
    result = full_ranking(torch.zeros(10, n_items + 1), range(10), torch.arange(1, 11), ks=(10,))
    assert result["hr@10"] == 0.0 and result["ndcg@10"] == 0.0


def test_full_ranking_empty_users():
    result = full_ranking(torch.zeros(0, 5), [], torch.zeros(0, dtype=torch.long))
    assert result["n_users"] == 0 and math.isnan(result["hr@10"])


def test_full_ranking_errors():
    scores = torch.zeros(3, 6)
    users = [1, 2, 3]
    with pytest.raises(ValueError, match="n_items=5"):
        full_ranking(scores, users, torch.tensor([1, 2, 6]))
    with pytest.raises(ValueError, match="padding"):
        full_ranking(scores, users, torch.tensor([0, 2, 3]))
    with pytest.raises(ValueError, match="rows"):
        full_ranking(scores, users, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="score matrix"):
        full_ranking(torch.zeros(2, 6), users, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"must have shape \[2, 6\]"):
        full_ranking(lambda pos: torch.zeros(len(pos), 7), users, torch.tensor([1, 2, 3]),
                     batch_size=2, n_items=5)
    with pytest.raises(ValueError, match="must have shape"):
        full_ranking(lambda pos: torch.zeros(len(pos) + 1, 6), users, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="offsets"):
        full_ranking(scores, users, torch.tensor([1, 2, 3]),
                     history=(torch.tensor([0, 1]), torch.tensor([1])))
    with pytest.raises(ValueError, match="history item ids"):
        full_ranking(scores, users, torch.tensor([1, 2, 3]), history=make_history([[1], [9], []]))
    with pytest.raises(ValueError, match="batch_size"):
        full_ranking(scores, users, torch.tensor([1, 2, 3]), batch_size=0)


# ----------------------------------------------------------------- negative sampling


def test_negatives_are_valid_and_distinct():
    n_items, n_neg = 60, 40
    gen = torch.Generator().manual_seed(5)
    targets = torch.randint(1, n_items + 1, (200,), generator=gen)
    lists = [torch.randint(1, n_items + 1, (10,), generator=gen).tolist() for _ in range(200)]
    negatives = sample_negatives(targets, n_items, n_neg, history=make_history(lists), seed=3)
    assert negatives.shape == (200, n_neg) and negatives.dtype == torch.int64
    for u, row in enumerate(negatives.tolist()):
        assert len(set(row)) == n_neg
        assert int(targets[u]) not in row
        assert not set(row) & set(lists[u])
        assert min(row) >= 1 and max(row) <= n_items


def test_dense_and_binary_search_membership_draw_the_same_negatives(monkeypatch):
    import seqrec.eval.protocols as protocols

    n_items = 80
    gen = torch.Generator().manual_seed(9)
    targets = torch.randint(1, n_items + 1, (150,), generator=gen)
    lists = [torch.randint(1, n_items + 1, (30,), generator=gen).tolist() for _ in range(150)]
    dense = sample_negatives(targets, n_items, 40, history=make_history(lists), seed=4)
    monkeypatch.setattr(protocols, "DENSE_MEMBERSHIP_CELLS", 0)  # force the binary search
    searched = sample_negatives(targets, n_items, 40, history=make_history(lists), seed=4)
    assert torch.equal(dense, searched)
    for u, row in enumerate(searched.tolist()):
        assert not set(row) & set(lists[u])


def test_negatives_reproducible_with_seed():
    targets = torch.randint(1, 1001, (300,))
    a = sample_negatives(targets, 1000, 50, seed=11)
    b = sample_negatives(targets, 1000, 50, seed=11)
    c = sample_negatives(targets, 1000, 50, seed=12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_exact_fallback_when_rounds_run_out():
    # only 10 allowed items per row for 9 negatives: the fallback must finish the rows
    targets = torch.tensor([1, 5, 11])
    lists = [[2, 3], [6], []]
    for max_rounds in (0, 1):
        negatives = sample_negatives(targets, 11, 8, history=make_history(lists), seed=0,
                                     max_rounds=max_rounds)
        for u, row in enumerate(negatives.tolist()):
            assert len(set(row)) == 8
            assert int(targets[u]) not in row and not set(row) & set(lists[u])


def test_negatives_infeasible_raises():
    with pytest.raises(ValueError, match="row 0 has only 3 items"):
        sample_negatives(torch.tensor([1]), 5, 4, history=make_history([[2]]))
    popularity = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="only 1 items"):
        sample_negatives(torch.tensor([1]), 4, 2, sampler="popularity",
                         item_popularity=popularity)


def test_popularity_sampling_follows_popularity():
    n_items = 20
    popularity = torch.zeros(n_items + 1)
    popularity[0] = 1e6  # padding entry must be ignored
    popularity[1:11] = torch.arange(1, 11).float()  # items 11..20 have popularity 0
    targets = torch.full((4000,), 20)
    negatives = sample_negatives(targets, n_items, 1, sampler="popularity",
                                 item_popularity=popularity, seed=0)
    counts = torch.bincount(negatives.flatten(), minlength=n_items + 1).double()
    assert counts[0] == 0 and counts[11:].sum() == 0
    expected = popularity[1:11].double() / popularity[1:11].sum() * 4000
    chi2 = float(((counts[1:11] - expected) ** 2 / expected).sum())
    assert chi2 < 35.0  # 9 degrees of freedom; p ~ 1e-4
    # without replacement: all 10 popular items are drawn once each
    all_popular = sample_negatives(targets[:5], n_items, 10, sampler="popularity",
                                   item_popularity=popularity, seed=1)
    assert all(sorted(row) == list(range(1, 11)) for row in all_popular.tolist())


# ----------------------------------------------------------------- sampled protocol


def test_sampled_matches_brute_force_and_gather_scorer():
    scores, targets, lists = random_case(6, n_rows=30, n_items=80)
    history = make_history(lists)
    users = range(len(targets))
    negatives = sample_negatives(targets, 80, 20, history=make_history(
        [[i for i in x if i != int(t)] for x, t in zip(lists, targets)]), seed=4)
    rows = scores.tolist()
    ranks = []
    for u in range(len(targets)):
        s_t = rows[u][int(targets[u])]
        ranks.append(sum(1 for j in negatives[u].tolist() if rows[u][j] >= s_t))
    expected = metrics_from_ranks(torch.tensor(ranks), ks=(1, 5, 10))
    kwargs = dict(n_negatives=20, history=history, seed=4, ks=(1, 5, 10))
    assert_same(sampled(scores, users, targets, **kwargs), expected)
    assert_same(sampled(gather_scorer(lambda pos: scores[pos]), users, targets, n_items=80,
                        **kwargs), expected)
    assert_same(sampled(gather_scorer(scores), users, targets, n_items=80, **kwargs), expected)


def test_sampled_score_fn_gets_target_in_column_zero():
    scores, targets, lists = random_case(7, n_rows=25, n_items=40)
    seen = []

    def score_items(positions, candidates):
        assert candidates.shape == (len(positions), 11)
        assert torch.equal(candidates[:, 0], targets[positions])
        assert not (candidates[:, 1:] == candidates[:, :1]).any()
        seen.extend(positions.tolist())
        return scores[positions[:, None], candidates]

    result = sampled(score_items, range(25), targets, n_items=40, n_negatives=10, seed=2)
    assert seen == list(range(25))
    assert_same(result, sampled(scores, range(25), targets, n_negatives=10, seed=2))


@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_sampled_independent_of_batch_size(sampler):
    scores, targets, lists = random_case(8, n_rows=41, n_items=70)
    popularity = torch.rand(71) + 0.1
    results = [
        sampled(scores, range(41), targets, n_negatives=15, sampler=sampler,
                item_popularity=popularity, history=make_history(lists), seed=9,
                batch_size=bs)
        for bs in (1, 7, 64)
    ]
    assert_same(results[0], results[1])
    assert_same(results[0], results[2])


def test_sampled_ties_and_nan():
    scores = torch.zeros(5, 31)
    constant = sampled(scores, range(5), torch.arange(1, 6), n_negatives=10, ks=(1, 10))
    assert constant["hr@10"] == 0.0
    average = sampled(scores, range(5), torch.arange(1, 6), n_negatives=10, ks=(5, 6),
                      ties="average")
    assert average["hr@5"] == 0.0 and average["hr@6"] == 1.0  # rank 5 of 11
    scores[:, 1] = float("nan")  # NaN target: worst rank
    nan = sampled(scores, range(5), torch.tensor([1, 1, 1, 1, 1]), n_negatives=10, ks=(10,),
                  ties="average")
    assert nan["hr@10"] == 0.0


def test_sampled_errors():
    scores = torch.zeros(3, 11)
    with pytest.raises(ValueError, match="n_items is required"):
        sampled(lambda p, c: torch.zeros(c.shape), range(3), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="inconsistent"):
        sampled(scores, range(3), torch.tensor([1, 2, 3]), n_items=12)
    with pytest.raises(ValueError, match="n_items=10"):
        sampled(scores, range(3), torch.tensor([1, 2, 11]), n_negatives=3)
    with pytest.raises(ValueError, match="one target per row"):
        sampled(scores, range(3), torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="sampler"):
        sampled(scores, range(3), torch.tensor([1, 2, 3]), n_negatives=3, sampler="zipf")
    with pytest.raises(ValueError, match="item_popularity"):
        sampled(scores, range(3), torch.tensor([1, 2, 3]), n_negatives=3, sampler="popularity")
    with pytest.raises(ValueError, match=r"must return \[3, 4\]"):
        sampled(lambda p, c: torch.zeros(len(p), 3), range(3), torch.tensor([1, 2, 3]),
                n_items=10, n_negatives=3)
