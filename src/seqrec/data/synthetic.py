"""Synthetic interaction logs with a real, known sequential (and optionally temporal) signal.

:func:`generate` returns an :class:`~seqrec.data.interactions.Interactions` table whose
item sequences come from a hidden process that a sequential recommender can learn, so
tests and smoke runs can check that a model beats popularity, not just that it runs.

The process
-----------
*Item chains.* The items are shuffled and cut into ``n_chains`` near-equal cycles
("chains"). Every
item therefore has exactly one **chain successor** (the next item on its cycle; the last
item of a cycle wraps to the first). :func:`generate_with_truth` returns this map.

*Next item.* A user's first item is a popularity draw. Each later item is, with
probability ``p_follow``, the chain successor of the previous item; otherwise it is a fresh
popularity draw. Popularity is Zipf-like: the item of popularity rank ``r`` (ranks are a
random permutation of the items, independent of the chains) has weight ``r ** -zipf_exponent``.
So ``P(next == successor(prev)) ≈ p_follow`` (plus the small chance that a popularity draw
lands on the successor), against roughly ``1 / n_items`` for a model that ignores order.

*Time.* Gaps (seconds) between consecutive interactions of a user have session structure:
with probability ``p_session_break`` a gap starts a new session and is long (log-normal,
median ``break_gap_median`` seconds times a per-user activity factor, itself log-normal),
otherwise it is short (log-normal, median ``session_gap_median`` seconds). Every gap is at
least one second, so per-user timestamps are strictly increasing. Users start uniformly
over ``span_years`` years from 2000-01-01 (UTC).

*Time signal* (``time_signal=True``). The next item then depends on the gap: within a
session it follows the chain with probability ``p_follow`` as above, but after a session
break it follows the chain only with probability ``break_follow`` (default 0.05) and
otherwise jumps to a *popular* item, drawn from the sharper Zipf law with exponent
``break_zipf_exponent`` (default 1.5). A model that sees the gap can tell "continue the
chain" from "restart at a popular item"; a model blind to time sees a mixture. (With
``time_signal=False`` the gaps carry no information about the items.)

*Lengths and ratings.* Sequence lengths are ``min_length`` plus a log-normal amount
(``length_sigma``) whose mean is ``mean_length - min_length``, rounded: heavy-tailed,
mean close to ``mean_length``, never below ``min_length`` (and at most ``max_length`` when
given). Ratings are integers 1..5 from a user bias + item quality + noise model (popular
items are rated slightly higher), stored as floats.

Raw ids are ``1..n_users`` and ``1..n_items`` (int64); items that are never drawn simply do
not appear. Rows are grouped by user (users ascending) and chronological within a user.
Everything is vectorised numpy: 100k users × 30 interactions take about a second. The
output depends only on the arguments (the seed included); the structure (chains,
popularity ranks, item quality) depends only on ``seed`` and ``n_items``/``n_chains``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seqrec.data.interactions import Interactions

#: 2000-01-01T00:00:00Z as a Unix timestamp.
EPOCH_2000 = 946_684_800
_YEAR = 365 * 24 * 3600


@dataclass(frozen=True)
class SyntheticTruth:
    """The hidden structure behind a synthetic log (arrays indexed by raw item id).

    ``successor[i]`` is the chain successor of raw item ``i`` (index 0 unused, ``-1``);
    ``chain[i]`` the chain it lies on; ``popularity[i]`` its popularity-draw probability
    (``popularity[0] == 0``); ``quality[i]`` its rating offset.
    """

    successor: np.ndarray
    chain: np.ndarray
    popularity: np.ndarray
    quality: np.ndarray
    p_follow: float
    time_signal: bool


def _zipf_pmf(n: int, exponent: float) -> np.ndarray:
    w = np.arange(1, n + 1, dtype=np.float64) ** -float(exponent)
    return w / w.sum()


def _draw(cdf: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Inverse-CDF draws of indices from a discrete distribution given by its CDF."""
    idx = np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right")
    return np.minimum(idx, len(cdf) - 1)


