"""The TiSASRec time-interval matrix against a slow pure-Python reference."""

from __future__ import annotations

import random

import pytest
import torch

from seqrec.models import TIME_UNITS, build_model, time_interval_matrix


def reference_matrix(ts, mask, time_span, unit, scale=None, personalize=False):
    """Literal definition, one pair at a time (see seqrec.models.tisasrec docstring)."""
    B, L = len(ts), len(ts[0])
    out = [[[0] * L for _ in range(L)] for _ in range(B)]
    for b in range(B):
        units = [t // unit for t in ts[b]]
        for i in range(L):
            if personalize:
                if scale is not None:
                    s = max(1, int(scale[b] // unit))
                else:  # smallest non-zero gap among real positions <= i
                    gaps = [
                        abs(units[x] - units[y])
                        for x in range(i + 1)
                        for y in range(i + 1)
                        if mask[b][x] and mask[b][y] and units[x] != units[y]
                    ]
                    s = min(gaps) if gaps else 1
            for j in range(L):
                if not (mask[b][i] and mask[b][j]):
                    continue
                d = abs(units[i] - units[j])
                if personalize:
                    d //= s
                out[b][i][j] = min(d, time_span)
    return out


def random_window(rng, B=5, L=9, sort_rows=True):
    """Timestamps with equal times, tiny, hourly and huge (years) gaps, and left padding."""
    ts, mask = [], []
    for b in range(B):
        n_real = L if b == 0 else rng.randint(0, L)  # b may give an all-padding row
        t = rng.randint(1_000_000_000, 1_700_000_000)
        row = []
        for _ in range(n_real):
            t += rng.choice([0, 0, rng.randint(1, 90), rng.randint(60, 7200),
                             rng.randint(3600, 5 * 86400), rng.randint(1, 3) * 400 * 86400])
            row.append(t)
        if not sort_rows:
            rng.shuffle(row)
        ts.append([0] * (L - n_real) + row)
        mask.append([False] * (L - n_real) + [True] * n_real)
    return ts, mask


@pytest.mark.parametrize("unit_name", list(TIME_UNITS))
@pytest.mark.parametrize("mode", ["plain", "given_scale", "window_scale"])
@pytest.mark.parametrize("sort_rows", [True, False])
def test_matches_reference(unit_name, mode, sort_rows):
    rng = random.Random(f"{unit_name}-{mode}-{sort_rows}")
    unit = TIME_UNITS[unit_name]
    for time_span in (5, 100):
        ts, mask = random_window(rng, sort_rows=sort_rows)
        scale = None
        if mode == "given_scale":  # seconds; includes 0 (user without a non-zero gap)
            scale = [rng.choice([0, 1, 59, 600, 5400, 86400 * 3]) for _ in ts]
        personalize = mode != "plain"
        got = time_interval_matrix(
            torch.tensor(ts),
            torch.tensor(mask),
            time_span,
            unit,
            None if scale is None else torch.tensor(scale),
            personalize=personalize,
        )
        want = reference_matrix(ts, mask, time_span, unit, scale, personalize)
        assert got.dtype == torch.long and got.shape == (len(ts), 9, 9)
        assert got.tolist() == want


def test_float_time_scale_is_accepted():
    ts = torch.tensor([[0, 1000, 1000 + 7200, 1000 + 3 * 7200]])
    mask = torch.ones_like(ts, dtype=torch.bool)
    got = time_interval_matrix(ts, mask, 100, 3600, torch.tensor([7200.0]))
    want = reference_matrix(ts.tolist(), mask.tolist(), 100, 3600, [7200.0], True)
    assert got.tolist() == want


def test_clipping_equal_times_and_padding():
    day = 86400
    ts = torch.tensor([[0, 0, 100, 100, 100 + 1000 * day]])
    mask = torch.tensor([[False, False, True, True, True]])
    r = time_interval_matrix(ts, mask, 50, day)
    assert r[0, 3, 2] == 0  # equal timestamps
    assert r[0, 4, 2] == 50  # 1000 days clipped to time_span
    assert (r[0, :2] == 0).all() and (r[0, :, :2] == 0).all()  # padding rows/cols


def test_time_unit_changes_matrix():
    rng = random.Random(7)
    ts, mask = random_window(rng, B=4, L=10)
    ts, mask = torch.tensor(ts), torch.tensor(mask)
    mats = {u: time_interval_matrix(ts, mask, 100, s) for u, s in TIME_UNITS.items()}
    names = list(mats)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            assert not torch.equal(mats[names[a]], mats[names[b]]), (names[a], names[b])
    # and through the model config
    batch = {"items": torch.where(mask, 1, 0), "timestamps": ts}
    valid = batch["items"] != 0
    by_unit = {
        u: build_model("tisasrec", 5, hidden_units=8, time_unit=u, time_personalize=False)
        .relation_matrix(batch, valid)
        for u in ("minute", "day")
    }
    assert not torch.equal(by_unit["minute"], by_unit["day"])


def test_personalize_flags():
    ts = torch.tensor([[0, 7200, 4 * 7200, 10 * 7200]])
    mask = torch.ones_like(ts, dtype=torch.bool)
    plain = time_interval_matrix(ts, mask, 100, 3600)
    given = time_interval_matrix(ts, mask, 100, 3600, torch.tensor([7200]))
    torch.testing.assert_close(given, torch.div(plain, 2, rounding_mode="floor"))
    with pytest.raises(ValueError, match="personalize=False"):
        time_interval_matrix(ts, mask, 100, 3600, torch.tensor([7200]), personalize=False)

    batch = {"items": torch.ones_like(ts), "timestamps": ts, "time_scale": torch.tensor([7200])}
    valid = torch.ones_like(mask)
    pers = build_model("tisasrec", 5, hidden_units=8, time_personalize=True)
    nopers = build_model("tisasrec", 5, hidden_units=8, time_personalize=False)
    assert torch.equal(pers.relation_matrix(batch, valid), given)
    assert torch.equal(nopers.relation_matrix(batch, valid), plain)  # time_scale ignored
    no_scale = {k: v for k, v in batch.items() if k != "time_scale"}
    window = time_interval_matrix(ts, mask, 100, 3600, personalize=True)
    assert torch.equal(pers.relation_matrix(no_scale, valid), window)
