"""Causal self-attention for left-padded sequences: SASRec's and TiSASRec's.

Both modules follow one convention (shapes in comments: B batch, L length, D model width,
H heads, Dh = D // H per-head width, S = time_span + 1 interval buckets):

* the sequence is right-aligned: ``valid[b, i]`` is ``False`` on the left padding;
* query ``i`` may attend to key ``j`` iff ``j <= i`` (causal) and ``j`` is a real item;
* a query always may attend to *itself*. For a real query this changes nothing (its own
  key is real and ``i <= i``); for a padding query it avoids an all-masked softmax row,
  which would give ``NaN`` outputs and ``NaN`` gradients. Padding rows therefore get a
  finite (meaningless) output that the model zeroes right after each block.

Each module has two implementations behind ``attn_impl``, kept side by side so that the
readable one documents the fast one and the tests hold them together:

* ``"sdpa"`` (default): :func:`torch.nn.functional.scaled_dot_product_attention` for
  SASRec; for TiSASRec a bucketed formulation that never materialises a ``[B, L, L, D]``
  tensor (see :class:`TimeIntervalSelfAttention`).
* ``"manual"``: the textbook formula with explicit ``softmax``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqrec.models.layers.dropout import Dropout, dropout

ATTN_IMPLS = ("sdpa", "manual")


def causal_padding_mask(valid: Tensor) -> Tensor:
    """Boolean attention mask ``[B, 1, L, L]``; ``True`` where query i may attend key j.

    ``allowed[b, i, j] = (j <= i) and (valid[b, j] or i == j)`` -- see module docstring.
    """
    L = valid.shape[1]
    idx = torch.arange(L, device=valid.device)
    causal = idx[None, :] <= idx[:, None]  # (L, L), [i, j] = j <= i
    eye = idx[None, :] == idx[:, None]  # (L, L)
    allowed = causal[None] & (valid[:, None, :] | eye[None])  # (B, L, L)
    return allowed[:, None]  # (B, 1, L, L), broadcasts over heads


def causal_padding_additive_mask(valid: Tensor) -> Tensor:
    """The float form of :func:`causal_padding_mask` (0 where allowed, -inf elsewhere),
    ``[B, 1, L, L]``.

    SDPA converts a boolean mask to this form on every call (a ``where`` over ``[B, 1, L, L]``,
    ~15% of CPU inference time); a model builds it once per forward and shares it across
    blocks. Both attention paths accept either form. Built in one pass: a shared causal
    ``[L, L]`` part plus a per-key padding ``[B, L]`` part, then the diagonal (always
    allowed) reset to 0.
    """
    L = valid.shape[1]
    causal = torch.triu(torch.full((L, L), float("-inf"), device=valid.device), diagonal=1)  # (L, L)
    keys = torch.zeros(valid.shape, device=valid.device).masked_fill(~valid, float("-inf"))  # (B, L)
    mask = causal[None, None] + keys[:, None, None, :]  # (B, 1, L, L)
    eye = torch.eye(L, dtype=torch.bool, device=valid.device)  # out of place: exportable graphs
    return mask.masked_fill(eye, 0.0)


def _split_heads(x: Tensor, n_heads: int) -> Tensor:
    B, L, D = x.shape
    return x.view(B, L, n_heads, D // n_heads).transpose(1, 2)  # (B, H, L, Dh)


def _merge_heads(x: Tensor) -> Tensor:
    B, H, L, Dh = x.shape
    return x.transpose(1, 2).reshape(B, L, H * Dh)  # (B, L, D)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a key padding mask (SASRec).

    ``forward(x [B, L, D], attn_mask [B, 1, L, L] bool) -> [B, L, D]``. Dropout is applied
    to the attention weights and to the output projection (the residual wrapper adds no
    dropout of its own).
    """

    def __init__(self, dim: int, n_heads: int, dropout: float, attn_impl: str = "sdpa"):
        super().__init__()
        if dim % n_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by n_heads ({n_heads})")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        self.n_heads = n_heads
        self.dropout = dropout
        self.attn_impl = attn_impl
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.out_dropout = Dropout(dropout)

    def project_qkv(self, x: Tensor, last_only: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """``q, k, v`` of ``x`` [B, L, D] (``q`` of the last position only when ``last_only``).

        The projections are separate modules (readable state dicts) but run as one matmul
        with the weights concatenated: one pass over ``x`` instead of three.
        """
        if last_only:
            kv = F.linear(x, torch.cat([self.k_proj.weight, self.v_proj.weight]),
                          torch.cat([self.k_proj.bias, self.v_proj.bias]))
            return (self.q_proj(x[:, -1:]), *kv.chunk(2, dim=-1))
        qkv = F.linear(x, torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]),
                       torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]))
        return qkv.chunk(3, dim=-1)

    def forward(self, x: Tensor, attn_mask: Tensor, last_only: bool = False) -> Tensor:
        """``last_only``: queries from the last position only -> ``[B, 1, D]``."""
        if last_only:
            attn_mask = attn_mask[..., -1:, :]
        q, k, v = (_split_heads(t, self.n_heads) for t in self.project_qkv(x, last_only))  # (B, H, L, Dh)
        p = self.dropout if self.training else 0.0
        # On CPU, SDPA with dropout falls back to an unfused path that is slower than the
        # manual one with seqrec's byte dropout; the fused kernel serves everything else.
        if attn_mask.dtype != torch.bool and attn_mask.dtype != q.dtype:
            attn_mask = attn_mask.to(q.dtype)  # additive mask under autocast
        if self.attn_impl == "sdpa" and (p == 0.0 or x.device.type != "cpu"):
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, L, L)
            if attn_mask.dtype == torch.bool:
                att = att.masked_fill(~attn_mask, float("-inf"))
            else:
                att = att + attn_mask
            att = dropout(torch.softmax(att, dim=-1), p=p, training=self.training)
            y = att @ v  # (B, H, L, Dh)
        return self.out_dropout(self.out_proj(_merge_heads(y)))


