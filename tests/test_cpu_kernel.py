"""The fused CPU selective-scan kernel (cpu_scan.cpp) against the pure-PyTorch scan and the
sequential reference: values and gradients in float64 and float32, zeros in A, padding,
threads; and the fallback when it cannot be built or is switched off."""

import shutil
import subprocess
import sys

import pytest
import torch

import seqrec.models.ssm.cpu_kernel as ck
from seqrec.models.ssm import Mamba, selective_scan, selective_scan_ref

F64 = torch.float64

if shutil.which("c++") is None and shutil.which("g++") is None:  # CI and setup.sh machines have one
    pytest.skip("no C++ compiler: the kernel cannot be built here", allow_module_level=True)


@pytest.fixture(scope="module")
def kernel():
    k = ck.cpu_scan_kernel()
    assert k is not None, f"the CPU kernel failed to build: {ck.cpu_kernel_status()}"
    return k


def _inputs(B=3, D=5, N=4, L=13, dtype=F64, seed=0, zero_A=False, pad=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, dtype=dtype, generator=g)  # noqa: E731
    A = -torch.rand(D, N, dtype=dtype, generator=g) * 2 - 0.05
    if zero_A:
        A[1, 2] = 0.0
    u = r(B, D, L)
    if pad:  # left padding: u is 0 there (the Mamba block zeroes it)
        u[:, :, :pad] = 0
    args = [u, r(B, D, L) * 0.5, A, r(B, N, L), r(B, N, L), r(D), r(B, D, L), r(D)]
    return [t.requires_grad_() for t in args]


def _value_and_grads(fn, args):
    y = fn(*args)
    gy = torch.cos(torch.arange(y.numel(), dtype=y.dtype)).reshape(y.shape)  # a fixed, varied upstream grad
    return y, torch.autograd.grad(y, args, gy)


@pytest.mark.parametrize("zero_A", [False, True])
@pytest.mark.parametrize("pad", [0, 4])
def test_kernel_equals_pure_path_and_reference_float64(kernel, zero_A, pad):
    args = _inputs(zero_A=zero_A, pad=pad)
    fast = lambda *a: selective_scan(*a, delta_softplus=True, use_fast_path=True)  # noqa: E731
    pure = lambda *a: selective_scan(*a, delta_softplus=True, use_fast_path=False, chunk_size=4)  # noqa: E731
    ref = lambda *a: selective_scan_ref(*a, delta_softplus=True)  # noqa: E731
    y, g = _value_and_grads(fast, args)
    for other in (pure, ref):
        y_o, g_o = _value_and_grads(other, args)
        torch.testing.assert_close(y, y_o, rtol=1e-12, atol=1e-12)
        for i, (p, q) in enumerate(zip(g, g_o)):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-10, msg=f"input {i}")


def test_kernel_float32_matches_pure_path_to_1e5(kernel):
    args = [a.detach().float().requires_grad_() for a in _inputs(B=4, D=16, N=32, L=60, seed=2, pad=7)]
    y, g = _value_and_grads(lambda *a: selective_scan(*a, delta_softplus=True, use_fast_path=True), args)
    y_p, g_p = _value_and_grads(lambda *a: selective_scan(*a, delta_softplus=True, use_fast_path=False), args)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, y_p, rtol=1e-5, atol=1e-5)
    for i, (p, q) in enumerate(zip(g, g_p)):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5 * q.abs().max().item(), msg=f"input {i}")


def test_kernel_gradcheck(kernel):
    args = _inputs(B=2, D=2, N=3, L=6, zero_A=True)
    f = lambda *a: selective_scan(*a, delta_softplus=True, use_fast_path=True)  # noqa: E731
    assert torch.autograd.gradcheck(f, tuple(args))


