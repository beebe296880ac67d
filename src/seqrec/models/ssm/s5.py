"""Time-aware S5 layer: a diagonal complex linear SSM discretised with the *real* time gaps.

Continuous system per sequence (state ``x(t) in C^P``, input ``u(t) in R^H``)::

    x'(t) = diag(Lambda) x(t) + B u(t),     y(t) = Re(C x(t)) + D * u(t)

Discretised with zero-order hold over a variable step ``delta_i = dt_i * step``
(``dt_i >= 0`` the time gap of position ``i``, ``step = exp(log_step)`` one learned scale per
state, initialised log-uniformly in ``[dt_min, dt_max]``)::

    Abar_i = exp(Lambda * delta_i)                        # [B, L, P]
    x_i    = Abar_i * x_{i-1} + gamma_i * (B u_i),  gamma_i = (Abar_i - 1) / Lambda
    y_i    = Re(C x_i) + D * u_i

``B u_i`` is computed *first* (``[B, L, P]``) and scaled by ``gamma_i``, so ``Bbar`` is
never materialised as ``[B, L, P, H]`` (s5-pytorch builds it per position, which is what
makes its time-varying path slow and memory hungry). Everything the layer keeps is
``[B, L, P]`` or ``[B, L, H]``.

``dt_i = 0`` gives ``Abar = 1`` and ``gamma = 0`` exactly: the state is unchanged and the
input at that position is not written into it (only the ``D * u`` skip sees it). Padding
positions get ``dt = 0`` and ``u = 0``, so they leave the state untouched.

Numerics:

* ``Abar`` is built from real ``exp``, ``cos``, ``sin`` (complex ``exp`` is not vectorised on
  CPU). ``Abar - 1`` takes its value from the cancellation-free ``expm1(Re z) cos(Im z) -
  2 sin^2(Im z / 2) + i e^{Re z} sin(Im z)``, so tiny steps (a 1-second gap measured in days
  times ``step = 1e-3`` is ``1e-8``) do not round to 0 in float32, and its gradient from
  ``d(e^z - 1) = e^z``, which vanishes with ``e^{Re z}`` for huge gaps (differentiating the
  ``expm1`` form would give a difference of two O(1) terms times the huge ``delta``, i.e.
  rounding noise, for gaps like ``1e6``).
* ``Re(Lambda)`` is clipped to ``<= -1e-4`` (the S5 paper's ``clip_eigs``), so ``|Abar| < 1``
  for every ``dt > 0`` and arbitrarily large gaps cannot overflow.
* The recurrence is run by :func:`linear_scan`: a two-level chunked parallel scan
  (chunk ``ceil(sqrt(L))``) with a hand-written backward (itself a reverse scan), saving
  only the ``[B, L, P]`` coefficients and states. :func:`linear_scan_ref` is the
  sequential reference used by the tests and benchmarks.
* Under autocast the layer runs in float32 (complex64); float64 inputs run in complex128.

Initialisation (as s5-pytorch 0.2.1 with ``bcInit="dense"``, which the official SS4Rec
code uses): ``Lambda`` from the diagonalised normal part of HiPPO-LegS (real part -1/2,
imaginary parts the eigenvalues of its skew-symmetric part; all ``P`` eigenvalues, i.e.
no conjugate-symmetry halving, output ``Re(C x)``), ``B = V^-1 B0`` with ``B0`` Lecun-normal
over ``(P, H)`` (fan-in ``P``, as JAX's ``lecun_normal`` computes it), ``C = C0 V`` with
``C0`` complex, real and imaginary parts Lecun-normal over ``(H, P, 2)`` (fan-in ``H P``),
``D ~ U[0, 1)``, ``log_step ~ U[log dt_min, log dt_max]`` per state.

Parameters are real tensors (``Lambda_re``, ``Lambda_im``, ``B_re``, ``B_im``, ``C_re``,
``C_im``); complex numbers only exist inside the forward pass.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from seqrec.utils.compile import eager_when_compiled

__all__ = [
    "S5",
    "hippo_legs_diagonal",
    "linear_scan",
    "linear_scan_pairs",
    "linear_scan_ref",
    "zoh_coefficients",
]

_LAMBDA_RE_MAX = -1e-4  # clip_eigs bound: Re(Lambda) <= this keeps |Abar| < 1 for dt > 0


# --- initialisation --------------------------------------------------------------------
def hippo_legs_diagonal(P: int) -> tuple[Tensor, Tensor]:
    """Eigen-decomposition of the normal part of HiPPO-LegS (the "DPLR" initialisation).

    HiPPO-LegS ``A`` (``A_nk = -sqrt(2n+1) sqrt(2k+1)`` for ``n > k``, ``-(n+1)`` on the
    diagonal) is normal plus low rank: ``S = A + p p^T`` with ``p_n = sqrt(n + 1/2)`` equals
    ``-1/2 I`` plus a skew-symmetric matrix. Returns ``(Lambda [P], V [P, P])`` (complex128)
    with ``S = V diag(Lambda) V^*``: ``Re(Lambda) = -1/2``, ``Im(Lambda)`` the eigenvalues of
    ``-i`` times the skew part (Hermitian, so ``eigh``), ``V`` unitary.
    """
    n = torch.arange(P, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)
    A = -(r[:, None] * r[None, :]).tril() + torch.diag(n)  # diagonal: -(2n+1) + n = -(n+1)
    p = torch.sqrt(n + 0.5)
    S = A + p[:, None] * p[None, :]
    diag = torch.diagonal(S)  # all -1/2
    skew = S - torch.diag(diag)
    lam_im, V = torch.linalg.eigh(skew.to(torch.complex128) * -1j)
    lam = torch.complex(diag.mean().expand(P).clone(), lam_im)
    return lam, V


def _trunc_normal_(t: Tensor, std: float) -> Tensor:
    """JAX-style truncated normal at +-2 standard deviations with final std ``std``."""
    s = std / 0.87962566103423978  # std of a unit normal truncated to [-2, 2]
    return nn.init.trunc_normal_(t, 0.0, s, -2 * s, 2 * s)


# --- discretisation ---------------------------------------------------------------------
def _exp_parts(lam_re: Tensor, lam_im: Tensor, delta: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``z = Lambda delta`` and ``Abar = e^z`` from real ``exp``, ``cos``, ``sin`` (vectorised,
    unlike complex ``exp`` on CPU; real inputs, so graph exports can use it too): returns
    ``Re z, Im z, cos(Im z), Re Abar, Im Abar``."""
    zr = delta * lam_re
    zi = delta * lam_im
    mag = torch.exp(zr)
    cos, sin = torch.cos(zi), torch.sin(zi)
    return zr, zi, cos, mag * cos, mag * sin