class TimeIntervalSelfAttention(CausalSelfAttention):
    """TiSASRec's time-interval-aware multi-head causal self-attention.

    For query ``i`` and key ``j`` (per head, ``Dh`` = head width)::

        e_ij = q_i . (k_j + PK_j + RK[r_ij]) / sqrt(Dh)
        z_i  = sum_j softmax_j(e_ij) * (v_j + PV_j + RV[r_ij])

    with ``PK, PV`` absolute-position embeddings ``[B, L, D]`` and ``RK, RV`` interval
    embedding *tables* ``[S, D]`` (``S = time_span + 1``) indexed by the relation matrix
    ``r [B, L, L]`` (long). The caller applies dropout to ``PK, PV`` and to the tables.

    ``forward(x, attn_mask, relation, pos_k, pos_v, rel_k, rel_v)``.

    Implementations (they agree to float rounding, also under dropout with the same seed,
    since both consume the RNG identically):

    * ``"manual"``: literal formula; gathers ``RK[r], RV[r]`` as ``[B, L, L, D]`` tensors
      (each kept for backward) -- memory ``O(B L^2 D)`` per layer.
    * ``"sdpa"`` (name shared with SASRec's flag; SDPA itself cannot be used because the
      ``RV`` term needs the attention weights): because ``r_ij`` takes only ``S`` values,
      ``q_i . RK[r_ij] = (q_i RK^T)[r_ij]`` is a gather from a ``[B, H, L, S]`` tensor, and
      ``sum_j a_ij RV[r_ij] = sum_s (sum_{j: r_ij = s} a_ij) RV[s]`` is a scatter-add of the
      weights into ``[B, H, L, S]`` buckets followed by a matmul. Memory ``O(B H L (L + S))``
      per layer -- the same order as ordinary attention; nothing ``[B, L, L, D]`` exists.
      (On CUDA, ``scatter_add`` uses atomics unless deterministic algorithms are enabled.)
    """

    def forward(
        self,
        x: Tensor,
        attn_mask: Tensor,
        relation: Tensor,
        pos_k: Tensor,
        pos_v: Tensor,
        rel_k: Tensor,
        rel_v: Tensor,
        last_only: bool = False,
    ) -> Tensor:
        H = self.n_heads
        B, L, D = x.shape
        Dh = D // H
        if last_only:  # queries from the last position only -> [B, 1, D]
            attn_mask, relation = attn_mask[..., -1:, :], relation[:, -1:, :]
        Lq = relation.shape[1]
        q, k, v = self.project_qkv(x, last_only)
        q = _split_heads(q, H)  # (B, H, Lq, Dh)
        k = _split_heads(k + pos_k, H)  # (B, H, L, Dh)
        v = _split_heads(v + pos_v, H)  # (B, H, L, Dh)
        scale = 1.0 / math.sqrt(Dh)
        p = self.dropout if self.training else 0.0

        if self.attn_impl == "sdpa":
            rk = rel_k.view(-1, H, Dh)  # (S, H, Dh)
            rv = rel_v.view(-1, H, Dh)  # (S, H, Dh)
            S = rk.shape[0]
            idx = relation[:, None].expand(B, H, Lq, L)  # stride-0 view, no copy
            q_rk = torch.einsum("bhid,shd->bhis", q, rk)  # (B, H, Lq, S)
            att = q @ k.transpose(-2, -1) + q_rk.gather(-1, idx)  # (B, H, Lq, L)
            att = (att * scale).masked_fill(~attn_mask, float("-inf"))
            att = dropout(torch.softmax(att, dim=-1), p=p, training=self.training)
            buckets = att.new_zeros(B, H, Lq, S).scatter_add(-1, idx, att)  # (B, H, Lq, S)
            y = att @ v + torch.einsum("bhis,shd->bhid", buckets, rv)  # (B, H, L, Dh)
        else:
            rk = F.embedding(relation, rel_k).view(B, Lq, L, H, Dh)  # (B, Lq, L, H, Dh)
            rv = F.embedding(relation, rel_v).view(B, Lq, L, H, Dh)
            att = q @ k.transpose(-2, -1) + torch.einsum("bhid,bijhd->bhij", q, rk)
            att = (att * scale).masked_fill(~attn_mask, float("-inf"))
            att = dropout(torch.softmax(att, dim=-1), p=p, training=self.training)
            y = att @ v + torch.einsum("bhij,bijhd->bhid", att, rv)  # (B, H, L, Dh)
        return self.out_dropout(self.out_proj(_merge_heads(y)))
