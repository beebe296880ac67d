"""mHC (Manifold-Constrained Hyper-Connections): the residual module and its wiring."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from chain_task import assert_learns_chain, chain_batch, next_item_loss

from seqrec.models import SASRecConfig, TiSASRecConfig, build_model
from seqrec.models.layers import (
    CausalSelfAttention,
    HyperConnection,
    PointWiseFeedForward,
    Residual,
    TransformerBlock,
    causal_padding_mask,
    expand_streams,
    reduce_streams,
    sinkhorn,
)
from seqrec.models.layers.mhc import sinkhorn_reference

N_ITEMS = 30
MODELS = ["sasrec", "tisasrec"]
TINY = dict(hidden_units=16, num_blocks=2, num_heads=2, dropout_rate=0.2, maxlen=24)


def make_batch(B=4, L=8, n_items=N_ITEMS, seed=0, min_len=1):
    """Right-aligned random batch with increasing timestamps; row 0 is full."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, L + 1, (B,), generator=g)
    lengths[0] = L
    valid = torch.arange(L)[None, :] >= (L - lengths)[:, None]
    items = torch.randint(1, n_items + 1, (B, L), generator=g) * valid
    gaps = torch.randint(0, 3, (B, L), generator=g) * torch.randint(0, 20000, (B, L), generator=g)
    ts = (1_600_000_000 + torch.cumsum(gaps, dim=1)) * valid
    return {"items": items.long(), "timestamps": ts.long()}