def zoh_coefficients(lam: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
    """Zero-order hold: ``Abar = exp(Lambda delta)``, ``gamma = (Abar - 1) / Lambda``.

    ``lam``: complex ``[P]``; ``delta``: real ``[..., P]``; returns complex ``[..., P]``.
    ``Abar - 1`` takes its *value* from the cancellation-free
    ``expm1(Re z) cos(Im z) - 2 sin^2(Im z / 2) + i e^{Re z} sin(Im z)`` (exact for tiny
    steps, where ``exp - 1`` rounds to 0 in float32) and its *gradient* from ``Abar``
    (``d expm1 = exp``), which vanishes with ``e^{Re z}`` for huge gaps instead of being
    rounding noise times the gap. ``delta = 0`` gives ``Abar = 1``, ``gamma = 0`` exactly.
    """
    zr, zi, cos, a_re, a_im = _exp_parts(lam.real, lam.imag, delta)
    with torch.no_grad():  # value correction: exact Re(e^z - 1) minus the rounded a_re - 1
        correction = torch.expm1(zr) * cos - 2 * torch.sin(0.5 * zi).square_() - (a_re - 1)
    em1 = torch.complex(a_re - 1 + correction, a_im)
    return torch.complex(a_re, a_im), em1 * (1.0 / lam)


# --- scans ------------------------------------------------------------------------------
def scan_chunk_size(L: int) -> int:
    """Chunk length of :func:`linear_scan`: ``ceil(sqrt(L))`` (balances the two loops)."""
    return max(1, math.isqrt(max(L - 1, 0)) + 1)


def _chunked_scan(a: Tensor, b: Tensor, chunk: int, reverse: bool = False) -> Tensor:
    """``x_t = a_t x_{t-1} + b_t`` along dim 1 (``x_{-1} = 0``), no autograd;
    ``reverse=True``: ``x_t = a_t x_{t+1} + b_t`` (``x_L = 0``).

    The ``n = L // chunk`` full chunks are scanned in two levels: (1) the recurrence inside
    every chunk, all chunks at once (``chunk`` vectorised steps), with the running products
    of ``a``; (2) the state entering each chunk (one step per chunk); (3)
    ``x += prod(a) * h_in``. The ``L % chunk`` leftover positions (at the far end of the scan
    direction) are stepped one by one. About ``chunk + 2 L / chunk`` sequential steps and three
    passes over the data; no padding copies.
    """
    a, b = a.contiguous(), b.contiguous()
    nb, L = b.shape[:2]
    rest = b.shape[2:]
    n, r = divmod(L, chunk)
    x = torch.empty_like(b)
    if n:
        lo = r if reverse else 0
        view = lambda t: t[:, lo : lo + n * chunk].view(nb, n, chunk, *rest)  # noqa: E731
        a4, b4, x4 = view(a), view(b), view(x)
        # running products of a inside each chunk, in the scan direction
        prod = torch.cumprod(a4.flip(2), dim=2).flip(2) if reverse else torch.cumprod(a4, dim=2)
        steps = list(range(chunk))[::-1] if reverse else list(range(chunk))
        first = steps[0]
        x4[:, :, first] = b4[:, :, first]
        for p, t in zip(steps, steps[1:]):
            torch.addcmul(b4[:, :, t], a4[:, :, t], x4[:, :, p], out=x4[:, :, t])
        last = steps[-1]
        h_in = torch.empty_like(x4[:, :, 0])  # (nb, n, ...): state entering each chunk
        chunks = list(range(n))[::-1] if reverse else list(range(n))
        h_in[:, chunks[0]] = 0
        for p, c in zip(chunks, chunks[1:]):
            torch.addcmul(x4[:, p, last], prod[:, p, last], h_in[:, p], out=h_in[:, c])
        x4.addcmul_(prod, h_in.unsqueeze(2))
    if r:
        tail = list(range(r - 1, -1, -1)) if reverse else list(range(n * chunk, L))
        h = (x[:, r] if reverse else x[:, n * chunk - 1]) if n else torch.zeros_like(b[:, 0])
        for t in tail:
            torch.addcmul(b[:, t], a[:, t], h, out=x[:, t])
            h = x[:, t]
    return x


class _LinearScan(torch.autograd.Function):
    """Parallel linear recurrence whose backward is a reverse scan (saves ``a`` and ``x``).

    Complex convention (PyTorch's conjugate Wirtinger gradients):
    ``G_t = dL/dx_t (total) = gx_t + conj(a_{t+1}) G_{t+1}``, ``db_t = G_t``,
    ``da_t = G_t conj(x_{t-1})``.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:
        chunk = scan_chunk_size(a.shape[1])
        x = _chunked_scan(a, b, chunk)
        ctx.chunk = chunk
        ctx.save_for_backward(a, x)
        return x

    @staticmethod
    def backward(ctx, gx: Tensor):
        a, x = ctx.saved_tensors
        a_next = torch.empty_like(a)  # a'_t = conj(a_{t+1}), a'_{L-1} = 0
        a_next[:, :-1] = a[:, 1:].conj()
        a_next[:, -1] = 0
        G = _chunked_scan(a_next, gx, ctx.chunk, reverse=True)
        ga = None
        if ctx.needs_input_grad[0]:
            ga = torch.empty_like(a)
            ga[:, 0] = 0
            torch.mul(G[:, 1:], x[:, :-1].conj(), out=ga[:, 1:])
        return ga, G


def linear_scan(a: Tensor, b: Tensor) -> Tensor:
    """``x_t = a_t * x_{t-1} + b_t`` over dim 1 of ``[B, L, ...]`` tensors, ``x_{-1} = 0``.

    Chunked parallel scan (real or complex) with a custom backward that keeps only ``a``
    and ``x``. Equals :func:`linear_scan_ref`.
    """
    if a.shape != b.shape:
        raise ValueError(f"linear_scan: a {tuple(a.shape)} and b {tuple(b.shape)} differ")
    if a.dtype != b.dtype:
        dtype = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(dtype), b.to(dtype)
    return _LinearScan.apply(a, b)


def linear_scan_pairs(a_re: Tensor, a_im: Tensor, b_re: Tensor, b_im: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`linear_scan` for complex ``a``, ``b`` given as real and imaginary parts, in real
    arithmetic and ``ceil(log2 L)`` whole-tensor steps (Hillis-Steele doubling: after the step
    with offset ``d``, ``(a_t, b_t)`` compose positions ``t - 2d + 1 .. t``): for graph formats
    without complex numbers (ONNX), where a loop over positions would be unrolled. ``O(L log L)``
    work on S5's small ``[B, L, P]`` states. Returns ``(Re x, Im x)``."""
    d, L = 1, b_re.shape[1]
    while d < L:
        ar, ai, pr, pi = a_re[:, d:], a_im[:, d:], b_re[:, :-d], b_im[:, :-d]
        b_re = torch.cat([b_re[:, :d], b_re[:, d:] + ar * pr - ai * pi], dim=1)
        b_im = torch.cat([b_im[:, :d], b_im[:, d:] + ar * pi + ai * pr], dim=1)
        qr, qi = a_re[:, :-d], a_im[:, :-d]
        a_re, a_im = (torch.cat([a_re[:, :d], ar * qr - ai * qi], dim=1),
                      torch.cat([a_im[:, :d], ar * qi + ai * qr], dim=1))
        d *= 2
    return b_re, b_im


def linear_scan_ref(a: Tensor, b: Tensor) -> Tensor:
    """Sequential reference for :func:`linear_scan` (plain autograd, one step per position)."""
    x = torch.zeros_like(b[:, 0])
    xs = []
    for t in range(b.shape[1]):
        x = a[:, t] * x + b[:, t]
        xs.append(x)
    return torch.stack(xs, dim=1)


# --- the layer --------------------------------------------------------------------------
class S5(nn.Module):
    """Time-aware S5 SSM: ``forward(u [B, L, H], dt [B, L]) -> [B, L, H]``.

    Args:
        d_model: ``H``, input/output width.
        d_state: ``P``, number of complex states.
        dt_min, dt_max: range of the initial per-state step scales (log-uniform).
        scan: ``"parallel"`` (:func:`linear_scan`) or ``"sequential"``
            (:func:`linear_scan_ref`, for tests and benchmarks).

    ``dt`` is the time gap of each position in the chosen time unit (``>= 0``; 0 at padding,
    where ``u`` must be 0 too). See the module docstring for the maths.
    """

    def __init__(self, d_model: int, d_state: int = 32, dt_min: float = 0.001, dt_max: float = 0.1,
                 scan: str = "parallel"):
        super().__init__()
        if scan not in ("parallel", "sequential"):
            raise ValueError(f"scan must be 'parallel' or 'sequential', got {scan!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        H, P = d_model, d_state
        self.d_model, self.d_state, self.scan = H, P, scan
        self.dt_min, self.dt_max = float(dt_min), float(dt_max)
        self.Lambda_re = nn.Parameter(torch.empty(P))
        self.Lambda_im = nn.Parameter(torch.empty(P))
        self.B_re = nn.Parameter(torch.empty(P, H))
        self.B_im = nn.Parameter(torch.empty(P, H))
        self.C_re = nn.Parameter(torch.empty(H, P))
        self.C_im = nn.Parameter(torch.empty(H, P))
        self.D = nn.Parameter(torch.empty(H))
        self.log_step = nn.Parameter(torch.empty(P))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        H, P = self.d_model, self.d_state
        lam, V = hippo_legs_diagonal(P)
        self.Lambda_re.copy_(lam.real)
        self.Lambda_im.copy_(lam.imag)
        B0 = _trunc_normal_(torch.empty(P, H, dtype=torch.float64), P**-0.5)
        B = V.conj().T @ B0.to(torch.complex128)  # V^-1 B0 (V unitary)
        self.B_re.copy_(B.real)
        self.B_im.copy_(B.imag)
        C0 = _trunc_normal_(torch.empty(H, P, 2, dtype=torch.float64), (H * P) ** -0.5)
        C = torch.complex(C0[..., 0], C0[..., 1]) @ V
        self.C_re.copy_(C.real)
        self.C_im.copy_(C.imag)
        self.D.uniform_(0.0, 1.0)
        self.log_step.uniform_(math.log(self.dt_min), math.log(self.dt_max))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={self.d_state}, scan={self.scan}"

    def forward(self, u: Tensor, dt: Tensor) -> Tensor:
        if u.dim() != 3 or u.shape[-1] != self.d_model or dt.shape != u.shape[:2]:
            raise ValueError(f"S5 expects u [B, L, {self.d_model}] and dt [B, L], got "
                             f"{tuple(u.shape)} and {tuple(dt.shape)}")
        in_dtype = u.dtype
        dtype = torch.float64 if in_dtype == torch.float64 else torch.float32
        if torch.compiler.is_exporting() or torch.jit.is_tracing():  # graph formats: real arithmetic
            return self._forward_real(u.to(dtype), dt.to(dtype)).to(in_dtype)
        return self._forward_complex(u, dt, dtype).to(in_dtype)

    @eager_when_compiled  # complex numbers and the custom scan stay eager under torch.compile
    def _forward_complex(self, u: Tensor, dt: Tensor, dtype: torch.dtype) -> Tensor:
        Bsz, L, H = u.shape
        P = self.d_state
        with torch.autocast(device_type=u.device.type, enabled=False):
            u = u.to(dtype)
            lam = torch.complex(self.Lambda_re.to(dtype).clamp(max=_LAMBDA_RE_MAX), self.Lambda_im.to(dtype))
            delta = dt.to(dtype).unsqueeze(-1) * torch.exp(self.log_step.to(dtype))  # (B, L, P)
            a, w = zoh_coefficients(lam, delta)  # complex (B, L, P): Abar, gamma
            # B u first: rows of W_B interleave (Re, Im) so the product views as complex
            W_B = torch.stack([self.B_re, self.B_im], dim=1).reshape(2 * P, H).to(dtype)
            Bu = torch.view_as_complex((u @ W_B.t()).view(Bsz, L, P, 2))  # (B, L, P)
            b = w * Bu  # Bbar u, never Bbar itself
            x = linear_scan(a, b) if self.scan == "parallel" else linear_scan_ref(a, b)
            # Re(C x) = C_re x_re - C_im x_im, as one real product over interleaved (Re, Im)
            W_C = torch.stack([self.C_re, -self.C_im], dim=-1).reshape(H, 2 * P).to(dtype)
            y = torch.view_as_real(x).reshape(Bsz, L, 2 * P) @ W_C.t() + self.D.to(dtype) * u
        return y

    def _forward_real(self, u: Tensor, dt: Tensor) -> Tensor:
        """The forward pass in real arithmetic (complex numbers as real and imaginary parts),
        used while exporting or tracing a graph (ONNX has no complex type); equals :meth:`forward` (the
        tests tie them). Inference only: no ``expm1`` value correction is needed for the
        gradient's sake, ``Abar - 1`` is computed cancellation-free directly."""
        lr = self.Lambda_re.to(u.dtype).clamp(max=_LAMBDA_RE_MAX)
        li = self.Lambda_im.to(u.dtype)
        delta = dt.unsqueeze(-1) * torch.exp(self.log_step.to(u.dtype))  # (B, L, P)
        zr, zi, cos, a_re, a_im = _exp_parts(lr, li, delta)  # Abar
        em1_re = torch.expm1(zr) * cos - 2 * torch.sin(0.5 * zi).square()  # Re(Abar - 1), exact
        inv = 1.0 / (lr * lr + li * li)  # 1 / Lambda = conj(Lambda) / |Lambda|^2
        w_re = (em1_re * lr + a_im * li) * inv  # gamma = (Abar - 1) / Lambda
        w_im = (a_im * lr - em1_re * li) * inv
        bu_re = u @ self.B_re.to(u.dtype).t()  # (B, L, P)
        bu_im = u @ self.B_im.to(u.dtype).t()
        x_re, x_im = linear_scan_pairs(a_re, a_im, w_re * bu_re - w_im * bu_im, w_re * bu_im + w_im * bu_re)
        return x_re @ self.C_re.to(u.dtype).t() - x_im @ self.C_im.to(u.dtype).t() + self.D.to(u.dtype) * u
