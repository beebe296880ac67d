"""Selective scan (Mamba's S6) in pure PyTorch, an optional fused kernel, and the Mamba block.

Selective scan, per batch ``b``, channel ``d``, state ``n`` (layout as mamba_ssm:
``u, delta, z: [B, D, L]``, ``A: [D, N]``, ``B, C: [B, N, L]``)::

    delta = softplus(delta + delta_bias)                          (optional)
    h_t   = exp(delta_t A) * h_{t-1} + delta_t B_t u_t            h_{-1} = 0,  h_t in R^{D x N}
    y_t   = sum_n h_t[:, n] C_t[n] + D u_t,   then  y_t *= silu(z_t)   (optional)

Four implementations with the same signature:

* :func:`selective_scan_ref` -- the sequential loop of mamba_ssm's reference (for tests and
  benchmarks); autograd keeps every step's ``[B, D, N]`` tensors, i.e. ``O(B L D N)``.
* the pure path of :func:`selective_scan` -- :class:`_ChunkedSelectiveScan`, a custom
  autograd function. Forward walks the sequence chunk by chunk (``chunk_size`` steps),
  building ``exp(delta A)`` and ``delta B u`` for one chunk at a time and keeping only the
  state at each chunk start. Backward recomputes a chunk's states from its start state and
  runs the reverse recurrence ``G_t = C_t gy_t + exp(delta_{t+1} A) G_{t+1}``. On the CPU
  both walk the batch in tiles whose chunk buffers fit in a core's cache (:func:`batch_tiles`). Memory:
  ``O(B L D + B D N L / chunk_size)`` saved, plus a few ``[chunk_size, B, D, N]`` buffers
  while running -- never ``O(B L D N)``. Only the linear scan is custom; softplus, the
  ``D`` skip and the ``silu(z)`` gate are ordinary autograd on ``[B, D, L]`` tensors.
* the fused CUDA kernel ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``,
  used by :func:`selective_scan` when ``use_fast_path`` is set, ``mamba_ssm`` is importable
  and the tensors are on CUDA (:func:`fused_selective_scan_available`).
* the fused CPU kernel ``cpu_scan.cpp`` (:class:`_CpuKernelScan`), used when ``use_fast_path``
  is set, the tensors are on the CPU and it builds (:mod:`seqrec.models.ssm.cpu_kernel`: once
  per machine, ``SEQREC_CPU_KERNEL=0`` switches it off): each (batch, channel) row's recurrence
  in one loop with its state in registers, backward recomputing the row's states in cache;
  saves only the inputs. Graph exports and traces always take the pure path's graph form.

The pure path computes in float32 at least (float64 stays float64, for gradcheck) and
returns the input dtype, like the reference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqrec.models.ssm.cpu_kernel import cpu_scan_kernel
from seqrec.utils.compile import eager_when_compiled

__all__ = [
    "Mamba",
    "fused_selective_scan_available",
    "selective_scan",
    "selective_scan_ref",
]

try:  # optional fused kernel (mamba_ssm, CUDA only)
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _fused_selective_scan_fn
except Exception:  # ImportError, or a build that fails to load its extension  # pragma: no cover
    _fused_selective_scan_fn = None

DEFAULT_CHUNK = 16


def fused_selective_scan_available(x: Tensor | None = None) -> bool:
    """True when mamba_ssm's fused kernel is importable (and ``x``, if given, is on CUDA)."""
    return _fused_selective_scan_fn is not None and (x is None or x.is_cuda)


@eager_when_compiled  # a C++/CUDA extension behind an autograd function: torch.compile leaves it eager
def _fused_scan(*args):
    return _fused_selective_scan_fn(*args)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _prepare_delta(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].to(delta.dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    if D is not None:
        y = y + u * D[:, None].to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


# --- reference --------------------------------------------------------------------------
def selective_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                       z: Tensor | None = None, delta_bias: Tensor | None = None,
                       delta_softplus: bool = False) -> Tensor:
    """Sequential reference: mamba_ssm's ``selective_scan_ref`` for real ``A [D, N]`` and
    input-dependent ``B, C [B, N, L]``; one step per position with plain autograd (which keeps
    every step's ``[B, D, N]`` tensors). Returns ``[B, D, L]``."""
    dtype_in = u.dtype
    ct = _compute_dtype(u)
    u, delta, A, B, C = (t.to(ct) for t in (u, delta, A, B, C))
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    h = u.new_zeros(u.shape[0], A.shape[0], A.shape[1])  # (B, D, N)
    ys = []
    for d_t, u_t, B_t, C_t in zip(delta.unbind(-1), u.unbind(-1), B.unbind(-1), C.unbind(-1)):
        h = torch.exp(d_t.unsqueeze(-1) * A) * h + (d_t * u_t).unsqueeze(-1) * B_t.unsqueeze(1)
        ys.append(torch.einsum("bdn,bn->bd", h, C_t))
    y = torch.stack(ys, dim=2)
    return _finish(y, u, D, z).to(dtype_in)


