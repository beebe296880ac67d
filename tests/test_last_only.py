"""The inference fast path (final block with one query) equals the full forward's last position."""

import itertools

import pytest
import torch

from seqrec.models import build_model


def _batch(B=5, L=12, n_items=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, n_items + 1, (B, L), generator=g)
    lengths = torch.tensor([L, 1, 5, 9, 3])[:B]
    pad = torch.arange(L)[None, :] < (L - lengths)[:, None]
    items[pad] = 0
    ts = torch.cumsum(torch.randint(0, 50_000, (B, L), generator=g), 1) + 1_000_000_000
    ts[pad] = 0
    nxt = torch.cat([ts[:, 1:], ts[:, -1:] + 3600], 1)
    return {"items": items, "timestamps": ts, "next_timestamps": nxt, "users": torch.arange(1, B + 1)}


@pytest.mark.parametrize("model,mhc,norm_first,impl", list(itertools.product(
    ["sasrec", "tisasrec"], [False, True], [True, False], ["sdpa", "manual"])))
def test_predict_fast_path_matches_full_forward(model, mhc, norm_first, impl):
    torch.manual_seed(0)
    extra = ({"mhc_init_gate": 0.5} if mhc else {}) | ({"time_span": 64} if model == "tisasrec" else {})
    m = build_model(model, n_items=40, hidden_units=16, num_heads=2, maxlen=12, num_blocks=2,
                    norm_first=norm_first, attn_impl=impl, **extra).eval()
    assert m.supports_last_only
    b = _batch()
    with torch.no_grad():
        full = m.score_all(m(b)[:, -1])
        fast = m.predict(b)
        last = m(b, last_only=True)
    assert last.shape == (5, 1, 16)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model", ["sasrec", "tisasrec", "ss4rec"])
def test_predict_scores_in_float32_under_autocast(model):
    # The encoder may run in bf16, but bf16 scores (~3 digits) tie many items with the target,
    # and ties count against it: the scores themselves must come from a float32 product.
    torch.manual_seed(0)
    extra = {"sasrec": {"num_heads": 2}, "tisasrec": {"num_heads": 2, "time_span": 64}, "ss4rec": {}}[model]
    m = build_model(model, n_items=40, hidden_units=16, maxlen=12, num_blocks=2, **extra).eval()
    b = _batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scores = m.predict(b)
        hidden = (m(b, last_only=True) if m.supports_last_only else m(b))[:, -1]
        naive = m.score_all(hidden)
    assert naive.dtype == torch.bfloat16  # a product left under autocast would be bf16
    assert scores.dtype == torch.float32
    with torch.no_grad():
        expected = hidden.float() @ m.output_embedding().t()
    torch.testing.assert_close(scores, expected, rtol=0, atol=0)
    assert not torch.equal(scores, expected.bfloat16().float())  # not merely bf16 scores widened
