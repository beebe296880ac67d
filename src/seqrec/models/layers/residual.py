"""Residual connections and the transformer block that composes them.

The residual connection is a seam: :class:`TransformerBlock` receives the residual class
(or factory) as a parameter (``residual_cls``), so a different scheme -- e.g.
Manifold-Constrained Hyper-Connections (:mod:`seqrec.models.layers.mhc`), which keep ``n``
parallel residual streams -- can replace :class:`Residual` without touching attention,
feed-forward or the models.

``residual_cls`` is anything with (see :class:`ResidualFactory`):

* a call ``residual_cls(sublayer: nn.Module, dim: int, norm_first: bool)`` returning a
  module -- a class such as :class:`Residual`, or a configured factory object such as
  :class:`~seqrec.models.layers.mhc.HyperConnectionFactory` (used when the scheme has
  hyper-parameters, e.g. the stream count ``n``, that ``expand_streams`` needs too);
  the module's ``forward(x, **kwargs)`` calls ``sublayer(h, **kwargs)`` on a
  ``[B, L, D]`` tensor ``h`` and returns something shaped like ``x``;
* ``expand_streams(h [B, L, D])`` (called once on the embeddings, before the first block)
  and ``reduce_streams(x) -> [B, L, D]`` (called once after the last block), classmethods
  or methods. For the plain residual both are the identity; mHC maps
  ``[B, L, D] <-> [B, L, n, D]`` here (copies / mean). Models zero padding positions with
  :func:`apply_mask`, which broadcasts over any trailing stream dimensions.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn


class ResidualFactory(Protocol):
    """What ``residual_cls`` must provide (see the module docstring)."""

    def __call__(self, sublayer: nn.Module, dim: int, norm_first: bool) -> nn.Module: ...

    def expand_streams(self, h: Tensor) -> Tensor: ...

    def reduce_streams(self, x: Tensor) -> Tensor: ...


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
        # with last_only=True the sublayer (attention) returns the last position only
        last = kwargs.get("last_only", False)
        if self.norm_first:
            y = self.sublayer(self.norm(x), **kwargs)
            return (x[:, -1:] if last else x) + y
        y = self.sublayer(x, **kwargs)
        return self.norm((x[:, -1:] if last else x) + y)

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
        residual_cls: ResidualFactory | type[nn.Module] = Residual,
    ):
        super().__init__()
        self.attn = residual_cls(attn, dim, norm_first)
        self.ffn = residual_cls(ffn, dim, norm_first)

    def forward(self, x: Tensor, valid: Tensor, last_only: bool = False, **attn_kwargs) -> Tensor:
        """``last_only``: only the last position's output (``[B, 1, ...]``); keys and values
        still come from every position."""
        if last_only:
            x = self.attn(x, last_only=True, **attn_kwargs)
            return apply_mask(self.ffn(x), valid[:, -1:])
        x = self.attn(x, **attn_kwargs)
        x = self.ffn(x)
        return apply_mask(x, valid)
