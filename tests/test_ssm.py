"""State space layers: S5 scan and discretisation, selective scan (pure, reference, fused)."""

from __future__ import annotations

import sys

import pytest
import torch

from seqrec.models.ssm import (
    S5,
    Mamba,
    fused_selective_scan_available,
    hippo_legs_diagonal,
    linear_scan,
    linear_scan_ref,
    selective_scan,
    selective_scan_ref,
    zoh_coefficients,
)
from seqrec.models.ssm.selective_scan import _ChunkedSelectiveScan

F64 = torch.float64
ss_mod = sys.modules["seqrec.models.ssm.selective_scan"]  # the package re-exports a function of that name


# --- S5 ---------------------------------------------------------------------------------
def test_hippo_legs_diagonal_is_the_normal_part():
    P = 8
    lam, V = hippo_legs_diagonal(P)
    torch.testing.assert_close(lam.real, torch.full((P,), -0.5, dtype=F64))
    torch.testing.assert_close(V.conj().T @ V, torch.eye(P, dtype=torch.complex128))
    n = torch.arange(P, dtype=F64)
    r = torch.sqrt(2 * n + 1)
    A = -(r[:, None] * r[None, :]).tril() + torch.diag(n)  # HiPPO-LegS
    p = torch.sqrt(n + 0.5)
    S = (A + p[:, None] * p[None, :]).to(torch.complex128)
    torch.testing.assert_close(V @ torch.diag(lam) @ V.conj().T, S)


@pytest.mark.parametrize("dtype", [F64, torch.complex128])
@pytest.mark.parametrize("L", [1, 2, 3, 7, 16, 37])
def test_linear_scan_matches_sequential(L, dtype):
    g = torch.Generator().manual_seed(L)
    a = (torch.randn(3, L, 4, dtype=dtype, generator=g) * 0.8).requires_grad_()
    b = torch.randn(3, L, 4, dtype=dtype, generator=g).requires_grad_()
    x, x_ref = linear_scan(a, b), linear_scan_ref(a, b)
    torch.testing.assert_close(x, x_ref)
    gx = torch.randn(x.shape, dtype=dtype, generator=g)
    for p, q in zip(torch.autograd.grad(x, (a, b), gx), torch.autograd.grad(x_ref, (a, b), gx)):
        torch.testing.assert_close(p, q)


def test_linear_scan_gradcheck():
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(2, 11, 3, dtype=torch.complex128, generator=g) * 0.7).requires_grad_()
    b = torch.randn(2, 11, 3, dtype=torch.complex128, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(linear_scan, (a, b))


def test_zoh_coefficients_match_complex_formula_and_gradcheck():
    lam_re = torch.tensor([-0.5, -1e-4, -2.0, -0.5], dtype=F64, requires_grad=True)
    lam_im = torch.tensor([3.0, -100.0, 0.1, 0.0], dtype=F64, requires_grad=True)
    delta = torch.tensor([[0.0, 1e-9, 0.3, 2.0], [5.0, 1e6, 2.0, 1e-3]], dtype=F64, requires_grad=True)
    lam = torch.complex(lam_re, lam_im)
    a, gamma = zoh_coefficients(lam, delta)
    z = lam * delta
    torch.testing.assert_close(a, torch.exp(z))
    torch.testing.assert_close(gamma, torch.expm1(z) / lam)
    # delta = 0: Abar = 1 and gamma = 0 exactly
    assert a[0, 0] == 1 and gamma[0, 0] == 0

    def f(lr, li, d):
        a, g = zoh_coefficients(torch.complex(lr, li), d)
        return torch.view_as_real(a), torch.view_as_real(g)

    small = (lam_re.detach()[[0, 2]].requires_grad_(), lam_im.detach()[[0, 2]].requires_grad_(),
             torch.tensor([[0.0, 0.3], [1e-6, 40.0]], dtype=F64, requires_grad=True))
    assert torch.autograd.gradcheck(f, small)


def test_zoh_small_steps_keep_precision_in_float32():
    # a 1-second gap in days times step 1e-3: exp(z) - 1 would round to 0 in float32
    lam = torch.complex(torch.tensor([-0.5]), torch.tensor([3.0]))
    delta = torch.tensor([[1e-3 / 86400]])
    _, gamma = zoh_coefficients(lam, delta)
    torch.testing.assert_close(gamma.real, delta, rtol=1e-4, atol=0)


def _s5_inputs(B=3, L=17, H=6, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, L, H, dtype=dtype, generator=g)
    dt = torch.rand(B, L, dtype=dtype, generator=g) * torch.tensor([0.1, 10.0, 1e3], dtype=dtype)[
        torch.randint(0, 3, (B, L), generator=g)]
    dt[:, 3] = 0.0
    if L > 9:  # very large gaps (1e6, 1e9 units)
        dt[0, 5] = 1e6
        dt[1, 9] = 1e9
    return u, dt


def test_s5_parallel_equals_sequential_values_and_grads():
    torch.manual_seed(0)
    par = S5(6, 5).double()
    seq = S5(6, 5, scan="sequential").double()
    seq.load_state_dict(par.state_dict())
    u, dt = _s5_inputs()
    u.requires_grad_()
    y_par, y_seq = par(u, dt), seq(u, dt)
    assert torch.isfinite(y_par).all()
    torch.testing.assert_close(y_par, y_seq)
    gy = torch.randn_like(y_par)
    g_par = torch.autograd.grad(y_par, [u, *par.parameters()], gy)
    g_seq = torch.autograd.grad(y_seq, [u, *seq.parameters()], gy)
    for (name, _), p, q in zip([("u", None), *par.named_parameters()], g_par, g_seq):
        assert torch.isfinite(p).all(), name
        torch.testing.assert_close(p, q, msg=name)


def test_s5_gradcheck_parameters():
    torch.manual_seed(1)
    m = S5(3, 4).double()
    u, dt = _s5_inputs(B=2, L=6, H=3)
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in m.parameters())

    def f(u, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (u, dt))

    assert torch.autograd.gradcheck(f, (u.requires_grad_(), *params))


