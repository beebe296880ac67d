"""Benchmark seqrec.eval on realistic sizes.

(a) full ranking with a matrix-product scorer (user vectors [b, d] @ item embeddings.T) and
    history exclusion, e.g. 22,363 users x 12,101 items (Amazon-Beauty-like);
(b) full ranking of a precomputed score matrix, e.g. 6,040 x 3,417 (MovieLens-1M-like),
    without and with history exclusion;
(c) sampled ranking (100 uniform / popularity negatives) on the sizes of (a).

    python benchmarks/bench_eval.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from seqrec.eval import full_ranking, gather_scorer, sampled


def random_history(n_rows: int, n_items: int, mean_len: int, gen: torch.Generator):
    lengths = torch.randint(max(mean_len // 2, 0), mean_len + mean_len // 2 + 1, (n_rows,),
                            generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    items = torch.randint(1, n_items + 1, (int(offsets[-1]),), generator=gen)
    return offsets, items


def timed(fn, repeats: int) -> tuple[float, float, dict]:
    """Best wall-clock and best process CPU seconds over ``repeats`` runs, and the result.

    CPU time (all threads) is reported too because wall time on a shared machine depends on
    what else runs there.
    """
    best_wall, best_cpu, result = float("inf"), float("inf"), {}
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="report the best of N runs")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--a-users", type=int, default=22_363)
    parser.add_argument("--a-items", type=int, default=12_101)
    parser.add_argument("--a-dim", type=int, default=64)
    parser.add_argument("--a-history", type=int, default=9, help="mean history length")
    parser.add_argument("--b-users", type=int, default=6_040)
    parser.add_argument("--b-width", type=int, default=3_417, help="n_items + 1")
    parser.add_argument("--b-history", type=int, default=165, help="mean history length")
    parser.add_argument("--ties", default="pessimistic", choices=["pessimistic", "average"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rows: list[tuple[str, float, float, dict]] = []

    # (a) matrix-product scorer
    n_items = args.a_items
    user_vecs = torch.randn(args.a_users, args.a_dim, generator=gen)
    item_emb = torch.randn(n_items + 1, args.a_dim, generator=gen)
    targets_a = torch.randint(1, n_items + 1, (args.a_users,), generator=gen)
    history_a = random_history(args.a_users, n_items, args.a_history, gen)

    def score_fn(positions: torch.Tensor) -> torch.Tensor:
        return user_vecs[positions] @ item_emb.T

    def matmul_only() -> dict:
        for start in range(0, args.a_users, args.batch_size):
            score_fn(torch.arange(start, min(start + args.batch_size, args.a_users)))
        return {}

    rows.append((f"(a) matmul alone {args.a_users}x{n_items}", *timed(matmul_only, args.repeats)))
    rows.append((
        f"(a) full ranking {args.a_users}x{n_items} +hist~{args.a_history}",
        *timed(lambda: full_ranking(score_fn, user_vecs, targets_a, history=history_a,
                                    batch_size=args.batch_size, ties=args.ties), args.repeats),
    ))

    # (b) precomputed matrix
    n_items_b = args.b_width - 1
    matrix = torch.randn(args.b_users, args.b_width, generator=gen)
    targets_b = torch.randint(1, n_items_b + 1, (args.b_users,), generator=gen)
    history_b = random_history(args.b_users, n_items_b, args.b_history, gen)
    rows.append((
        f"(b) precomputed {args.b_users}x{args.b_width}",
        *timed(lambda: full_ranking(matrix, range(args.b_users), targets_b,
                                    batch_size=args.batch_size, ties=args.ties), args.repeats),
    ))
    rows.append((
        f"(b) precomputed {args.b_users}x{args.b_width} +hist~{args.b_history}",
        *timed(lambda: full_ranking(matrix, range(args.b_users), targets_b, history=history_b,
                                    batch_size=args.batch_size, ties=args.ties), args.repeats),
    ))

    # (c) sampled ranking on (a)
    popularity = torch.bincount(history_a[1], minlength=n_items + 1).float() + 1.0
    for sampler in ("uniform", "popularity"):
        rows.append((
            f"(c) sampled 100 {sampler} on (a)",
            *timed(lambda: sampled(gather_scorer(score_fn), user_vecs, targets_a,
                                   n_items=n_items, n_negatives=100, sampler=sampler,
                                   item_popularity=popularity, history=history_a,
                                   batch_size=args.batch_size, ties=args.ties), args.repeats),
        ))

    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"batch_size={args.batch_size}, ties={args.ties}, best of {args.repeats}")
    print(f"{'case':<48} {'wall s':>8} {'cpu s':>8} {'users':>7} {'hr@10':>7}")
    for name, wall, cpu, result in rows:
        users = result.get("n_users", "")
        hr = f"{result['hr@10']:.4f}" if "hr@10" in result else ""
        print(f"{name:<48} {wall:>8.3f} {cpu:>8.3f} {users!s:>7} {hr:>7}")


if __name__ == "__main__":
    main()