def generate_with_truth(
    n_users: int = 1000,
    n_items: int = 500,
    mean_length: float = 30,
    min_length: int = 5,
    seed: int = 0,
    *,
    p_follow: float = 0.7,
    n_chains: int = 10,
    zipf_exponent: float = 1.0,
    length_sigma: float = 1.0,
    max_length: int | None = None,
    time_signal: bool = False,
    break_follow: float = 0.05,
    break_zipf_exponent: float = 1.5,
    p_session_break: float = 0.15,
    session_gap_median: float = 180.0,
    break_gap_median: float = 2 * 86_400.0,
    span_years: float = 3.0,
    source: str = "synthetic",
) -> tuple[Interactions, SyntheticTruth]:
    """Like :func:`generate`, also returning the hidden :class:`SyntheticTruth`."""
    if n_users < 1 or n_items < 2:
        raise ValueError(f"need n_users >= 1 and n_items >= 2, got {n_users}, {n_items}")
    if min_length < 1:
        raise ValueError(f"min_length must be >= 1, got {min_length}")
    if max_length is not None and max_length < min_length:
        raise ValueError(f"max_length {max_length} < min_length {min_length}")
    for name, p in (("p_follow", p_follow), ("break_follow", break_follow),
                    ("p_session_break", p_session_break)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    n_chains = int(min(max(n_chains, 1), n_items))

    root = np.random.SeedSequence(seed)
    s_struct, s_len, s_time, s_item, s_rate = root.spawn(5)

    # ---- hidden structure (depends on seed, n_items, n_chains only) ------------------
    rs = np.random.default_rng(s_struct)
    order = rs.permutation(n_items)                      # items laid out chain after chain
    lens = np.full(n_chains, n_items // n_chains, dtype=np.int64)   # near-equal cycles
    lens[: n_items % n_chains] += 1
    starts = np.concatenate(([0], np.cumsum(lens)[:-1])).astype(np.int64)
    chain_of_slot = np.repeat(np.arange(n_chains), lens)
    slot_of_item = np.empty(n_items, dtype=np.int64)
    slot_of_item[order] = np.arange(n_items)
    chain_of_item = chain_of_slot[slot_of_item]
    pos_of_item = slot_of_item - starts[chain_of_item]
    succ_slot = starts[chain_of_item] + (pos_of_item + 1) % lens[chain_of_item]
    successor = order[succ_slot]
    rank = rs.permutation(n_items)                       # popularity rank of each item
    pop = _zipf_pmf(n_items, zipf_exponent)[rank]
    pop_cdf = np.cumsum(pop)
    break_pop = _zipf_pmf(n_items, break_zipf_exponent)[rank]
    break_cdf = np.cumsum(break_pop)
    quality = rs.normal(0.0, 0.6, n_items) + 0.25 * (np.log(pop) - np.log(pop).mean()) / max(
        np.log(pop).std(), 1e-9
    )

    # ---- sequence lengths --------------------------------------------------------------
    rl = np.random.default_rng(s_len)
    extra_mean = float(mean_length) - min_length
    if extra_mean > 0:
        mu = np.log(extra_mean) - length_sigma**2 / 2
        lengths = min_length + np.rint(rl.lognormal(mu, length_sigma, n_users)).astype(np.int64)
    else:
        lengths = np.full(n_users, min_length, dtype=np.int64)
    if max_length is not None:
        np.minimum(lengths, max_length, out=lengths)
    total = int(lengths.sum())
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    first = offsets[:-1]
    user_idx = np.repeat(np.arange(n_users), lengths)

    # ---- time gaps and timestamps ------------------------------------------------------
    rt = np.random.default_rng(s_time)
    activity = rt.lognormal(0.0, 0.8, n_users)           # per-user slowness factor
    is_break = rt.random(total) < p_session_break
    short = rt.lognormal(np.log(session_gap_median), 1.0, total)
    long = rt.lognormal(np.log(break_gap_median), 1.2, total) * activity[user_idx]
    gaps = np.maximum(np.where(is_break, long, short), 1.0).astype(np.int64)
    gaps[first] = 0
    is_break[first] = False
    csum = np.cumsum(gaps)
    start = EPOCH_2000 + (rt.random(n_users) * span_years * _YEAR).astype(np.int64)
    timestamp = start[user_idx] + (csum - csum[first][user_idx])

    # ---- items --------------------------------------------------------------------------
    ri = np.random.default_rng(s_item)
    u = ri.random(total)
    if time_signal:
        follow = u < np.where(is_break, break_follow, p_follow)
    else:
        follow = u < p_follow
    follow[first] = False
    jumps = np.flatnonzero(~follow)
    jump_items = _draw(pop_cdf, ri, jumps.size)
    if time_signal:
        after_break = is_break[jumps]
        n_b = int(after_break.sum())
        if n_b:
            jump_items[after_break] = _draw(break_cdf, ri, n_b)
    # Each position continues the chain from the last jump: item = successor^k(anchor item).
    pos = np.arange(total, dtype=np.int64)
    anchor = np.zeros(total, dtype=np.int64)
    anchor[jumps] = jumps
    np.maximum.accumulate(anchor, out=anchor)           # user starts are jumps: no leaking
    anchor_item = np.empty(total, dtype=np.int64)
    anchor_item[jumps] = jump_items
    anchor_item = anchor_item[anchor]
    steps = pos - anchor
    c = chain_of_item[anchor_item]
    items = order[starts[c] + (pos_of_item[anchor_item] + steps) % lens[c]]

    # ---- ratings ------------------------------------------------------------------------
    rr = np.random.default_rng(s_rate)
    user_bias = rr.normal(0.0, 0.45, n_users)
    score = 3.55 + user_bias[user_idx] + quality[items] + rr.normal(0.0, 0.8, total)
    rating = np.clip(np.rint(score), 1, 5).astype(np.float64)

    inter = Interactions.from_columns(
        user=user_idx + 1, item=items + 1, timestamp=timestamp, rating=rating, source=source
    )
    pad = np.array([-1], dtype=np.int64)
    truth = SyntheticTruth(
        successor=np.concatenate((pad, successor + 1)),
        chain=np.concatenate((pad, chain_of_item)),
        popularity=np.concatenate(([0.0], pop)),
        quality=np.concatenate(([0.0], quality)),
        p_follow=float(p_follow),
        time_signal=bool(time_signal),
    )
    return inter, truth


def generate(
    n_users: int = 1000,
    n_items: int = 500,
    mean_length: float = 30,
    min_length: int = 5,
    seed: int = 0,
    **kwargs,
) -> Interactions:
    """Generate a synthetic interaction log with a learnable sequential signal.

    See the module docstring for the process. Keyword options (all optional):
    ``p_follow`` (0.7), ``n_chains`` (10), ``zipf_exponent`` (1.0), ``length_sigma`` (1.0),
    ``max_length`` (None), ``time_signal`` (False), ``break_follow`` (0.05),
    ``break_zipf_exponent`` (1.5), ``p_session_break`` (0.15), ``session_gap_median``
    (180 s), ``break_gap_median`` (2 days), ``span_years`` (3.0), ``source``
    ("synthetic"). Use :func:`generate_with_truth` to also get the chain successors.
    """
    inter, _ = generate_with_truth(n_users, n_items, mean_length, min_length, seed, **kwargs)
    return inter
