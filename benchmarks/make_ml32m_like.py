"""Write a synthetic ``ratings.csv`` shaped like MovieLens-32M, for benchmarking the pipeline.

The file has exactly the ML-32M ``ratings.csv`` format::

    userId,movieId,rating,timestamp
    1,17,4.0,944249077
    ...

* rows sorted by ``userId`` then ``timestamp``; user ids ``1..--users`` (contiguous, like ML);
* every user has at least 20 ratings (as MovieLens guarantees); per-user counts are
  heavy-tailed (20 + log-normal, about 160 per user on average at full size, the heaviest
  users in the tens of thousands) and sum to exactly ``--rows``; no user has more than half
  of the items (unless the sizes force it);
* ``--items`` distinct movieIds, drawn without replacement from ``1..292757`` (ML-32M's
  largest id), so ids are sparse; every one of them is rated at least once;
* item popularity is Zipf-Mandelbrot, ``(rank + q) ** -2.1`` with ``q = 250 * items / 87585``
  (then each user's movies are distinct, which flattens the head): at full size the top
  movie gets ~0.24% of all ratings (ML: ~0.32%), the top 3,000 movies ~89%, and about 35%
  of movies (31k of 87.6k) have fewer than 5 ratings, so a 5-core filter removes a large
  share of items, as on the real set. Popular movies tend to have smaller ids;
* ratings are half stars 0.5..5.0 written like ML (``4.0``, ``3.5``), from user bias + movie
  quality + noise (mean ~3.5, mode 4.0); before 2003-02-18 (when MovieLens introduced half
  stars) and for a quarter of the users, ratings are whole stars;
* timestamps are integer Unix seconds between 1995-01-09 and 2023-10-12: each user has a
  start date and an activity span (many users rate everything in one sitting, others over
  months or years) with bursty gaps; ties within a user are possible, as in ML;
* duplicates (the same user rating the same movie twice) are rare but not impossible:
  users with 1,000+ ratings (or more than items/50) draw their movies by exact weighted
  sampling without replacement; other duplicates (including those made by placing the
  "every movie at least once" ratings) are redrawn from the popularity law for up to 20
  rounds and then uniformly for up to 20 more, which leaves essentially none (the summary
  prints the count).

The output depends only on the arguments (same arguments, same bytes). It is generated in
chunks of users with numpy and appended with polars; the file is written under a temporary
name and renamed when complete. Full size (32,000,204 rows, ~873 MB) takes about 45 s of
CPU (single-threaded numpy, a minute or so of wall time) and ~400 MB peak RSS. Usage::

    python benchmarks/make_ml32m_like.py --out /tmp/seqrec-bench/ml-32m-like/ratings.csv
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from seqrec.utils.io import atomic_path

MIN_PER_USER = 20
MAX_MOVIE_ID = 292_757
TS_LO = 789_652_009          # 1995-01-09, the first ML-32M timestamp
TS_HI = 1_697_155_200        # 2023-10-13, just after the last one
HALF_STARS_FROM = 1_045_526_400   # 2003-02-18: MovieLens half-star ratings introduced
HEAVY_USER = 1000            # users with this many ratings (or items/50) use exact sampling
ZIPF_S = 2.1
ZIPF_Q = 250.0               # at 87,585 items; scaled with --items

# Relative number of users whose activity starts in each year 1995..2023 (rough ML shape).
_YEAR_WEIGHTS = np.array(
    [0.5, 2.5, 2.0, 1.2, 2.0, 4.0, 2.0, 1.2, 1.2, 1.3, 1.6, 1.5, 1.3, 1.2, 1.1, 1.0,
     1.0, 1.0, 0.9, 0.9, 1.6, 3.0, 2.6, 2.4, 2.6, 2.2, 1.6, 1.3, 1.0]
)


def user_lengths(rng: np.random.Generator, rows: int, users: int, items: int) -> np.ndarray:
    """Heavy-tailed per-user counts, each >= MIN_PER_USER, summing to exactly ``rows``."""
    extra_total = rows - MIN_PER_USER * users
    cap = max(MIN_PER_USER, items // 2)
    if cap * users < rows:
        cap = max(items, -(-rows // users)) if items * users >= rows else -(-rows // users)
    cap_extra = float(cap - MIN_PER_USER)
    w = rng.lognormal(0.0, 1.4, users)
    x = w / w.sum() * extra_total
    for _ in range(100):  # water-fill: clip at the cap, hand the excess to the others
        over = x > cap_extra
        if not over.any():
            break
        excess = float((x[over] - cap_extra).sum())
        x[over] = cap_extra
        free = x < cap_extra
        x[free] += excess * w[free] / w[free].sum()
    base = np.minimum(np.floor(x), cap_extra).astype(np.int64)
    rem = extra_total - int(base.sum())
    if rem > 0:
        frac = np.where(base < cap_extra, x - base, -1.0)
        order = np.argsort(-frac, kind="stable")
        base[order[:rem]] += 1
    lengths = base + MIN_PER_USER
    assert int(lengths.sum()) == rows
    return lengths


def start_times(rng: np.random.Generator, n: int) -> np.ndarray:
    years = rng.choice(len(_YEAR_WEIGHTS), size=n, p=_YEAR_WEIGHTS / _YEAR_WEIGHTS.sum())
    y0 = 788_918_400  # 1995-01-01
    t = y0 + (years + rng.random(n)) * (365.25 * 86_400)
    return np.clip(t, TS_LO, TS_HI - 1)


class Structure:
    """Per-movie attributes shared by all chunks."""

    def __init__(self, rng: np.random.Generator, items: int):
        self.items = items
        self.movie_ids = np.sort(rng.choice(max(MAX_MOVIE_ID, items), items, replace=False) + 1)
        # popularity rank: mostly random, popular movies lean towards small ids
        key = np.arange(items) / items + rng.normal(0.0, 0.6, items)
        rank_order = np.argsort(key, kind="stable")         # item index by rank
        q = max(1.0, ZIPF_Q * items / 87_585)
        w_rank = (np.arange(1, items + 1) + q) ** -ZIPF_S
        self.weight = np.empty(items)
        self.weight[rank_order] = w_rank / w_rank.sum()
        self.log_weight = np.log(self.weight)
        self.cdf = np.cumsum(self.weight)
        self.cdf /= self.cdf[-1]
        # rating offset: noise, minus up to 0.3 stars for the obscure end of the ranking
        pct = np.empty(items)
        pct[rank_order] = np.arange(items) / items           # 0 = most popular
        self.quality = rng.normal(0.0, 0.45, items) - 0.3 * pct

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(self.cdf, rng.random(n), side="right"), self.items - 1)


def _dup_rows(key: np.ndarray, keep_first: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows (from ``rows``) whose key repeats an earlier one; ``keep_first`` rows win ties."""
    k = key[rows]
    order = np.argsort(k * 2 + (~keep_first[rows]))
    ks = k[order]
    dup = np.zeros(len(rows), dtype=bool)
    dup[1:] = ks[1:] == ks[:-1]
    return rows[order[dup]]


