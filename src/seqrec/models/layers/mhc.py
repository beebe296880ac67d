"""mHC: Manifold-Constrained Hyper-Connections (Xie et al., DeepSeek-AI, arXiv 2512.24880).

mHC extends Hyper-Connections (Zhu et al., arXiv 2409.19606): the residual stream is
widened to ``n`` parallel streams ``x_l [B, L, n, D]`` that persist through the whole
network, and every sub-layer ``F`` (attention or feed-forward) is wrapped as::

    x_{l+1} = H_res x_l + H_post^T F(H_pre x_l)

* ``H_pre [1 x n]`` reads the sub-layer input as a weighted sum of the streams;
* ``H_post [1 x n]`` writes the sub-layer output back to each stream with its own weight;
* ``H_res [n x n]`` mixes the streams, ``(H_res x)_i = sum_j H_res[i, j] x_j``.

The coefficients are per token (``[B, L]``), computed from that token's streams only, so
causality and left-padding invariance are untouched. With ``x~`` the token's streams
flattened to ``n * D`` and ``phi [n D, 2n + n^2]`` a learned projection (no bias)::

    c = RMSNorm(x~) phi                     # = (x~ phi) / rms(x~), normalised after the matmul
    H_pre  = (2 / n) * sigmoid(alpha_pre  * c_pre  + b_pre)       # b_pre  = 0 at init
    H_post = 2       * sigmoid(alpha_post * c_post + b_post)      # b_post = 0 at init
    H_res  = SinkhornKnopp(exp(alpha_res * mat(c_res) + b_res))   # b_res  = c0 * I at init

``alpha_pre, alpha_post, alpha_res`` are learned scalars initialised to ``init_gate``
(``--mhc_init_gate``, default 0.01); the RMSNorm has no gain (it would be redundant with
``phi``); ``phi`` is ``Normal(0, (n D)^-1/2)`` so the dynamic terms are ``O(alpha)``.
``SinkhornKnopp`` (:func:`sinkhorn`) alternates row and column normalisation
``sinkhorn_iter`` times (the first round in log space, see :func:`sinkhorn` for why the
rest may run in linear space) and ends with a column normalisation, so columns
sum to 1 exactly (to rounding) and rows to within the convergence error. Sinkhorn
converges geometrically with a rate set by how peaked the matrix is (the closer to a
permutation, the slower): with the static init below and dynamic logit terms up to ~0.1,
20 iterations give rows within 1e-5 (tested to 1e-4); logits far from the init (e.g.
noise of std 1) can leave row errors ~1e-2 after 20 iterations, which is why the static
diagonal is 0.8 rather than closer to 1 (at 0.95 even the init's O(0.01) dynamic noise
leaves ~2e-4).

**Deviation from the paper, on purpose**: the paper's ``H_pre = sigmoid(.)``. We scale it
by ``2 / n`` (identical to the paper for ``n = 2``). This makes the zero static bias give
``H_pre = 1/n`` (the stream average) *exactly*, for every ``n`` including ``n = 1``, where
``sigmoid`` can never reach 1; the range of ``sum_j H_pre[j]`` is ``(0, 2)``, centred on
the plain model's 1, like ``H_post``'s per-stream range.

**Initialisation (the "plain model at step 0" property).** Static biases:
``b_pre = 0`` (``H_pre = 1/n`` each), ``b_post = 0`` (``H_post = 1`` each),
``b_res = c0 I`` with ``c0 = log(p (n - 1) / (1 - p))``, ``p = res_diag_init = 0.8``
(``c0 = log 12 = 2.48`` for ``n = 4``)
(so the static ``H_res`` has ``p`` on the diagonal and ``(1 - p) / (n - 1)`` elsewhere: it
is already doubly stochastic, Sinkhorn leaves it as is; for ``n = 1`` it is ``[[1]]``).
The embedding is copied into all ``n`` streams (:func:`expand_streams`) and the streams
are merged by their **mean** (:func:`reduce_streams`) before the final norm. With gates at
0 and identical streams ``x``: ``H_pre x = x``, every stream becomes
``sum_j H_res[i, j] x + 1 * F(.) = x + F(.)`` (rows sum to 1), so the streams stay
identical and their mean equals the plain block's output -- exactly for ``n = 1`` and to
float rounding for ``n > 1``. With the default gate 0.01 the output differs from the plain
model by ``O(alpha)`` (tested). The mean is also what ``H_res`` conserves in general: its
columns sum to 1, so ``mean_i (H_res x)_i = mean_j x_j`` and the merged stream follows a
plain residual ``mean(x_{l+1}) = mean(x_l) + mean(H_post) F``. A consequence (true of
any sum/mean merge with a column-stochastic ``H_res``, as in the paper): the *last*
sub-layer's ``H_res`` does not influence the output and receives no gradient.

**Pre-LN / post-LN.** Pre-LN: the sub-layer gets ``LN(H_pre x)`` and the stream update is
``H_res x + H_post^T F``. Post-LN: the sub-layer gets ``H_pre x`` unnormalised and the
LayerNorm is applied to each stream *after* the mixing, ``x_{l+1} = LN(H_res x +
H_post^T F)`` -- the analogue of ``LN(x + F(x))``; the residual ``H_res x`` is added once,
inside the norm, never again after it. In post-LN mode the merged output (mean of ``n``
normalised streams) is not renormalised, as there is no final norm in that mode.

**Precision.** The residual streams are mixed (``H_res x``, ``H_pre x``, ``H_post^T F``) in
the streams' own dtype with autocast disabled, so -- as with ``x + F`` in the plain model --
autocast never rounds the residual stream to half precision. The coefficients follow
autocast: the ``x~ phi`` matmul runs in its low precision, and so do the gates built from it;
the Sinkhorn does too on CPU, while CUDA autocast lists ``exp`` (and, in recent PyTorch,
``logsumexp``) among its float32 ops, which lifts the Sinkhorn to float32 there. With
``no_amp`` (``--mhc_no_amp``) all coefficients are computed in float32 with autocast disabled
and cast back to the streams' dtype.

Cost per sub-layer and token: ``n D (2n + n^2)`` multiply-adds for the coefficients,
``~(n^2 + 2n) D`` for the mixing (one batched ``n x n`` matmul, ``H_res x``, and two
broadcast products) and ``O(sinkhorn_iter n^2)`` for Sinkhorn; parameters
``n D (2n + n^2) + 2n + n^2 + 3`` per sub-layer; activation memory ``n`` times the plain
residual stream plus ``~2.5 sinkhorn_iter n^2`` floats per token saved for Sinkhorn's
backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seqrec.models.layers.residual import Residual
from seqrec.utils.options import opt


def sinkhorn_reference(logits: Tensor, n_iter: int) -> Tensor:
    """Readable reference of :func:`sinkhorn`: every round in log space, plain autograd.

    ``logits [..., n, n]``; ``n_iter`` rounds of (row normalisation, column normalisation)
    of ``log P`` with ``logsumexp``, then ``exp``. Slow (about 8x :func:`sinkhorn` for
    forward + backward on CPU); kept to document and test the fast path.
    """
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    log_p = logits
    for _ in range(n_iter):
        log_p = log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)  # rows
        log_p = log_p - torch.logsumexp(log_p, dim=-2, keepdim=True)  # columns
    return log_p.exp()


def _balance(p: Tensor, k: int, saved: list[Tensor] | None = None) -> Tensor:
    """``k`` rounds of row then column normalisation of ``p [n, n, M]``; appends each half-step's
    sums and iterate to ``saved`` when given (what the backward needs)."""
    for _ in range(k):
        for d in (1, 0):
            s = p.sum(d, keepdim=True)
            p = p / s
            if saved is not None:
                saved += [s, p]
    return p


class _BalanceRounds(torch.autograd.Function):
    """``k`` linear-space Sinkhorn rounds on ``p [n, n, M]`` with a hand-written backward.

    Each half-step is ``p' = p / s``, ``s = p.sum(d)`` (``d = 1`` rows, ``0`` columns);
    its backward is ``g_in = (g - sum_d(g * p')) / s``. The sums ``s`` and the iterates
    are saved (``~2.5 n^2 M`` floats per round).
    """

    @staticmethod
    def forward(ctx, p: Tensor, k: int) -> Tensor:
        saved: list[Tensor] = []
        p = _balance(p, k, saved)
        ctx.save_for_backward(*saved)
        return p

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        saved = ctx.saved_tensors
        g = g.contiguous()
        for h in range(len(saved) // 2 - 1, -1, -1):  # half-steps, last first
            s, p_out = saved[2 * h], saved[2 * h + 1]
            d = 1 if h % 2 == 0 else 0
            g = (g - (g * p_out).sum(d, keepdim=True)) / s
        return g, None


def _sinkhorn_nnm(q: Tensor, n_iter: int) -> Tensor:
    """:func:`sinkhorn` on logits laid out ``[n, n, M]`` (``M`` matrices, contiguous)."""
    q = q - torch.logsumexp(q, dim=1, keepdim=True)  # rows, log space
    q = q - torch.logsumexp(q, dim=0, keepdim=True)  # columns, log space
    p = q.exp()
    if n_iter > 1 and torch.is_grad_enabled() and p.requires_grad:
        p = _BalanceRounds.apply(p, n_iter - 1)
    else:  # inference: the same rounds, no saved tensors (also what graph exports trace)
        p = _balance(p, n_iter - 1)
    return p


def sinkhorn(logits: Tensor, n_iter: int) -> Tensor:
    """Sinkhorn-Knopp projection of ``exp(logits)`` onto doubly stochastic matrices.

    ``logits [..., n, n]`` -> ``[..., n, n]``: ``n_iter`` rounds of row normalisation then
    column normalisation, so columns sum to 1 exactly (to rounding) and rows to within the
    convergence error. Equal to :func:`sinkhorn_reference` (all rounds in log space) to
    float rounding, values and gradients, but faster:

    * the first round runs in log space (``logsumexp``), the only step where the raw
      logits' range matters (``exp`` of unbounded logits could overflow);
    * after it every entry is ``<= 1`` and every row and column sum lies in
      ``[1/n^2, n]`` (and stays in ``[1/n, n]`` in later rounds), so the remaining rounds
      are divisions by well-scaled sums in linear space, safe in any float format;
    * the matrices are laid out ``[n, n, M]`` so each reduction is a sum of ``n``
      contiguous vectors, with a hand-written backward (:class:`_BalanceRounds`).
    """
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    *lead, n, n2 = logits.shape
    if n != n2:
        raise ValueError(f"sinkhorn needs square matrices, got {tuple(logits.shape)}")
    q = logits.reshape(-1, n, n).permute(1, 2, 0).contiguous()  # (n, n, M)
    return _sinkhorn_nnm(q, n_iter).permute(2, 0, 1).reshape(*lead, n, n)


def expand_streams(h: Tensor, n: int) -> Tensor:
    """``[B, L, D] -> [B, L, n, D]``: ``n`` copies of ``h``.

    A contiguous copy, not a broadcast view: CPU batched matmuls over stride-0 batches
    take a slow per-matrix path.
    """
    return h.unsqueeze(-2).expand(*h.shape[:-1], n, h.shape[-1]).contiguous()


def reduce_streams(x: Tensor) -> Tensor:
    """``[B, L, n, D] -> [B, L, D]``: the mean of the streams (inverse of expand)."""
    return x.mean(dim=-2)


class HyperConnection(nn.Module):
    """mHC residual around ``sublayer``; ``forward(x [B, L, n, D], **kw) -> [B, L, n, D]``.

    ``HyperConnection(sublayer, dim, norm_first, n=4, sinkhorn_iter=20, init_gate=0.01,
    no_amp=False)``; see the module docstring for the parameterisation. Models use it via
    :class:`HyperConnectionFactory` (``HyperConnection.configure(...)``), which also
    provides the stream expand/reduce.
    """

    #: parameters AdamW's weight decay skips (the static biases and gates; see
    #: :meth:`SequentialRecommender.no_weight_decay`)
    no_decay = ("alpha_pre", "alpha_post", "alpha_res", "bias_pre", "bias_post", "bias_res")

    def __init__(
        self,
        sublayer: nn.Module,
        dim: int,
        norm_first: bool = True,
        *,
        n: int = 4,
        sinkhorn_iter: int = 20,
        init_gate: float = 0.01,
        no_amp: bool = False,
        res_diag_init: float = 0.8,
        eps: float = 1e-6,
    ):
        super().__init__()
        if n < 1 or sinkhorn_iter < 1 or init_gate < 0:
            raise ValueError(
                f"need n >= 1, sinkhorn_iter >= 1, init_gate >= 0; got {n}, {sinkhorn_iter}, "
                f"{init_gate}"
            )
        if not 0.0 < res_diag_init < 1.0 and n > 1:
            raise ValueError(f"res_diag_init must be in (0, 1), got {res_diag_init}")
        self.sublayer = sublayer
        self.norm = nn.LayerNorm(dim)
        self.norm_first = norm_first
        self.dim = dim
        self.n = n
        self.sinkhorn_iter = sinkhorn_iter
        self.init_gate = float(init_gate)
        self.no_amp = no_amp
        self.res_diag_init = res_diag_init
        self.eps = eps
        # Dynamic part: one projection to the 2n + n^2 coefficients, then per-group gates.
        self.phi = nn.Parameter(torch.empty(n * dim, 2 * n + n * n))
        self.alpha_pre = nn.Parameter(torch.empty(()))
        self.alpha_post = nn.Parameter(torch.empty(()))
        self.alpha_res = nn.Parameter(torch.empty(()))
        # Static part.
        self.bias_pre = nn.Parameter(torch.empty(n))
        self.bias_post = nn.Parameter(torch.empty(n))
        self.bias_res = nn.Parameter(torch.empty(n, n))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Static init of the module docstring (the sub-layer and norm are left alone)."""
        n = self.n
        with torch.no_grad():
            nn.init.normal_(self.phi, mean=0.0, std=(n * self.dim) ** -0.5)
            for a in (self.alpha_pre, self.alpha_post, self.alpha_res):
                a.fill_(self.init_gate)
            self.bias_pre.zero_()
            self.bias_post.zero_()
            self.bias_res.zero_()
            if n > 1:
                p = self.res_diag_init
                self.bias_res.fill_diagonal_(math.log(p * (n - 1) / (1 - p)))

    @classmethod
    def configure(
        cls, n: int = 4, sinkhorn_iter: int = 20, init_gate: float = 0.01, no_amp: bool = False
    ) -> HyperConnectionFactory:
        """The residual factory to pass to :class:`TransformerBlock` (``residual_cls``)."""
        return HyperConnectionFactory(n, sinkhorn_iter, init_gate, no_amp)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, n={self.n}, norm_first={self.norm_first}, "
            f"sinkhorn_iter={self.sinkhorn_iter}, no_amp={self.no_amp}"
        )

    # --- coefficients --------------------------------------------------------------------
    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(H_pre [.., n], H_post [.., n], H_res [.., n, n])`` for streams ``x [.., n, D]``.

        Follows autocast, or float32 (cast back to ``x.dtype``) with ``no_amp``.
        """
        if x.shape[-2:] != (self.n, self.dim):
            raise ValueError(
                f"HyperConnection expects streams [..., {self.n}, {self.dim}], got "
                f"{tuple(x.shape)}: expand the embeddings with the factory's expand_streams"
            )
        if not self.no_amp:
            return self._coefficients(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            coeffs = self._coefficients(x.float(), force_float=True)
        return tuple(c.to(x.dtype) for c in coeffs)  # type: ignore[return-value]

    def _coefficients(self, x: Tensor, force_float: bool = False):
        n, D = self.n, self.dim
        lead = x.shape[:-2]
        flat = x.reshape(-1, n * D)  # (M, n D), M = number of tokens
        phi = self.phi.float() if force_float else self.phi
        # (K, M) with K = 2n + n^2: tokens on the contiguous axis, so the per-token n x n
        # work below (sigmoids, Sinkhorn) runs on contiguous [n, n, M] slabs
        proj = torch.mm(phi.t(), flat.t())  # low precision under autocast
        dt = proj.dtype  # the dtype every coefficient follows
        inv_rms = torch.rsqrt(flat.float().square().mean(-1) + self.eps)  # (M,)
        c = proj * inv_rms.to(dt)  # = (RMSNorm(flat) @ phi)^T
        c_pre, c_post, c_res = c[:n], c[n : 2 * n], c[2 * n :].view(n, n, -1)
        pre = self.alpha_pre.to(dt) * c_pre + self.bias_pre.to(dt)[:, None]
        post = self.alpha_post.to(dt) * c_post + self.bias_post.to(dt)[:, None]
        res = self.alpha_res.to(dt) * c_res + self.bias_res.to(dt)[:, :, None]
        h_pre = torch.sigmoid(pre) * (2.0 / n)  # (n, M)
        h_post = torch.sigmoid(post) * 2.0  # (n, M)
        h_res = _sinkhorn_nnm(res, self.sinkhorn_iter)  # (n, n, M)
        # back to token-major, contiguous (CPU bmm is ~8x slower on strided batches)
        return (
            h_pre.t().contiguous().view(*lead, n),
            h_post.t().contiguous().view(*lead, n),
            h_res.permute(2, 0, 1).contiguous().view(*lead, n, n),
        )

    # --- forward -------------------------------------------------------------------------
    def forward(self, x: Tensor, **kwargs) -> Tensor:
        h_pre, h_post, h_res = self.coefficients(x)
        dt = x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            h_pre, h_post, h_res = h_pre.to(dt), h_post.to(dt), h_res.to(dt)
            h = (h_pre.unsqueeze(-1) * x).sum(-2)  # (B, L, D): H_pre x
            mixed = torch.matmul(h_res, x)  # (B, L, n, D): H_res x, batched n x n matmul
        y = self.sublayer(self.norm(h) if self.norm_first else h, **kwargs)  # (B, L, D)
        if kwargs.get("last_only", False):  # the sublayer returned the last position only
            mixed, h_post = mixed[:, -1:], h_post[:, -1:]
        out = mixed + h_post.unsqueeze(-1) * y.to(dt).unsqueeze(-2)  # + H_post^T F
        return out if self.norm_first else self.norm(out)


@dataclass(frozen=True)
class HyperConnectionFactory:
    """Residual factory for mHC with ``n`` streams: what models pass as ``residual_cls``.

    ``factory(sublayer, dim, norm_first)`` builds a :class:`HyperConnection`;
    ``expand_streams``/``reduce_streams`` map ``[B, L, D] <-> [B, L, n, D]`` (copies / mean).
    """

    n: int = 4
    sinkhorn_iter: int = 20
    init_gate: float = 0.01
    no_amp: bool = False

    def __call__(self, sublayer: nn.Module, dim: int, norm_first: bool = True) -> HyperConnection:
        return HyperConnection(
            sublayer,
            dim,
            norm_first,
            n=self.n,
            sinkhorn_iter=self.sinkhorn_iter,
            init_gate=self.init_gate,
            no_amp=self.no_amp,
        )

    def expand_streams(self, h: Tensor) -> Tensor:
        return expand_streams(h, self.n)

    def reduce_streams(self, x: Tensor) -> Tensor:
        return reduce_streams(x)


@dataclass
class MHCConfig:
    """The ``mhc`` section of a transformer model's config (absent: plain residuals)."""

    expansion_rate: int = opt(4, "number of parallel residual streams n", low=1)
    sinkhorn_iter: int = opt(20, "Sinkhorn-Knopp iterations for H_res", low=1)
    init_gate: float = opt(0.01, "initial value of the dynamic gates alpha", low=0)
    no_amp: bool = opt(False, "compute the mixing coefficients and Sinkhorn in float32 under AMP")


def residual_from_config(mhc: MHCConfig | None, override=None) -> type[Residual] | HyperConnectionFactory:
    """``Residual`` or, with an ``mhc`` section, the mHC factory built from it.

    ``override``: a residual class/factory a caller passed explicitly (exclusive with mHC).
    """
    if override is not None:
        if mhc is not None:
            raise ValueError("pass either residual_cls or an mhc config, not both")
        return override
    if mhc is None:
        return Residual
    return HyperConnection.configure(n=mhc.expansion_rate, sinkhorn_iter=mhc.sinkhorn_iter,
                                     init_gate=float(mhc.init_gate), no_amp=bool(mhc.no_amp))
