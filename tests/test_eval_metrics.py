"""Tests for seqrec.eval.metrics: ranks, tie/NaN policies, metrics, accumulation."""

from __future__ import annotations

import math

import pytest
import torch

from seqrec.eval import MetricAccumulator, metrics_from_ranks, per_user_metrics, rank_of_targets

INF = float("inf")


# ----------------------------------------------------------------- brute-force references


def ref_rank(row: list[float], target: int, ties: str) -> float:
    """Rank of ``target`` among items 1..n of ``row`` by plain Python counting."""
    n_items = len(row) - 1
    s_t = row[target]
    if math.isnan(s_t):
        return n_items - 1
    others = [(-INF if math.isnan(x) else x) for j, x in enumerate(row) if j not in (0, target)]
    pessimistic = sum(1 for x in others if x >= s_t)
    optimistic = sum(1 for x in others if x > s_t)
    return pessimistic if ties == "pessimistic" else (pessimistic + optimistic) / 2


def ref_rank_by_sorting(row: list[float], target: int) -> int:
    """Pessimistic rank via an explicit sort in which the target loses every tie."""
    items = [j for j in range(1, len(row))]
    order = sorted(items, key=lambda j: (-row[j], j == target))
    return order.index(target)


def ref_single_metrics(rank: float, k: int) -> dict[str, float]:
    hit = rank < k
    return {
        "hr": float(hit),
        "recall": float(hit),
        "ndcg": 1 / math.log2(rank + 2) if hit else 0.0,
        "mrr": 1 / (rank + 1) if hit else 0.0,
    }


def ref_multi_metrics(ranks: list[float], k: int) -> dict[str, float]:
    hits = [r for r in ranks if r < k]
    dcg = sum(1 / math.log2(r + 2) for r in hits)
    idcg = sum(1 / math.log2(i + 2) for i in range(min(len(ranks), k)))
    return {
        "hr": float(bool(hits)),
        "recall": len(hits) / len(ranks),
        "ndcg": dcg / idcg,
        "mrr": 1 / (min(hits) + 1) if hits else 0.0,
    }


# ----------------------------------------------------------------- hand-computed cases


def test_hand_computed_single_row():
    # items 1..5 with scores 0.5, 0.9, 0.7, 0.8, 0.1: item 3 (0.7) is 3rd -> rank 2
    scores = torch.tensor([[0.0, 0.5, 0.9, 0.7, 0.8, 0.1]])
    ranks = rank_of_targets(scores, torch.tensor([3]))
    assert ranks.tolist() == [2]
    result = metrics_from_ranks(ranks, ks=(1, 5))
    assert result["hr@1"] == 0.0
    assert result["hr@5"] == 1.0
    assert result["ndcg@5"] == pytest.approx(1 / math.log2(4))
    assert result["mrr@5"] == pytest.approx(1 / 3)
    assert result["mrr@1"] == 0.0
    assert result["recall@5"] == 1.0
    assert result["n_users"] == 1


def test_result_keys_and_plain_floats():
    result = metrics_from_ranks(torch.tensor([0, 4, 30]))
    expected = [f"{m}@{k}" for m in ("hr", "ndcg", "mrr", "recall") for k in (5, 10, 20)]
    assert list(result) == expected + ["n_users"]
    assert all(type(result[key]) is float for key in expected)
    assert type(result["n_users"]) is int
    assert result["hr@5"] == pytest.approx(2 / 3)
    assert result["ndcg@5"] == pytest.approx((1 + 1 / math.log2(6)) / 3)


def test_metrics_subset():
    result = metrics_from_ranks(torch.tensor([0, 1]), ks=(1,), metrics=("ndcg",))
    assert result == {"ndcg@1": 0.5, "n_users": 2}


# ----------------------------------------------------------------- ties


def test_constant_scores_pessimistic_and_average():
    n_items = 1000
    scores = torch.full((8, n_items + 1), 0.25)
    targets = torch.randint(1, n_items + 1, (8,))
    pess = rank_of_targets(scores, targets)
    assert pess.dtype == torch.int64
    assert pess.tolist() == [n_items - 1] * 8
    avg = rank_of_targets(scores, targets, ties="average")
    assert avg.tolist() == [(n_items - 1) / 2] * 8
    assert metrics_from_ranks(pess, ks=(10,))["hr@10"] == 0.0


def test_partial_ties():
    # target (item 2) ties with items 1 and 4; item 3 is strictly better
    scores = torch.tensor([[0.0, 1.0, 1.0, 2.0, 1.0, 0.0]])
    assert rank_of_targets(scores, torch.tensor([2])).item() == 3
    assert rank_of_targets(scores, torch.tensor([2]), ties="average").item() == 2.0