# --- pure chunked path ------------------------------------------------------------------
def _chunk_states(dA: Tensor, dBu: Tensor, h0: Tensor) -> Tensor:
    """In place: ``dBu[t] <- dA[t] * h_{t-1} + dBu[t]`` for t = 0.. (the chunk's states)."""
    h = h0
    for t in range(dBu.shape[0]):
        dBu[t].addcmul_(dA[t], h)
        h = dBu[t]
    return dBu


def _chunk_coefficients(dA: Tensor, dBu: Tensor, delta: Tensor, du: Tensor, A: Tensor, Bm: Tensor) -> None:
    """Fill the chunk buffers: ``dA = exp(delta A)``, ``dBu = (delta u) B`` (``[T, B, D, N]``)."""
    torch.mul(delta.unsqueeze(-1), A, out=dA)
    dA.exp_()
    torch.mul(du.unsqueeze(-1), Bm.unsqueeze(-2), out=dBu)


TILE_ELEMENTS = 2**19  # a chunk work buffer of at most this many floats (2 MiB): it stays in cache


def batch_tiles(nb: int, T: int, D: int, N: int, on_gpu: bool = False) -> list[slice]:
    """Slices of the batch such that one ``[T, tile, D, N]`` work buffer holds at most
    :data:`TILE_ELEMENTS` floats. The scan is independent across the batch, and walking it tile
    by tile keeps a chunk's buffers in the core's cache: at B = 128, D = 128, N = 32 one
    whole-batch chunk buffer is 32 MiB and every elementwise pass over it waits on memory
    (measured 1.8x slower per training step of the scan than tiles of 8-16 rows). On a GPU
    (``on_gpu``) the whole batch is one tile."""
    if on_gpu:  # a GPU wants few large kernels, not many cache-sized ones
        return [slice(0, nb)]
    tile = max(1, min(nb, TILE_ELEMENTS // max(1, T * D * N)))
    return [slice(b0, min(b0 + tile, nb)) for b0 in range(0, nb, tile)]


def _scan_forward(u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """The chunked forward pass (time-major, see :class:`_ChunkedSelectiveScan`): ``(y, starts)``,
    ``starts [n_chunks, B, D, N]`` the state entering each chunk. Runs tile by tile over the
    batch (:func:`batch_tiles`)."""
    L, nb, D = u.shape
    N = A.shape[1]
    n_chunks = -(-L // chunk)
    T = min(chunk, L)
    y = u.new_empty(L, nb, D)
    starts = u.new_empty(n_chunks, nb, D, N)
    starts[0].zero_()
    du = delta * u
    tiles = batch_tiles(nb, T, D, N, on_gpu=u.is_cuda)
    dA_buf = u.new_empty(T, tiles[0].stop, D, N)
    hs_buf = u.new_empty(T, tiles[0].stop, D, N)
    for bt in tiles:
        nt = bt.stop - bt.start
        for ci in range(n_chunks):
            c0, c1 = ci * chunk, min((ci + 1) * chunk, L)
            dA, hs = dA_buf[: c1 - c0, :nt], hs_buf[: c1 - c0, :nt]
            _chunk_coefficients(dA, hs, delta[c0:c1, bt], du[c0:c1, bt], A, Bm[c0:c1, bt])
            _chunk_states(dA, hs, starts[ci, bt])
            y[c0:c1, bt] = torch.matmul(hs, Cm[c0:c1, bt].unsqueeze(-1)).squeeze(-1)  # sum_n h C
            if ci + 1 < n_chunks:
                starts[ci + 1, bt] = hs[-1]
    return y, starts


def _scan_backward(u, delta, A, Bm, Cm, starts, gy, chunk: int, fold_A: bool):
    """Gradients ``(gu, gdelta, gA, gB, gC)`` of the chunked scan for one batch tile (all
    tensors already cut to it): chunks in reverse, each recomputed from its start state.
    ``fold_A`` (no zero in ``A``): ``dA`` is recovered as ``sum((Q A) delta) / A`` in place."""
    L, nb, D = u.shape
    N = A.shape[1]
    n_chunks = starts.shape[0]
    T = min(chunk, L)
    gu = torch.empty_like(u)
    gdelta = torch.empty_like(delta)
    gA = torch.zeros_like(A)
    gB = torch.empty_like(Bm)
    gC = torch.empty_like(Cm)
    dA_buf = u.new_empty(T, nb, D, N)
    hs_buf = u.new_empty(T, nb, D, N)
    G_buf = u.new_empty(T, nb, D, N)
    carry = u.new_zeros(nb, D, N)  # exp(delta_{c1} A) G_{c1}: what reaches h_{c1-1} from later
    du = delta * u
    for ci in reversed(range(n_chunks)):
        c0, c1 = ci * chunk, min((ci + 1) * chunk, L)
        t = c1 - c0
        dA, hs, G = dA_buf[:t], hs_buf[:t], G_buf[:t]
        d, g, h0 = delta[c0:c1], gy[c0:c1], starts[ci]
        # recompute the chunk's states from its start state
        _chunk_coefficients(dA, hs, d, du[c0:c1], A, Bm[c0:c1])
        _chunk_states(dA, hs, h0)
        # dC_t[n] = sum_d gy_t[d] h_t[d, n]
        torch.matmul(g.unsqueeze(-2), hs, out=gC[c0:c1].unsqueeze(-2))
        # G_t (gradient of h_t) = gy_t C_t + dA_{t+1} G_{t+1}
        torch.mul(g.unsqueeze(-1), Cm[c0:c1].unsqueeze(-2), out=G)
        G[-1] += carry
        for s in range(t - 2, -1, -1):
            G[s].addcmul_(dA[s + 1], G[s + 1])
        torch.mul(dA[0], G[0], out=carry)
        # G is also the gradient of delta u B: d(delta u) = sum_n G B, dB = sum_d G delta u
        gdu = torch.matmul(G, Bm[c0:c1].unsqueeze(-1)).squeeze(-1)  # (T, B, D)
        torch.matmul(du[c0:c1].unsqueeze(-2), G, out=gB[c0:c1].unsqueeze(-2))
        # Q = gradient of z = delta A (dA = exp z): G_t * h_{t-1} * dA_t, built in place
        Q = dA.mul_(G)
        Q[1:].mul_(hs[:-1])
        Q[0].mul_(h0)
        gu[c0:c1] = gdu * d
        if fold_A:  # d delta = sum_n Q A; dA = sum_{t,b} Q delta = sum_{t,b} (Q A) delta / A
            Q.mul_(A)
            gdelta[c0:c1] = Q.sum(-1).addcmul_(gdu, u[c0:c1])
            gA += Q.mul_(d.unsqueeze(-1)).sum((0, 1))
        else:
            gdelta[c0:c1] = (Q * A).sum(-1).addcmul_(gdu, u[c0:c1])
            gA += (Q * d.unsqueeze(-1)).sum((0, 1))
    if fold_A:
        gA.div_(A)
    return gu, gdelta, gA, gB, gC


class _ChunkedSelectiveScan(torch.autograd.Function):
    """``y_t = C_t . h_t`` with ``h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t``.

    Inputs are time-major: ``u, delta: [L, B, D]``, ``A: [D, N]``, ``B, C: [L, B, N]``;
    output ``[L, B, D]``. Saves the inputs and the state at each chunk start; three
    ``[chunk, tile, D, N]`` work buffers per batch tile. See the module docstring.
    """

    @staticmethod
    def forward(ctx, u, delta, A, Bm, Cm, chunk: int):
        y, starts = _scan_forward(u, delta, A, Bm, Cm, chunk)
        ctx.chunk = chunk
        ctx.save_for_backward(u, delta, A, Bm, Cm, starts)
        return y

    @staticmethod
    def backward(ctx, gy):
        u, delta, A, Bm, Cm, starts = ctx.saved_tensors
        L, nb, D = u.shape
        gy = gy.contiguous()
        gu, gdelta, gB, gC = (torch.empty_like(t) for t in (u, delta, Bm, Cm))
        gA = torch.zeros_like(A)
        fold_A = bool((A != 0).all())  # once, not per tile (a device sync)
        for bt in batch_tiles(nb, min(ctx.chunk, L), D, A.shape[1], on_gpu=u.is_cuda):
            u_, d_, B_, C_, s_, g_ = (t[:, bt].contiguous() for t in (u, delta, Bm, Cm, starts, gy))
            gu[:, bt], gdelta[:, bt], gA_tile, gB[:, bt], gC[:, bt] = _scan_backward(
                u_, d_, A, B_, C_, s_, g_, ctx.chunk, fold_A)
            gA += gA_tile
        return gu, gdelta, gA, gB, gC, None


def _graph_selective_scan(u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor) -> Tensor:
    """The time-major selective scan (``[L, B, D]`` in and out) written for graph exports and
    traces: the coefficients of all positions in two whole-tensor operations, then the
    recurrence as ``L`` pure steps of two operations each (no in-place writes, which a graph
    would turn into copies of whole buffers), then the outputs in one product."""
    dA = torch.exp(delta.unsqueeze(-1) * A)  # (L, B, D, N)
    dBu = (delta * u).unsqueeze(-1) * Bm.unsqueeze(-2)  # (L, B, D, N)
    h = dBu[0]
    hs = [h]
    for t in range(1, dA.shape[0]):
        h = torch.addcmul(dBu[t], dA[t], h)
        hs.append(h)
    return (torch.stack(hs) @ Cm.unsqueeze(-1)).squeeze(-1)  # (L, B, D)


class _CpuKernelScan(torch.autograd.Function):
    """The selective scan through the fused CPU kernel (``cpu_scan.cpp``), batch-first:
    ``u, delta: [B, L, D]``, ``A: [D, N]``, ``B, C: [B, L, N]``, output ``[B, L, D]``. Saves
    only the inputs; backward recomputes each row's states inside the kernel."""

    @staticmethod
    def forward(ctx, kernel, u, delta, A, Bm, Cm):
        ctx.kernel = kernel
        ctx.save_for_backward(u, delta, A, Bm, Cm)
        return kernel.forward(u, delta, A, Bm, Cm)

    @staticmethod
    def backward(ctx, gy):
        return (None, *ctx.kernel.backward(*ctx.saved_tensors, gy.contiguous()))


@eager_when_compiled  # the chunk loops, custom backwards and the C++ kernel stay eager under torch.compile
def _unfused_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size, kernel=None):
    """The scan outside mamba_ssm: on the CPU kernel when ``kernel`` is given (batch-first
    layout), else the pure chunked path (time-major). Softplus, the ``D`` skip and the gate
    are ordinary autograd on ``[B, D, L]`` tensors either way."""
    dtype_in = u.dtype
    ct = _compute_dtype(u)
    with torch.autocast(device_type=u.device.type, enabled=False):
        u, delta, A, B, C = (t.to(ct) for t in (u, delta, A, B, C))
        delta = _prepare_delta(delta, delta_bias, delta_softplus)
        # (B, X, L) -> (B, L, X) for the kernel, (L, B, X) for the pure path
        order = (0, 2, 1) if kernel is not None else (2, 0, 1)
        args = tuple(t.permute(*order).contiguous() for t in (u, delta)) + (A.contiguous(),) + tuple(
            t.permute(*order).contiguous() for t in (B, C))
        train = torch.is_grad_enabled() and any(t.requires_grad for t in args)
        if kernel is not None:
            y = _CpuKernelScan.apply(kernel, *args) if train else kernel.forward(*args)
            y = y.transpose(1, 2)
        else:
            if torch.compiler.is_exporting() or torch.jit.is_tracing():
                y = _graph_selective_scan(*args)
            elif train:
                y = _ChunkedSelectiveScan.apply(*args, int(chunk_size))
            else:  # inference: the forward alone, no saved tensors
                y = _scan_forward(*args, int(chunk_size))[0]
            y = y.permute(1, 2, 0)
        y = _finish(y, u, D, z)  # (B, D, L)
    return y.to(dtype_in)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   *, use_fast_path: bool = True, chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """Selective scan, ``[B, D, L]`` out (signature of mamba_ssm's ``selective_scan_fn``).

    The fused kernel runs when ``use_fast_path`` and :func:`fused_selective_scan_available`;
    otherwise the pure chunked path (see the module docstring).
    """
    if A.is_complex() or B.dim() != 3 or C.dim() != 3:
        raise ValueError("selective_scan supports real A [D, N] and input-dependent B, C [B, N, L]")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if use_fast_path and fused_selective_scan_available(u):
        return _fused_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    kernel = None
    if use_fast_path and u.device.type == "cpu" and not (torch.compiler.is_exporting() or torch.jit.is_tracing()):
        kernel = cpu_scan_kernel()  # None where it cannot be built or is switched off
    return _unfused_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size, kernel)


# --- the Mamba block --------------------------------------------------------------------
class Mamba(nn.Module):
    """Mamba mixer (mamba_ssm's ``Mamba`` of ``mamba_simple.py``), ``[B, L, H] -> [B, L, H]``.

    ``in_proj`` (H -> 2E, no bias, E = expand H) gives ``x, z``; ``x`` goes through a causal
    depthwise conv (width ``d_conv``, bias) and SiLU; ``x_proj`` (E -> R + 2N) gives the
    low-rank ``dt`` (rank ``R = ceil(H / 16)`` by default), ``B`` and ``C``; ``dt_proj``
    (R -> E) maps ``dt`` up, its bias is the ``delta_bias`` of a softplus; the selective scan
    with ``A = -exp(A_log)`` (S4D-real init ``A_log = log(1..N)``), skip ``D`` (ones) and gate
    ``silu(z)`` follows; ``out_proj`` (E -> H, no bias) closes. Parameter names and shapes
    are mamba_ssm's.

    ``valid [B, L]`` (optional, bool): the conv output is zeroed at padding, so with
    left-padded inputs that are 0 at padding the scan state stays 0 through the padding and
    real positions do not depend on how much padding precedes them.

    The causal conv is computed as ``d_conv`` shifted multiply-adds in ``[B, L, E]`` layout
    (no transposes), with ``conv1d.weight`` as parameter.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 use_fast_path: bool = True, chunk_size: int = DEFAULT_CHUNK):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.use_fast_path = use_fast_path
        self.chunk_size = chunk_size
        E, N, R = self.d_inner, d_state, self.dt_rank
        self.in_proj = nn.Linear(d_model, 2 * E, bias=bias)
        self.conv1d = nn.Conv1d(E, E, kernel_size=d_conv, groups=E, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        # mamba's dt initialisation: softplus(dt_proj.bias) log-uniform in [dt_min, dt_max]
        dt_init_std = R**-0.5
        nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        dt = torch.exp(torch.rand(E) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, d_model, bias=bias)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"expand={self.expand}, dt_rank={self.dt_rank}, use_fast_path={self.use_fast_path}")

    def _causal_conv(self, x: Tensor) -> Tensor:
        """Depthwise causal conv over L of ``x [B, L, E]`` (zeros before the first position)."""
        K, L = self.d_conv, x.shape[1]
        w = self.conv1d.weight[:, 0, :].t().to(x.dtype)  # (K, E); tap K-1 is the current position
        xp = F.pad(x, (0, 0, K - 1, 0))
        out = xp[:, K - 1 : K - 1 + L] * w[K - 1]
        for k in range(K - 1):
            out = out.addcmul(xp[:, k : k + L], w[k])
        if self.conv1d.bias is not None:
            out = out + self.conv1d.bias.to(x.dtype)
        return out

    def forward(self, hidden: Tensor, valid: Tensor | None = None) -> Tensor:
        Bsz, L, _ = hidden.shape
        E, N, R = self.d_inner, self.d_state, self.dt_rank
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (B, L, E) each
        x = F.silu(self._causal_conv(x))
        if valid is not None:
            x = x * valid.unsqueeze(-1).to(x.dtype)
        dt, Bm, Cm = torch.split(self.x_proj(x), [R, N, N], dim=-1)
        dt = dt @ self.dt_proj.weight.t().to(dt.dtype)  # (B, L, E); bias goes in as delta_bias
        A = -torch.exp(self.A_log.float())  # (E, N)
        y = selective_scan(
            x.transpose(1, 2), dt.transpose(1, 2), A, Bm.transpose(1, 2), Cm.transpose(1, 2),
            self.D.float(), z=z.transpose(1, 2), delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True, use_fast_path=self.use_fast_path, chunk_size=self.chunk_size,
        )  # (B, E, L)
        return self.out_proj(y.transpose(1, 2).to(hidden.dtype))