def test_kernel_same_result_on_one_and_two_threads(kernel):
    """The batch is split across threads and A's gradient summed from per-thread parts."""
    args = [a.detach().float().requires_grad_() for a in _inputs(B=9, D=8, N=16, L=30, seed=5)]
    f = lambda *a: selective_scan(*a, delta_softplus=True, use_fast_path=True)  # noqa: E731
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1, g1 = _value_and_grads(f, args)
        torch.set_num_threads(2)
        y2, g2 = _value_and_grads(f, args)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)  # rows are independent: bit for bit
    for p, q in zip(g1, g2):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


def test_mamba_block_fast_and_pure_agree_and_inference_matches(kernel):
    torch.manual_seed(0)
    fast = Mamba(8, d_state=4, expand=2, use_fast_path=True).double()
    pure = Mamba(8, d_state=4, expand=2, use_fast_path=False).double()
    pure.load_state_dict(fast.state_dict())
    x = torch.randn(3, 10, 8, dtype=F64, requires_grad=True)
    y_f, y_p = fast(x), pure(x)
    torch.testing.assert_close(y_f, y_p)
    g_f = torch.autograd.grad(y_f.square().sum(), [x, *fast.parameters()])
    g_p = torch.autograd.grad(y_p.square().sum(), [x, *pure.parameters()])
    for p, q in zip(g_f, g_p):
        torch.testing.assert_close(p, q)
    with torch.inference_mode():  # the forward-only call (serving)
        torch.testing.assert_close(fast(x), y_p.detach())


def test_kernel_rejects_a_wrong_layout(kernel):
    u = torch.randn(2, 5, 3)
    with pytest.raises(RuntimeError, match=r"A must be \[D, N\]"):
        kernel.forward(u, u, torch.randn(4, 2), torch.randn(2, 5, 2), torch.randn(2, 5, 2))


def test_switched_off_by_environment_and_scan_still_runs():
    code = ("import seqrec.models.ssm.cpu_kernel as ck, torch; from seqrec.models.ssm import selective_scan;"
            "u = torch.randn(2, 3, 5); A = -torch.rand(3, 4); B = torch.randn(2, 4, 5);"
            "y = selective_scan(u, u.abs(), A, B, B);"
            "print(ck.cpu_scan_kernel() is None, ck.cpu_kernel_status(), tuple(y.shape))")
    out = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "SEQREC_CPU_KERNEL": "0"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "SEQREC_CPU_KERNEL=0", "(2,", "3,", "5)"]
    assert "building" not in out.stderr


def test_failed_build_says_so_once_and_falls_back(monkeypatch, capsys):
    import torch.utils.cpp_extension as cpp

    def broken(**kwargs):
        raise RuntimeError("Error building extension 'x': c++: fatal error: no input files")

    monkeypatch.setattr(cpp, "load", broken)
    monkeypatch.setattr(ck, "_state", {})
    monkeypatch.setattr(ck, "_is_built", lambda name: True)  # no "building" line in this test
    assert ck.cpu_scan_kernel() is None and ck.cpu_scan_kernel() is None
    err = capsys.readouterr().err
    assert err.count("CPU selective-scan kernel unavailable (Error building extension 'x'") == 1
    assert "using the pure PyTorch scan" in err
    args = _inputs(B=2, D=2, N=3, L=5)
    torch.testing.assert_close(selective_scan(*args, delta_softplus=True),
                               selective_scan_ref(*args, delta_softplus=True))


def test_verify_line_says_what_the_kernel_is_doing(kernel, monkeypatch):
    assert ck.cpu_kernel_describe() == "fused CPU selective scan loaded"
    monkeypatch.setenv("SEQREC_CPU_KERNEL", "0")
    assert ck.cpu_kernel_describe().startswith("fused CPU selective scan switched off (SEQREC_CPU_KERNEL=0)")
    monkeypatch.delenv("SEQREC_CPU_KERNEL")
    monkeypatch.setattr(ck, "_state", {})
    assert ck.cpu_kernel_describe() == "fused CPU selective scan built (cached)"  # the fixture built it