def test_unknown_tie_policy():
    with pytest.raises(ValueError, match="ties"):
        rank_of_targets(torch.zeros(1, 3), torch.tensor([1]), ties="optimistic")


# ----------------------------------------------------------------- padding and non-finite


def test_padding_column_is_never_ranked():
    torch.manual_seed(0)
    scores = torch.randn(20, 51)
    targets = torch.randint(1, 51, (20,))
    base = rank_of_targets(scores, targets)
    for pad in (1e30, INF, float("nan"), -INF):
        modified = scores.clone()
        modified[:, 0] = pad
        assert torch.equal(rank_of_targets(modified, targets), base)
        assert torch.equal(rank_of_targets(modified, targets, "average"),
                           rank_of_targets(scores, targets, "average"))


def test_nan_policy():
    scores = torch.tensor([
        [0.0, 0.5, float("nan"), 0.2, float("nan")],  # NaN non-targets count as -inf
        [0.0, 0.5, float("nan"), 0.2, 0.3],  # NaN target -> worst rank
        [0.0, -INF, 0.1, float("nan"), -INF],  # -inf target ties with everything below
    ])
    targets = torch.tensor([3, 2, 1])
    assert rank_of_targets(scores, targets).tolist() == [1, 3, 3]
    assert rank_of_targets(scores, targets, "average").tolist() == [1.0, 3.0, 2.0]


# ----------------------------------------------------------------- random vs brute force


@pytest.mark.parametrize("ties", ["pessimistic", "average"])
def test_random_ranks_match_brute_force(ties):
    gen = torch.Generator().manual_seed(1)
    n_rows, n_items = 40, 30
    scores = torch.randint(0, 8, (n_rows, n_items + 1), generator=gen).float()  # many ties
    scores[torch.rand(scores.shape, generator=gen) < 0.05] = float("nan")
    scores[torch.rand(scores.shape, generator=gen) < 0.05] = -INF
    targets = torch.randint(1, n_items + 1, (n_rows,), generator=gen)
    ranks = rank_of_targets(scores, targets, ties)
    rows = scores.tolist()
    expected = [ref_rank(rows[u], int(targets[u]), ties) for u in range(n_rows)]
    assert ranks.tolist() == expected


def test_pessimistic_rank_equals_sorting_reference():
    gen = torch.Generator().manual_seed(2)
    scores = torch.randint(0, 5, (30, 21), generator=gen).float()
    targets = torch.randint(1, 21, (30,), generator=gen)
    ranks = rank_of_targets(scores, targets).tolist()
    rows = scores.tolist()
    assert ranks == [ref_rank_by_sorting(rows[u], int(targets[u])) for u in range(30)]


def test_chunked_counting_matches_on_wide_rows():
    # wide enough that rank counting runs over several row chunks
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(300, 5001, generator=gen)
    targets = torch.randint(1, 5001, (300,), generator=gen)
    ranks = rank_of_targets(scores, targets)
    st = scores.gather(1, targets[:, None])
    expected = (scores[:, 1:] >= st).sum(1) - 1
    assert torch.equal(ranks, expected)


def test_metrics_match_brute_force():
    gen = torch.Generator().manual_seed(4)
    ranks = torch.randint(0, 40, (200,), generator=gen)
    ks = (1, 5, 10, 20)
    result = metrics_from_ranks(ranks, ks=ks)
    for k in ks:
        refs = [ref_single_metrics(r, k) for r in ranks.tolist()]
        for m in ("hr", "recall", "ndcg", "mrr"):
            assert result[f"{m}@{k}"] == pytest.approx(sum(x[m] for x in refs) / len(refs))


def test_average_ranks_give_fractional_metrics():
    result = metrics_from_ranks(torch.tensor([9.5, 10.0]), ks=(10,))
    assert result["hr@10"] == 0.5
    assert result["ndcg@10"] == pytest.approx(0.5 / math.log2(11.5))


# ----------------------------------------------------------------- multi-target