def test_s5_float32_huge_gaps_finite():
    torch.manual_seed(0)
    m = S5(8, 8)
    u, dt = _s5_inputs(B=4, L=20, H=8, dtype=torch.float32)
    dt[2] = 3e9  # gaps of ~100 years in seconds
    u.requires_grad_()
    y = m(u, dt)
    y.square().sum().backward()
    assert torch.isfinite(y).all()
    for n, p in m.named_parameters():
        assert torch.isfinite(p.grad).all(), n
    assert torch.isfinite(u.grad).all()


def test_s5_zero_gap_leaves_state_unchanged():
    torch.manual_seed(0)
    m = S5(5, 6).double()
    u, dt = _s5_inputs(B=2, L=9, H=5)
    k = 4
    dt[:, k] = 0.0
    y = m(u, dt)
    D = m.D.detach()
    # Re(C x_k) = Re(C x_{k-1}): the state did not move
    torch.testing.assert_close(y[:, k] - D * u[:, k], y[:, k - 1] - D * u[:, k - 1])
    # the input at k reaches only y_k, through the D skip
    u2 = u.clone()
    u2[:, k] += 3.0
    y2 = m(u2, dt)
    torch.testing.assert_close(y2[:, k + 1 :], y[:, k + 1 :])
    torch.testing.assert_close(y2[:, k] - y[:, k], 3.0 * D.expand(2, -1))
    # zero input and zero gap (padding) at the start: outputs there are 0
    u[:, :3], dt[:, :3] = 0.0, 0.0
    assert (m(u, dt)[:, :3] == 0).all()


def test_s5_output_depends_on_gap():
    torch.manual_seed(0)
    m = S5(4, 4).double()
    u, dt = _s5_inputs(B=1, L=6, H=4)
    y = m(u, dt)
    dt2 = dt.clone()
    dt2[:, 2] *= 2
    y2 = m(u, dt2)
    torch.testing.assert_close(y2[:, :2], y[:, :2])
    assert not torch.allclose(y2[:, 2], y[:, 2])


# --- selective scan ---------------------------------------------------------------------
def _ss_inputs(B=2, D=3, N=4, L=11, dtype=F64, seed=0, zero_A=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, dtype=dtype, generator=g)  # noqa: E731
    A = -torch.rand(D, N, dtype=dtype, generator=g) - 0.1
    if zero_A:
        A[0, 1] = 0.0
    args = [r(B, D, L), r(B, D, L) * 0.5, A, r(B, N, L), r(B, N, L), r(D), r(B, D, L), r(D)]
    return [t.requires_grad_() for t in args]