def make_model(name, seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model(name, N_ITEMS, **{**TINY, **overrides})


def hcs(model):
    return [m for m in model.modules() if isinstance(m, HyperConnection)]


def mhc_pair(name, seed=0, **mhc):
    """(plain model, mHC model) sharing every plain weight (the mHC model's own stay)."""
    plain = make_model(name, seed=seed)
    hc = make_model(name, seed=seed + 1, mhc=True, **mhc)
    missing, unexpected = hc.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected
    assert missing and all(k.split(".")[-1] in MHC_PARAMS for k in missing), missing
    return plain, hc


MHC_PARAMS = {"phi", "alpha_pre", "alpha_post", "alpha_res", "bias_pre", "bias_post", "bias_res"}


def block_streams(model, batch):
    """Output streams ``[B, L, n, D]`` of every block for ``batch`` (forward hooks)."""
    out = []
    handles = [b.register_forward_hook(lambda m, i, o: out.append(o)) for b in model.blocks]
    try:
        model(batch)
    finally:
        for h in handles:
            h.remove()
    return out


# --- Sinkhorn / doubly stochastic H_res --------------------------------------------------
@pytest.mark.parametrize("gate", [0.01, 0.1])
def test_h_res_doubly_stochastic(gate):
    """At init (gate 0.01) and with 10x larger gates and a perturbed static bias."""
    torch.manual_seed(0)
    layers = [
        HyperConnection(PointWiseFeedForward(16, 16, 0.0), 16, n=4, init_gate=gate)
        for _ in range(4)
    ]
    with torch.no_grad():
        for hc in layers:  # move the static bias away from its init too
            hc.bias_res.add_(torch.randn(4, 4) * gate)
        prod = None
        for hc in layers:
            x = torch.randn(8, 10, 4, 16) * 3
            _, _, h_res = hc.coefficients(x)
            assert h_res.shape == (8, 10, 4, 4)
            assert (h_res > 0).all()
            torch.testing.assert_close(h_res.sum(-1), torch.ones(8, 10, 4), rtol=0, atol=1e-4)
            torch.testing.assert_close(h_res.sum(-2), torch.ones(8, 10, 4), rtol=0, atol=1e-4)
            prod = h_res if prod is None else prod @ h_res
        # the product of the layers' mixings (the residual path across layers) stays DS
        torch.testing.assert_close(prod.sum(-1), torch.ones(8, 10, 4), rtol=0, atol=4e-4)
        torch.testing.assert_close(prod.sum(-2), torch.ones(8, 10, 4), rtol=0, atol=4e-4)


def test_sinkhorn_matches_log_space_reference():
    torch.manual_seed(0)
    for scale, n, it in ((1.0, 4, 20), (3.0, 3, 7), (50.0, 4, 5), (1.0, 1, 3), (2.0, 6, 1)):
        logits = (torch.randn(5, 7, n, n) * scale).requires_grad_()
        ref_logits = logits.detach().clone().requires_grad_()
        p = sinkhorn(logits, it)
        ref = sinkhorn_reference(ref_logits, it)
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p, ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(p.sum(-2), torch.ones(5, 7, n), rtol=0, atol=1e-5)
        g = torch.randn_like(p)
        p.backward(g)
        ref.backward(g)
        torch.testing.assert_close(logits.grad, ref_logits.grad, rtol=1e-4, atol=1e-5)
    x = (torch.randn(3, 4, 4, dtype=torch.float64) * 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: sinkhorn(t, 6), (x,))
    with torch.no_grad():  # converged: rows too, for moderately peaked random matrices
        p = sinkhorn(torch.randn(1000, 4, 4) * 0.5, 20)
    torch.testing.assert_close(p.sum(-1), torch.ones(1000, 4), rtol=0, atol=1e-4)


def test_expand_reduce_round_trip():
    h = torch.randn(2, 5, 8)
    x = expand_streams(h, 3)
    assert x.shape == (2, 5, 3, 8)
    assert (x == h[:, :, None]).all()
    torch.testing.assert_close(reduce_streams(x), h, rtol=0, atol=1e-6)


# --- equivalence with the plain residual -------------------------------------------------
@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("n,atol", [(1, 0.0), (4, 2e-6)])
def test_block_with_gates_zero_is_plain_block(norm_first, n, atol):
    torch.manual_seed(0)
    D, B, L = 16, 3, 7
    make = lambda cls: TransformerBlock(  # noqa: E731
        CausalSelfAttention(D, 2, 0.0),
        PointWiseFeedForward(D, D, 0.0),
        D,
        norm_first=norm_first,
        residual_cls=cls,
    )
    plain = make(Residual)
    factory = HyperConnection.configure(n=n, init_gate=0.0)
    hc = make(factory)
    for mod in plain.modules():  # non-trivial LayerNorm affine
        if isinstance(mod, torch.nn.LayerNorm):
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.normal_(0, 0.3)
    missing, unexpected = hc.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.split(".")[-1] in MHC_PARAMS for k in missing)
    x = torch.randn(B, L, D)
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[1, :3] = False
    x = x * valid[..., None]
    mask = causal_padding_mask(valid)
    want = plain(x, valid, attn_mask=mask)
    streams = hc(factory.expand_streams(x), valid, attn_mask=mask)
    assert streams.shape == (B, L, n, D)
    # streams stay identical and their mean is the plain output
    torch.testing.assert_close(streams, want[:, :, None].expand_as(streams), rtol=0, atol=atol)
    torch.testing.assert_close(factory.reduce_streams(streams), want, rtol=0, atol=atol)


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("name", MODELS)
def test_model_n1_gate0_equals_plain(name, norm_first):
    plain = make_model(name, norm_first=norm_first)
    hc = make_model(name, seed=5, norm_first=norm_first, mhc=True, mhc_expansion_rate=1,
                    mhc_init_gate=0.0)
    hc.load_state_dict(plain.state_dict(), strict=False)
    batch = make_batch(B=4, L=9)
    plain.eval(), hc.eval()
    torch.testing.assert_close(hc(batch), plain(batch), rtol=0, atol=0)
    plain.train(), hc.train()  # same dropout masks: mHC draws no random numbers
    torch.manual_seed(7)
    a = plain(batch)
    torch.manual_seed(7)
    b = hc(batch)
    torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_model_n4_gate0_equals_plain_to_rounding(name):
    plain, hc = mhc_pair(name, mhc_init_gate=0.0)
    batch = make_batch(B=4, L=9)
    plain.eval(), hc.eval()
    torch.testing.assert_close(hc(batch), plain(batch), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_model_at_init_is_close_to_plain(name):
    """Default gate 0.01: dynamic terms are O(0.01); the final hidden states (unit-scale,
    after the final LayerNorm) stay within 0.05 of the plain model's (measured ~0.01)."""
    plain, hc = mhc_pair(name)
    batch = make_batch(B=8, L=12)
    plain.eval(), hc.eval()
    with torch.no_grad():
        diff = (hc(batch) - plain(batch)).abs().max().item()
    assert 0 < diff < 0.05


# --- learning ------------------------------------------------------------------------------
def stream_spread(model, batch):
    """Max over real positions of max_i |x_i - mean(x)| at the last block, relative to the
    RMS of the merged stream."""
    with torch.no_grad():
        x = block_streams(model, batch)[-1]  # (B, L, n, D)
    valid = batch["items"] != 0
    dev = (x - x.mean(-2, keepdim=True)).abs().amax(dim=(-2, -1))[valid]
    scale = x.mean(-2)[valid].square().mean().sqrt()
    return (dev.max() / scale).item()


def test_streams_diverge_and_h_res_learns():
    n_items, L = 20, 8
    torch.manual_seed(0)
    model = build_model("sasrec", n_items, hidden_units=16, num_blocks=2, num_heads=2,
                        dropout_rate=0.0, maxlen=L, mhc=True)
    g = torch.Generator().manual_seed(1)
    probe = chain_batch(16, L, n_items, g)
    # not the very last hyper-connection: its H_res has unit column sums, so the mean merge
    # after it does not depend on it (no gradient reaches it)
    hc_last = model.blocks[-1].attn
    x_probe = torch.randn(4, L, 4, 16)
    with torch.no_grad():
        h_res0 = hc_last.coefficients(x_probe)[2]
        bias0 = hc_last.bias_res.clone()
    model.eval()
    spread0 = stream_spread(model, probe)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(20):
        loss = next_item_loss(model, chain_batch(32, L, n_items, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    spread = stream_spread(model, probe)
    with torch.no_grad():
        h_res = hc_last.coefficients(x_probe)[2]
    # at init the streams differ only through the O(gate) dynamic terms
    assert spread0 < 0.05
    assert spread > 0.08 and spread > 5 * spread0, (spread0, spread)
    print(f"stream spread {spread0:.4f} -> {spread:.4f}; H_res change "
          f"{(h_res - h_res0).abs().max().item():.4f}")
    # the streams persist: block 1 receives block 0's n distinct output streams as they are
    seen = []
    hook = model.blocks[1].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        out0 = block_streams(model, probe)[0]
    hook.remove()
    assert seen[0].shape == out0.shape and torch.equal(seen[0], out0)
    assert (out0 - out0.mean(-2, keepdim=True)).abs().max() > 1e-2
    assert (hc_last.bias_res - bias0).abs().max() > 0.03
    assert (h_res - h_res0).abs().max() > 5e-3


@pytest.mark.parametrize("name", MODELS)
def test_overfits_item_chain_with_mhc(name):
    n_items, L = 20, 8
    torch.manual_seed(0)
    model = build_model(name, n_items, hidden_units=32, num_blocks=1, num_heads=2,
                        dropout_rate=0.0, maxlen=L, mhc=True)
    assert_learns_chain(model, n_items, L)


# --- causality and padding --------------------------------------------------------------------
def perturbed_mhc_model(name, **overrides):
    """An mHC model whose hyper-connections are far from init (streams really differ)."""
    model = make_model(name, mhc=True, mhc_init_gate=0.5, **overrides).eval()
    with torch.no_grad():
        for hc in hcs(model):
            hc.bias_pre.normal_(0, 1)
            hc.bias_post.normal_(0, 1)
            hc.bias_res.normal_(0, 1)
    return model


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("name", MODELS)
def test_causality_with_mhc(name, norm_first):
    model = perturbed_mhc_model(name, norm_first=norm_first)
    batch = make_batch(B=3, L=8, min_len=8)
    base = model(batch)
    for j in (2, 5, 7):
        changed = {k: v.clone() for k, v in batch.items()}
        changed["items"][:, j] = changed["items"][:, j] % N_ITEMS + 1
        out = model(changed)
        torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, j], base[:, j])
        if model.uses_time:
            changed = {k: v.clone() for k, v in batch.items()}
            changed["timestamps"][:, j:] += 7 * 86400 + 12345
            out = model(changed)
            torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=1e-6)


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("name", MODELS)
def test_padding_with_mhc(name, norm_first):
    model = perturbed_mhc_model(name, norm_first=norm_first)
    batch = make_batch(B=4, L=8)
    extra = 5
    padded = {k: F.pad(v, (extra, 0)) for k, v in batch.items()}
    out_short = model(batch)
    out_long = model(padded)
    assert (out_long[:, :extra] == 0).all()
    torch.testing.assert_close(out_long[:, extra:], out_short, rtol=0, atol=1e-5)
    pad = padded["items"] == 0
    for x in block_streams(model, padded):  # every stream is zero at padding
        assert x.shape[2] == 4
        assert (x[pad] == 0).all()
        assert (x[~pad].abs().sum(-1) > 0).all()
    # a fully padded row stays finite (also its gradients)
    model.train()
    batch["items"][1] = 0
    batch["timestamps"][1] = 0
    hidden = model(batch)
    assert torch.isfinite(hidden).all() and (hidden[1] == 0).all()
    hidden.square().sum().backward()
    for n, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), n