def test_multi_target_ranks_and_padding():
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.7, 0.6], [0.0, 0.1, 0.2, 0.3, 0.4]])
    targets = torch.tensor([[2, 4, 0], [0, 0, 1]])
    ranks = rank_of_targets(scores, targets)
    assert ranks.tolist() == [[1, 3, -1], [-1, -1, 3]]
    result = metrics_from_ranks(ranks, ks=(2,))
    # row 0: hits {1} of 2 targets; ndcg = (1/log2 3) / (1 + 1/log2 3); mrr = 1/2
    assert result["hr@2"] == 0.5
    assert result["recall@2"] == pytest.approx(0.25)
    assert result["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)) / 2)
    assert result["mrr@2"] == pytest.approx(0.25)


def test_multi_target_rows_without_target_are_skipped():
    ranks = torch.tensor([[0, -1], [-1, -1], [5, 1]])
    result = metrics_from_ranks(ranks, ks=(3,))
    assert result["n_users"] == 2
    assert result["hr@3"] == 1.0


@pytest.mark.parametrize("ties", ["pessimistic", "average"])
def test_multi_target_matches_brute_force(ties):
    gen = torch.Generator().manual_seed(5)
    n_rows, n_items, max_t = 50, 25, 4
    scores = torch.randint(0, 10, (n_rows, n_items + 1), generator=gen).float()
    targets = torch.zeros(n_rows, max_t, dtype=torch.long)
    for u in range(n_rows):
        count = int(torch.randint(1, max_t + 1, (1,), generator=gen))
        targets[u, :count] = torch.randperm(n_items, generator=gen)[:count] + 1
    ranks = rank_of_targets(scores, targets, ties)
    rows = scores.tolist()
    ks = (1, 3, 10)
    result = metrics_from_ranks(ranks, ks=ks)
    expected_ranks = []
    for u in range(n_rows):
        row_ranks = [ref_rank(rows[u], t, ties) for t in targets[u].tolist() if t]
        assert ranks[u, : len(row_ranks)].tolist() == row_ranks
        expected_ranks.append(row_ranks)
    for k in ks:
        refs = [ref_multi_metrics(r, k) for r in expected_ranks]
        for m in ("hr", "recall", "ndcg", "mrr"):
            assert result[f"{m}@{k}"] == pytest.approx(sum(x[m] for x in refs) / n_rows)


def test_multi_target_ndcg_is_one_for_perfect_ranking():
    scores = torch.tensor([[0.0, 0.1, 0.9, 0.8, 0.2, 0.7]])
    ranks = rank_of_targets(scores, torch.tensor([[2, 3, 5]]))
    result = metrics_from_ranks(ranks, ks=(2, 3))
    assert result["ndcg@2"] == pytest.approx(1.0)
    assert result["ndcg@3"] == pytest.approx(1.0)
    assert result["recall@2"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------- accumulator


def test_accumulator_batches_equal_one_shot():
    gen = torch.Generator().manual_seed(6)
    ranks = torch.randint(0, 50, (103,), generator=gen)
    acc = MetricAccumulator()
    for chunk in ranks.split(10):
        acc.update(chunk)
    batched, whole = acc.result(), metrics_from_ranks(ranks)
    assert batched.keys() == whole.keys()
    for key in whole:
        assert batched[key] == pytest.approx(whole[key], abs=1e-12)


def test_accumulator_accepts_per_user_mappings():
    ranks = torch.tensor([0, 3, 50, 7])
    acc = MetricAccumulator(ks=(10,), metrics=("hr", "mrr"))
    acc.update(per_user_metrics(ranks[:2], ks=(10,), metrics=("hr", "mrr")))
    acc.update({"hr@10": torch.tensor([0.0, 1.0]), "mrr@10": torch.tensor([0.0, 0.125]),
                "extra": torch.tensor([9.0])})
    assert acc.result() == pytest.approx(metrics_from_ranks(ranks, ks=(10,), metrics=("hr", "mrr")))
    with pytest.raises(ValueError, match="lack keys"):
        acc.update({"hr@10": torch.tensor([1.0])})
    with pytest.raises(ValueError, match="different lengths"):
        acc.update({"hr@10": torch.tensor([1.0]), "mrr@10": torch.tensor([1.0, 0.0])})


def test_empty_accumulator_gives_nan():
    result = MetricAccumulator(ks=(5,)).result()
    assert result["n_users"] == 0
    assert math.isnan(result["hr@5"])


# ----------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "targets, match",
    [
        (torch.tensor([0, 1]), ">= 1"),
        (torch.tensor([1, 6]), "n_items=5"),
        (torch.tensor([1.0, 2.0]), "integer"),
        (torch.tensor([1, 2, 3]), "rows"),
        (torch.tensor([[1, -1], [2, 0]]), ">= 0"),
        (torch.ones(2, 1, 1, dtype=torch.long), "shape"),
    ],
)
def test_invalid_targets(targets, match):
    with pytest.raises(ValueError, match=match):
        rank_of_targets(torch.zeros(2, 6), targets)


def test_invalid_ks_metrics_and_scores():
    with pytest.raises(ValueError, match="cut-off"):
        metrics_from_ranks(torch.tensor([1]), ks=(0,))
    with pytest.raises(ValueError, match="metrics"):
        metrics_from_ranks(torch.tensor([1]), metrics=("auc",))
    with pytest.raises(ValueError, match="n_items"):
        rank_of_targets(torch.zeros(3), torch.tensor([1]))