@pytest.mark.parametrize("chunk", [1, 3, 4, 16])
@pytest.mark.parametrize("zero_A", [False, True])
def test_selective_scan_chunked_matches_reference(chunk, zero_A):
    args = _ss_inputs(zero_A=zero_A)
    y = selective_scan(*args, delta_softplus=True, chunk_size=chunk, use_fast_path=False)
    y_ref = selective_scan_ref(*args, delta_softplus=True)
    torch.testing.assert_close(y, y_ref)
    gy = torch.randn_like(y)
    for i, (p, q) in enumerate(zip(torch.autograd.grad(y, args, gy), torch.autograd.grad(y_ref, args, gy))):
        torch.testing.assert_close(p, q, msg=f"input {i}")


@pytest.mark.parametrize("tile_elements", [1, 3 * 3 * 4 * 2])  # one row per tile; tiles of 2 rows and a ragged last one
def test_selective_scan_batch_tiles_match_reference(monkeypatch, tile_elements):
    monkeypatch.setattr(ss_mod, "TILE_ELEMENTS", tile_elements)
    assert len(ss_mod.batch_tiles(5, 3, 3, 4)) == (5 if tile_elements == 1 else 3)
    args = _ss_inputs(B=5, zero_A=True)
    y = selective_scan(*args, delta_softplus=True, chunk_size=3, use_fast_path=False)
    y_ref = selective_scan_ref(*args, delta_softplus=True)
    torch.testing.assert_close(y, y_ref)
    gy = torch.randn_like(y)
    for i, (p, q) in enumerate(zip(torch.autograd.grad(y, args, gy), torch.autograd.grad(y_ref, args, gy))):
        torch.testing.assert_close(p, q, msg=f"input {i}")


def test_selective_scan_without_optional_inputs():
    u, delta, A, B, C = _ss_inputs(L=6)[:5]
    delta = delta.detach().abs().requires_grad_()
    y = selective_scan(u, delta, A, B, C, chunk_size=4, use_fast_path=False)
    torch.testing.assert_close(y, selective_scan_ref(u, delta, A, B, C))


def test_selective_scan_gradcheck():
    args = _ss_inputs(B=2, D=2, N=3, L=7)
    f = lambda *a: selective_scan(*a, delta_softplus=True, chunk_size=3, use_fast_path=False)  # noqa: E731
    assert torch.autograd.gradcheck(f, tuple(args))


def test_selective_scan_float32_close_to_float64():
    args = _ss_inputs(B=2, D=8, N=16, L=40, seed=3)
    y64 = selective_scan_ref(*args, delta_softplus=True)
    args32 = [a.detach().float() for a in args]
    y32 = selective_scan(*args32, delta_softplus=True, use_fast_path=False)
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-4)