# --- every argument reaches the module ---------------------------------------------------------
def test_expansion_rate_sets_streams_and_shapes():
    D = TINY["hidden_units"]
    batch = make_batch(B=2, L=6)
    counts = {}
    for n in (1, 2, 4):
        model = make_model("sasrec", mhc=True, mhc_expansion_rate=n).eval()
        for hc in hcs(model):
            assert hc.n == n
            assert hc.phi.shape == (n * D, 2 * n + n * n)
            assert hc.bias_pre.shape == hc.bias_post.shape == (n,)
            assert hc.bias_res.shape == (n, n)
        assert len(hcs(model)) == 2 * TINY["num_blocks"]
        assert all(x.shape == (2, 6, n, D) for x in block_streams(model, batch))
        counts[n] = sum(p.numel() for p in model.parameters())
    plain = sum(p.numel() for p in make_model("sasrec").parameters())
    per_hc = lambda n: n * D * (2 * n + n * n) + 3 + 2 * n + n * n  # noqa: E731
    for n, c in counts.items():
        assert c - plain == 2 * TINY["num_blocks"] * per_hc(n)


def test_sinkhorn_iter_reaches_module_and_matters():
    m1 = make_model("sasrec", mhc=True, mhc_sinkhorn_iter=1)
    m20 = make_model("sasrec", mhc=True)
    m20.load_state_dict(m1.state_dict())
    assert all(hc.sinkhorn_iter == 1 for hc in hcs(m1))
    assert all(hc.sinkhorn_iter == 20 for hc in hcs(m20))
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, 16)
    with torch.no_grad():
        for hc1, hc20 in zip(hcs(m1), hcs(m20)):
            bias = torch.randn(4, 4) * 2  # far from doubly stochastic: not converged in 1
            hc1.bias_res.copy_(bias)
            hc20.bias_res.copy_(bias)
            r1, r20 = hc1.coefficients(x)[2], hc20.coefficients(x)[2]
            assert (r1 - r20).abs().max() > 1e-2
            assert (r20.sum(-1) - 1).abs().max() < (r1.sum(-1) - 1).abs().max()