def make_chunk(rng: np.random.Generator, st: Structure, lengths: np.ndarray,
               first_user: int, forced_items: np.ndarray):
    """Generate the rows of users ``first_user .. first_user+len(lengths)-1``."""
    n_users = len(lengths)
    n = int(lengths.sum())
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    uidx = np.repeat(np.arange(n_users), lengths)

    # -- movies: popularity draws, exact weighted sampling without replacement for heavy users
    item = st.draw(rng, n)
    heavy = min(HEAVY_USER, max(MIN_PER_USER, st.items // 50))
    for u in np.flatnonzero(lengths >= heavy):
        L = int(lengths[u])
        keys = st.log_weight + rng.gumbel(size=st.items)
        chosen = np.argpartition(-keys, L - 1)[:L] if L < st.items else np.arange(st.items)
        item[starts[u]:starts[u] + L] = rng.permutation(chosen)[:L]
    forced = np.zeros(n, dtype=bool)
    if len(forced_items):
        pos = rng.choice(n, len(forced_items), replace=False)
        item[pos] = forced_items
        forced[pos] = True
    key = uidx.astype(np.int64) * st.items + item
    active = np.arange(n)
    dups = np.empty(0, dtype=np.int64)
    for r in range(40):
        dups = _dup_rows(key, forced, active)
        if dups.size == 0:
            break
        # popularity redraws (rejection = sampling without replacement); the few rows left
        # after 20 rounds (users holding most of the popular mass) are redrawn uniformly
        item[dups] = st.draw(rng, dups.size) if r < 20 else rng.integers(0, st.items, dups.size)
        key[dups] = uidx[dups].astype(np.int64) * st.items + item[dups]
        hit = np.zeros(n_users, dtype=bool)
        hit[uidx[dups]] = True
        active = np.flatnonzero(hit[uidx])
    else:
        dups = _dup_rows(key, forced, active)

    # -- timestamps: start + span, bursty gaps normalised onto the span
    start = start_times(rng, n_users)
    one_sitting = rng.random(n_users) < 0.45
    span = np.where(one_sitting, rng.lognormal(np.log(2 * 3600.0), 1.0, n_users),
                    rng.lognormal(np.log(150 * 86_400.0), 1.5, n_users))
    span *= (lengths / 70.0) ** 0.3
    span = np.minimum(span, TS_HI - TS_LO - 1)
    start = np.minimum(start, TS_HI - 1 - span)
    gap = rng.exponential(1.0, n) * np.where(rng.random(n) < 0.04, 200.0, 1.0)
    gap[starts] = 0.0
    cs = np.cumsum(gap)
    cs -= cs[starts][uidx]
    last = cs[starts + lengths - 1]
    rel = cs / last[uidx]
    ts = (start[uidx] + np.floor(rel * span[uidx])).astype(np.int64)

    # -- ratings
    user_bias = rng.normal(0.0, 0.45, n_users)
    whole_only = rng.random(n_users) < 0.25
    score = 3.62 + user_bias[uidx] + st.quality[item] + rng.normal(0.0, 0.85, n)
    whole = whole_only[uidx] | (ts < HALF_STARS_FROM)
    rating = np.where(whole, np.clip(np.rint(score), 1.0, 5.0),
                      np.clip(np.rint(score * 2.0) / 2.0, 0.5, 5.0))

    frame = pl.DataFrame(
        {
            "userId": (uidx + first_user).astype(np.int64),
            "movieId": st.movie_ids[item],
            "rating": rating,
            "timestamp": ts,
        }
    )
    return frame, item, int(dups.size)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output ratings.csv path")
    p.add_argument("--rows", type=int, default=32_000_204)
    p.add_argument("--users", type=int, default=200_948)
    p.add_argument("--items", type=int, default=87_585)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-rows", type=int, default=2_000_000,
                   help="rows generated per chunk (memory knob; changes the random stream)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    if a.users < 1 or a.items < 1:
        raise SystemExit("--users and --items must be positive")
    if a.rows < MIN_PER_USER * a.users:
        raise SystemExit(f"--rows {a.rows} < {MIN_PER_USER} * --users {a.users}: "
                         "every user needs at least 20 ratings")
    if a.items > a.rows:
        raise SystemExit(f"--items {a.items} > --rows {a.rows}: not every movie can be rated")
    if a.items > MAX_MOVIE_ID:
        raise SystemExit(f"--items must be <= {MAX_MOVIE_ID}")
    t0 = time.perf_counter()
    root = np.random.SeedSequence(a.seed)
    s_struct, s_len, s_forced, s_chunks = root.spawn(4)
    st = Structure(np.random.default_rng(s_struct), a.items)
    lengths = user_lengths(np.random.default_rng(s_len), a.rows, a.users, a.items)
    forced_all = np.random.default_rng(s_forced).permutation(a.items)

    # chunk boundaries (by users) and the share of "must appear" movies each chunk places
    cum = np.cumsum(lengths)
    bounds = [0]
    while bounds[-1] < a.users:
        target = (cum[bounds[-1] - 1] if bounds[-1] else 0) + a.chunk_rows
        nxt = int(np.searchsorted(cum, target, side="right"))
        bounds.append(min(a.users, max(nxt, bounds[-1] + 1)))
    rows_before = np.array([cum[b - 1] if b else 0 for b in bounds])
    forced_cut = (a.items * rows_before) // a.rows

    counts = np.zeros(a.items, dtype=np.int64)
    n_dups = 0
    progress = None
    if not a.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=a.rows, unit="row", unit_scale=True, desc="ratings.csv",
                        file=sys.stderr)
    out = Path(a.out)
    chunk_seeds = s_chunks.spawn(len(bounds) - 1)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            for c in range(len(bounds) - 1):
                lo, hi = bounds[c], bounds[c + 1]
                frame, item, d = make_chunk(
                    np.random.default_rng(chunk_seeds[c]), st, lengths[lo:hi], lo + 1,
                    forced_all[forced_cut[c]:forced_cut[c + 1]],
                )
                frame.write_csv(f, include_header=(c == 0), float_precision=1)
                counts += np.bincount(item, minlength=a.items)
                n_dups += d
                if progress is not None:
                    progress.update(frame.height)
    if progress is not None:
        progress.close()
    elapsed = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = {
        "path": str(out),
        "rows": int(counts.sum()),
        "users": a.users,
        "items": int((counts > 0).sum()),
        "items_ge5": int((counts >= 5).sum()),
        "top_item_share": float(counts.max() / counts.sum()),
        "max_user_ratings": int(lengths.max()),
        "duplicate_pairs": n_dups,
        "bytes": os.path.getsize(out),
        "seconds": round(elapsed, 2),
        "peak_rss_mb": round(peak_mb, 1),
    }
    print(
        f"wrote {summary['path']}: {summary['rows']:,} rows, {summary['users']:,} users, "
        f"{summary['items']:,} movies ({summary['items_ge5']:,} with >= 5 ratings), "
        f"top movie {100 * summary['top_item_share']:.2f}% of ratings, heaviest user "
        f"{summary['max_user_ratings']:,}, {summary['duplicate_pairs']} duplicate pairs, "
        f"{summary['bytes'] / 1e6:,.1f} MB in {summary['seconds']} s "
        f"(peak RSS {summary['peak_rss_mb']:,.0f} MB)"
    )
    return summary


if __name__ == "__main__":
    main()
