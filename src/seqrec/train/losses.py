"""Training losses over all positions of a sequence (padding never contributes).

Every loss takes the model (for its scoring interface), the hidden states ``h`` [B, L, D],
the targets [B, L] (0 = no loss at that position) and, where needed, negatives. Register a
new loss with :func:`register_loss`; the trainer looks losses up by name only.

Full-softmax CE (``"ce"``) has three paths, all the same loss (mean over positions with a
target of ``-log softmax``, the padding column 0 excluded):

* plain: the ``[M, n_items + 1]`` logit matrix, as ``F.cross_entropy`` sees it; used while
  ``M * (n_items + 1) <= CE_CHUNKED_MIN_ELEMENTS`` (results bit-identical to earlier versions);
* chunked (:class:`ChunkedLinearCrossEntropy`, pure PyTorch, any device): the forward streams
  over item chunks of ``CE_CHUNK_SIZE`` columns keeping a running float32 log-sum-exp and the
  target logits, and saves only ``h``, the table, the targets and the per-row log-sum-exp; the
  backward recomputes each chunk's logits and accumulates ``(softmax - onehot) @ table`` into
  ``grad_h`` and ``(softmax - onehot).T @ h`` into that chunk's rows of ``grad_table``. Peak
  memory is a few ``[M, CE_CHUNK_SIZE]`` buffers instead of three ``[M, n_items + 1]`` ones,
  for about one extra matrix product (the backward's recomputation);
* fused: on CUDA, when the optional ``cut_cross_entropy`` package (Cut Cross-Entropy,
  Wijmans et al. 2024) is installed, its Triton kernel replaces the chunked path (targets
  shifted by one against ``table[1:]``, so the padding item is no class). Its default
  gradient filtering skips contributions below bf16/fp32 precision, so it is exact up to
  that; set ``CE_FUSED = False`` to use the chunked path on CUDA too.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

LOSSES: dict[str, Callable] = {}

# How many sampled negatives each loss needs per position (None: none / its own sampling).
NEGATIVES: dict[str, str] = {}


def register_loss(name: str, negatives: str = "none"):
    """``negatives``: "none", "per_position" (one per position) or "shared" (N per batch)."""

    def deco(fn):
        LOSSES[name] = fn
        NEGATIVES[name] = negatives
        return fn

    return deco


def get_loss(name: str) -> Callable:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


@register_loss("bce", negatives="per_position")
def bce_loss(model, h, targets, negatives=None, **_):
    """SASRec/TiSASRec papers: binary cross-entropy, one sampled negative per position."""
    mask = targets > 0
    hm = h[mask]  # (M, D)
    pos = model.score_items(hm, targets[mask].unsqueeze(-1)).squeeze(-1)
    neg = model.score_items(hm, negatives[mask].unsqueeze(-1)).squeeze(-1)
    return F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos)) + F.binary_cross_entropy_with_logits(
        neg, torch.zeros_like(neg)
    )


@register_loss("bpr", negatives="per_position")
def bpr_loss(model, h, targets, negatives=None, **_):
    """Bayesian personalised ranking: -log sigmoid(s_pos - s_neg), one negative per position."""
    mask = targets > 0
    hm = h[mask]
    pos = model.score_items(hm, targets[mask].unsqueeze(-1)).squeeze(-1)
    neg = model.score_items(hm, negatives[mask].unsqueeze(-1)).squeeze(-1)
    return -F.logsigmoid(pos - neg).mean()


# --- full-softmax cross-entropy -------------------------------------------------------------
#: Above this many logits (positions x (n_items + 1)) "ce" leaves the plain path: 50M floats
#: are 200 MB per copy, and the plain path keeps about three copies (logits, log-softmax, grad).
CE_CHUNKED_MIN_ELEMENTS = 50_000_000
#: Item columns per chunk of the chunked path: its working set is a few [M, CE_CHUNK_SIZE]
#: float32 buffers (25,600 positions x 4,096 items = 420 MB per buffer).
CE_CHUNK_SIZE = 4096
#: Use the fused ``cut_cross_entropy`` kernel on CUDA (when installed) instead of the chunked path.
CE_FUSED = True


def _ce_compute_dtype(h: torch.Tensor, table: torch.Tensor) -> torch.dtype:
    """The dtype the logit matmul runs in: autocast's when it is on for this device (as
    ``h @ table.T`` would under autocast), else the inputs' common dtype."""
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(h.dtype, table.dtype)


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """``F.cross_entropy(h @ table.T with column 0 = -inf, targets)`` over item chunks.

    ``h [M, D]``, ``table [N + 1, D]`` (row 0 = padding), ``targets [M]`` in ``1..N``; returns
    the mean loss (a 0-dim tensor, float32 unless the inputs are float64). The matmul runs in
    ``compute_dtype`` (autocast's under autocast), every softmax quantity in float32 (or
    float64 for float64 inputs), gradients are returned in the inputs' dtypes.
    """

    @staticmethod
    def forward(ctx, h, table, targets, chunk_size: int, compute_dtype: torch.dtype):
        acc_dtype = torch.promote_types(compute_dtype, torch.float32)
        n_cols = table.shape[0]
        with torch.autocast(h.device.type, enabled=False):
            hc = h.to(compute_dtype)  # (M, D)
            lse = torch.full((h.shape[0],), float("-inf"), dtype=acc_dtype, device=h.device)  # (M,)
            target_logit = torch.zeros_like(lse)  # (M,)
            for start in range(0, n_cols, chunk_size):
                stop = min(start + chunk_size, n_cols)
                logits = (hc @ table[start:stop].to(compute_dtype).T).to(acc_dtype)  # (M, C)
                if start == 0:
                    logits[:, 0] = float("-inf")
                lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=1))
                # Target logits from the same matmul as the log-sum-exp (no host sync).
                in_chunk = (targets >= start) & (targets < stop)  # (M,)
                col = (targets - start).clamp(0, stop - start - 1).unsqueeze(1)  # (M, 1)
                target_logit = torch.where(in_chunk, logits.gather(1, col).squeeze(1), target_logit)
                del logits
        ctx.save_for_backward(h, table, targets, lse)
        ctx.chunk_size = chunk_size
        ctx.compute_dtype = compute_dtype
        return (lse - target_logit).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        h, table, targets, lse = ctx.saved_tensors
        chunk_size, compute_dtype = ctx.chunk_size, ctx.compute_dtype
        need_h, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc_dtype = lse.dtype
        n_rows, n_cols = h.shape[0], table.shape[0]
        grad_h = torch.zeros(h.shape, dtype=acc_dtype, device=h.device) if need_h else None  # (M, D)
        grad_table = torch.zeros(table.shape, dtype=acc_dtype, device=table.device) if need_table else None
        scale = grad_out.to(acc_dtype) / n_rows  # d mean / d row = 1 / M
        with torch.autocast(h.device.type, enabled=False):
            hc = h.to(compute_dtype)  # (M, D)
            for start in range(0, n_cols, chunk_size):
                stop = min(start + chunk_size, n_cols)
                tc = table[start:stop].to(compute_dtype)  # (C, D)
                g = (hc @ tc.T).to(acc_dtype)  # (M, C) logits, recomputed
                if start == 0:
                    g[:, 0] = float("-inf")
                g.sub_(lse.unsqueeze(1)).exp_()  # softmax
                in_chunk = (targets >= start) & (targets < stop)
                col = (targets - start).clamp(0, stop - start - 1).unsqueeze(1)
                g.scatter_add_(1, col, -in_chunk.to(acc_dtype).unsqueeze(1))  # softmax - onehot
                g.mul_(scale)
                gc = g.to(compute_dtype)  # (M, C), what autograd of h @ table.T would see
                if need_h:
                    grad_h += (gc @ tc).to(acc_dtype)  # (M, D)
                if need_table:
                    grad_table[start:stop] = (gc.T @ hc).to(acc_dtype)  # (C, D)
                del g, gc
        if need_h:
            grad_h = grad_h.to(h.dtype)
        if need_table:
            grad_table = grad_table.to(table.dtype)
        return grad_h, grad_table, None, None, None