def test_init_gate_reaches_module():
    for gate in (0.0, 0.01, 0.2):
        model = make_model("tisasrec", mhc=True, mhc_init_gate=gate)
        for hc in hcs(model):
            for a in (hc.alpha_pre, hc.alpha_post, hc.alpha_res):
                assert a.item() == pytest.approx(gate)
    assert hcs(make_model("sasrec", mhc=True))[0].alpha_res.item() == pytest.approx(0.01)


@pytest.mark.parametrize("name", MODELS)
def test_no_amp_coefficients_float32_under_autocast(name):
    batch = make_batch(B=2, L=6)
    for no_amp, want in ((False, torch.bfloat16), (True, torch.float32)):
        model = make_model(name, mhc=True, mhc_no_amp=no_amp).eval()
        assert all(hc.no_amp == no_amp for hc in hcs(model))
        seen = []
        orig = HyperConnection.coefficients

        def spy(self, x):
            out = orig(self, x)
            seen.append(tuple(c.dtype for c in out))
            return out

        HyperConnection.coefficients = spy
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                hidden = model(batch)
        finally:
            HyperConnection.coefficients = orig
        assert len(seen) == 2 * TINY["num_blocks"]
        assert all(d == (want,) * 3 for d in seen), seen
        assert torch.isfinite(hidden).all()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(batch).float().square().mean().backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        assert hcs(model)[0].phi.grad is not None
        if no_amp:  # float32 Sinkhorn: doubly stochastic to 1e-4 even under autocast
            x = torch.randn(2, 6, 4, 16)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                h_res = hcs(model)[0].coefficients(x)[2]
            assert (h_res.sum(-1) - 1).abs().max() < 1e-4


