"""Residual connections and the transformer block that composes them.

The residual connection is a seam: :class:`TransformerBlock` receives the residual class
as a parameter (``residual_cls``), so a different scheme -- e.g. Manifold-Constrained
Hyper-Connections, which keep ``n`` parallel residual streams -- can replace
:class:`Residual` without touching attention, feed-forward or the models.

A replacement must provide:

* ``__init__(sublayer: nn.Module, dim: int, norm_first: bool)``;
* ``forward(x, **kwargs)`` that calls ``sublayer(h, **kwargs)`` on a ``[B, L, D]`` tensor
  ``h`` and returns something shaped like ``x``;
* classmethods ``expand_streams(h [B, L, D])`` (called once on the embeddings, before the
  first block) and ``reduce_streams(x) -> [B, L, D]`` (called once after the last block).
  For the plain residual both are the identity; a multi-stream scheme would map
  ``[B, L, D] <-> [B, L, n, D]`` here. Models zero padding positions with
  :func:`apply_mask`, which broadcasts over any trailing stream dimensions.
"""

from __future__ import annotations

from torch import Tensor, nn


def apply_mask(x: Tensor, valid: Tensor) -> Tensor:
    """Multiply ``x [B, L, ...]`` by ``valid [B, L]`` broadcast over trailing dims."""
    return x * valid.view(*valid.shape, *([1] * (x.dim() - 2))).to(x.dtype)


class Residual(nn.Module):
    """``x + f(LN(x))`` when ``norm_first`` (pre-LN), else ``LN(x + f(x))`` (post-LN)."""

    def __init__(self, sublayer: nn.Module, dim: int, norm_first: bool = True):
        super().__init__()
        self.sublayer = sublayer
        self.norm = nn.LayerNorm(dim)
        self.norm_first = norm_first

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        if self.norm_first:
            return x + self.sublayer(self.norm(x), **kwargs)
        return self.norm(x + self.sublayer(x, **kwargs))

    @classmethod
    def expand_streams(cls, h: Tensor) -> Tensor:
        return h

    @classmethod
    def reduce_streams(cls, x: Tensor) -> Tensor:
        return x


class TransformerBlock(nn.Module):
    """Attention then feed-forward, each wrapped in ``residual_cls``.

    ``forward(x, valid [B, L] bool, **attn_kwargs)``: ``attn_kwargs`` go to the attention
    sub-layer (mask, and for TiSASRec the relation and position/interval embeddings);
    padding positions are zeroed on the way out.
    """

    def __init__(
        self,
        attn: nn.Module,
        ffn: nn.Module,
        dim: int,
        norm_first: bool = True,
        residual_cls: type[nn.Module] = Residual,
    ):
        super().__init__()
        self.attn = residual_cls(attn, dim, norm_first)
        self.ffn = residual_cls(ffn, dim, norm_first)

    def forward(self, x: Tensor, valid: Tensor, **attn_kwargs) -> Tensor:
        x = self.attn(x, **attn_kwargs)
        x = self.ffn(x)
        return apply_mask(x, valid)