def chunked_cross_entropy(h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor,
                          chunk_size: int | None = None) -> torch.Tensor:
    """Mean full-softmax CE of ``h [M, D]`` against ``table [N + 1, D]`` (column 0 excluded),
    ``targets [M]`` in ``1..N``, without the ``[M, N + 1]`` logit matrix (see the module doc)."""
    chunk_size = int(chunk_size or CE_CHUNK_SIZE)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return ChunkedLinearCrossEntropy.apply(h, table, targets, chunk_size, _ce_compute_dtype(h, table))


_CCE_UNSET = object()
_cce_fn = _CCE_UNSET


def _cut_cross_entropy():
    """``cut_cross_entropy.linear_cross_entropy``, or None where it is not installed (looked up
    once). Called on CUDA only, so CPU runs never import it."""
    global _cce_fn
    if _cce_fn is _CCE_UNSET:
        try:
            from cut_cross_entropy import linear_cross_entropy
        except Exception:  # not installed, or no Triton / no usable GPU
            linear_cross_entropy = None
        _cce_fn = linear_cross_entropy
    return _cce_fn


def fused_cross_entropy(h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor,
                        linear_cross_entropy) -> torch.Tensor:
    """The same loss through ``cut_cross_entropy``: classes are items ``1..N`` (``table[1:]``),
    target item ``t`` is class ``t - 1``, so the padding item is no class at all."""
    dtype = _ce_compute_dtype(h, table)
    e = h.to(dtype)  # (M, D)
    c = table[1:].to(dtype)  # (N, D)
    return linear_cross_entropy(e, c, targets - 1, reduction="mean").float()