def test_h_pre_and_h_post_are_used():
    """Changing any coefficient group changes the output (nothing computed and dropped)."""
    model = perturbed_mhc_model("sasrec")
    batch = make_batch(B=3, L=6)
    base = model(batch)
    # the second hyper-connection: the first one sees identical streams (all copies of the
    # embedding), where H_pre only scales the pre-LN input
    hc = hcs(model)[1]
    for attr in ("bias_pre", "bias_post", "bias_res", "alpha_pre", "alpha_post", "alpha_res"):
        with torch.no_grad():
            p = getattr(hc, attr)
            saved = p.clone()
            p.add_(torch.randn_like(p))
            changed = model(batch)
            p.copy_(saved)
        assert not torch.allclose(changed, base, atol=1e-4), attr


# --- configuration -------------------------------------------------------------------------------
def test_mhc_is_a_section_of_the_transformer_configs():
    from seqrec.models import MHCConfig

    for cfg_cls in (SASRecConfig, TiSASRecConfig):
        assert cfg_cls().mhc is None  # off unless asked for
        assert not any(f.startswith("mhc_") for f in cfg_cls.__dataclass_fields__)
    m = MHCConfig()
    assert (m.expansion_rate, m.sinkhorn_iter, m.init_gate, m.no_amp) == (4, 20, 0.01, False)  # the seed's
    model = build_model("tisasrec", N_ITEMS, hidden_units=8, mhc_expansion_rate=3, mhc_sinkhorn_iter=7,
                        mhc_init_gate=0.03, mhc_no_amp=True)
    hc = hcs(model)[0]
    assert (hc.n, hc.sinkhorn_iter, hc.no_amp) == (3, 7, True)
    assert hc.alpha_post.item() == pytest.approx(0.03)
    same = build_model("tisasrec", N_ITEMS, config=TiSASRecConfig(hidden_units=8, mhc=MHCConfig(3, 7, 0.03, True)))
    assert same.config == model.config
    assert not hcs(build_model("sasrec", N_ITEMS, hidden_units=8, mhc=False))
    assert not hcs(build_model("sasrec", N_ITEMS, hidden_units=8))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mhc_expansion_rate=0), "--mhc_expansion_rate must be a positive integer"),
        (dict(mhc_expansion_rate=2.5), "--mhc_expansion_rate must be an integer"),
        (dict(mhc_sinkhorn_iter=0), "--mhc_sinkhorn_iter must be a positive integer"),
        (dict(mhc_init_gate=-0.1), "--mhc_init_gate must be >= 0"),
        (dict(mhc_init_gate=float("nan")), "--mhc_init_gate must be a number"),
    ],
)
@pytest.mark.parametrize("name", MODELS)
def test_invalid_mhc_config(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(name, N_ITEMS, mhc=True, **kwargs)