def test_selective_scan_backward_memory_is_linear_in_state():
    """Autograd keeps no [B, D, L, N] tensor: saved tensors are O(B L D + B D N L / chunk)."""
    B, D, N, L, chunk = 2, 32, 64, 64, 16
    args = _ss_inputs(B=B, D=D, N=N, L=L, dtype=torch.float32)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan(*args, delta_softplus=True, chunk_size=chunk, use_fast_path=False)
    full = B * D * L * N
    # inputs [B, D, L] / [B, N, L] and the chunk-start states [L / chunk, B, D, N]
    assert max(saved) <= max(B * D * L, B * N * L, B * D * N * (L // chunk))
    assert sum(saved) < full / 3
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan_ref(*args, delta_softplus=True)
    assert sum(saved) > full  # the reference keeps every step


def test_chunked_scan_function_time_major_shapes():
    L, B, D, N = 5, 2, 3, 4
    g = torch.Generator().manual_seed(0)
    u, delta = torch.randn(L, B, D, generator=g), torch.rand(L, B, D, generator=g)
    A, Bm, Cm = -torch.rand(D, N, generator=g), torch.randn(L, B, N, generator=g), torch.randn(L, B, N, generator=g)
    y = _ChunkedSelectiveScan.apply(u, delta, A, Bm, Cm, 2)
    assert y.shape == (L, B, D)


def _mamba_inputs(B=3, L=10, H=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, H, generator=g)
    lengths = torch.tensor([L, 6, 1])[:B]
    valid = torch.arange(L)[None, :] >= (L - lengths)[:, None]
    return x * valid[..., None], valid


def test_mamba_pure_path_equals_reference_scan(monkeypatch):
    torch.manual_seed(0)
    m = Mamba(8, d_state=4, d_conv=4, expand=2).double()
    x, valid = _mamba_inputs()
    x = x.double().requires_grad_()
    y = m(x, valid)
    g = torch.autograd.grad(y.square().sum(), [x, *m.parameters()])

    def ref(*a, use_fast_path=True, chunk_size=None, **k):
        return selective_scan_ref(*a, **k)

    monkeypatch.setattr(ss_mod, "selective_scan", ref)
    y_ref = m(x, valid)
    g_ref = torch.autograd.grad(y_ref.square().sum(), [x, *m.parameters()])
    torch.testing.assert_close(y, y_ref)
    for p, q in zip(g, g_ref):
        torch.testing.assert_close(p, q)


def test_mamba_conv_matches_conv1d():
    torch.manual_seed(0)
    m = Mamba(8, d_state=4, d_conv=4)
    x = torch.randn(2, 9, m.d_inner)
    ref = m.conv1d(x.transpose(1, 2))[..., :9].transpose(1, 2)
    torch.testing.assert_close(m._causal_conv(x), ref)


def test_mamba_causal_and_padding_invariant():
    torch.manual_seed(0)
    m = Mamba(8, d_state=4).eval()
    x, valid = _mamba_inputs()
    y = m(x, valid)
    x2 = x.clone()
    x2[:, 7] += 1.0
    y2 = m(x2, valid)
    torch.testing.assert_close(y2[:, :7], y[:, :7], rtol=0, atol=0)
    extra = 4
    xp = torch.nn.functional.pad(x, (0, 0, extra, 0))
    vp = torch.nn.functional.pad(valid, (extra, 0))
    yp = m(xp, vp)
    torch.testing.assert_close(yp[:, extra:][valid], y[valid], rtol=0, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available() or not fused_selective_scan_available(),
                    reason="needs CUDA and mamba_ssm's fused selective scan")
def test_fused_and_pure_selective_scan_agree():  # pragma: no cover - GPU only
    args = [a.detach().float().cuda().requires_grad_() for a in _ss_inputs(B=2, D=16, N=8, L=64)]
    y_f = selective_scan(*args, delta_softplus=True, use_fast_path=True)
    y_p = selective_scan(*args, delta_softplus=True, use_fast_path=False)
    torch.testing.assert_close(y_f, y_p, rtol=1e-3, atol=1e-3)
    gy = torch.randn_like(y_f)
    for p, q in zip(torch.autograd.grad(y_f, args, gy), torch.autograd.grad(y_p, args, gy)):
        torch.testing.assert_close(p, q, rtol=1e-2, atol=1e-2)


# --- the graph-export paths (real arithmetic, no in-place writes) tied to the references ---
@pytest.mark.parametrize("L", [1, 2, 7, 16, 33])
def test_complex_pairs_scan_equals_the_sequential_scan(L):
    from seqrec.models.ssm.s5 import linear_scan_pairs

    g = torch.Generator().manual_seed(L)
    ac = torch.complex(*torch.randn(2, 3, L, 5, dtype=F64, generator=g)) * 0.7
    bc = torch.complex(*torch.randn(2, 3, L, 5, dtype=F64, generator=g))
    re, im = linear_scan_pairs(ac.real, ac.imag, bc.real, bc.imag)
    torch.testing.assert_close(torch.complex(re, im), linear_scan_ref(ac, bc))


def test_s5_real_arithmetic_path_equals_the_complex_one():
    torch.manual_seed(1)
    layer = S5(6, 5)
    u, dt = _s5_inputs()
    dt = dt.clone()
    dt[0, 3] = 1e6  # a huge gap and a zero gap
    dt[1, 2] = 0.0
    u, dt = u.float(), dt.float()
    with torch.no_grad():
        torch.testing.assert_close(layer._forward_real(u, dt), layer(u, dt), atol=1e-5, rtol=1e-5)


def test_selective_scan_graph_path_equals_reference():
    from seqrec.models.ssm.selective_scan import _graph_selective_scan, _prepare_delta

    u, delta, A, B, C, *_ = [t.detach() for t in _ss_inputs(L=13)]
    delta = _prepare_delta(delta, None, True)
    tm = lambda t: t.permute(2, 0, 1)  # noqa: E731
    y = _graph_selective_scan(tm(u), tm(delta), A, tm(B), tm(C)).permute(1, 2, 0)
    torch.testing.assert_close(y, selective_scan_ref(u, delta, A, B, C))