def _ce_plain(model, hm: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    logits = model.score_all(hm)  # (M, n_items + 1)
    logits[:, 0] = float("-inf")
    return F.cross_entropy(logits.float(), t)


@register_loss("ce")
def ce_loss(model, h, targets, chunk_size: int | None = None, impl: str = "auto", **_):
    """Full softmax cross-entropy over all items (SASRec+ / RecBole CE); padding column excluded.

    ``impl``: "auto" (plain while ``positions x (n_items + 1) <= CE_CHUNKED_MIN_ELEMENTS``,
    else fused on CUDA when ``cut_cross_entropy`` is installed, else chunked), or "plain",
    "chunked", "fused" to force one; ``chunk_size``: the chunked path's item columns per chunk
    (default ``CE_CHUNK_SIZE``). See the module doc.
    """
    mask = targets > 0
    hm = h[mask]  # (M, D)
    t = targets[mask]  # (M,)
    if impl not in ("auto", "plain", "chunked", "fused"):
        raise ValueError(f"ce_loss impl must be auto, plain, chunked or fused, got {impl!r}")
    if impl == "plain":
        return _ce_plain(model, hm, t)
    table = model.output_embedding()  # (n_items + 1, D)
    if impl == "auto" and hm.shape[0] * table.shape[0] <= CE_CHUNKED_MIN_ELEMENTS:
        return _ce_plain(model, hm, t)
    if impl == "fused" or (impl == "auto" and CE_FUSED and hm.is_cuda):
        lce = _cut_cross_entropy() if hm.is_cuda else None
        if lce is not None:
            return fused_cross_entropy(hm, table, t, lce)
        if impl == "fused":
            raise RuntimeError("ce_loss impl='fused' needs CUDA and the cut-cross-entropy package "
                               "(pip install cut-cross-entropy)")
    return chunked_cross_entropy(hm, table, t, chunk_size)


@register_loss("sampled_softmax", negatives="shared")
def sampled_softmax_loss(model, h, targets, negatives=None, **_):
    """Softmax over the target and N negatives, ``negatives [N]`` shared by the batch. A
    negative equal to the target is masked out."""
    mask = targets > 0
    hm = h[mask]
    t = targets[mask]
    pos = model.score_items(hm, t.unsqueeze(-1))  # (M, 1)
    neg = hm @ model.output_embedding()[negatives].T  # (M, N)
    same = negatives.unsqueeze(0) == t.unsqueeze(1)
    neg = neg.masked_fill(same, float("-inf"))
    logits = torch.cat([pos, neg], dim=1).float()
    return F.cross_entropy(logits, torch.zeros(len(t), dtype=torch.long, device=h.device))
