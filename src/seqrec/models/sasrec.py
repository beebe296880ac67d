"""SASRec: Self-Attentive Sequential Recommendation (Kang & McAuley, ICDM 2018).

Design (see also docs in :mod:`seqrec.models.base` and :mod:`seqrec.models.layers`):

* **Input**: ``E[item] * sqrt(D) + P[pos]``, embedding dropout (``embed_norm``: a LayerNorm
  first, as RecBole), then padding positions are zeroed (multiplied by the non-pad mask), as
  in the reference code.
* **Positions are counted from the right end**: in a window of length ``L`` position ``i``
  gets index ``L - 1 - i`` (the last element is always 0). With right-aligned, left-padded
  windows this equals the original fixed-``maxlen`` indexing (where the last element is
  always ``maxlen - 1``), and it makes hidden states independent of how much left padding
  a batch carries (e.g. batches trimmed to their longest sequence). ``L <= maxlen``.
* **Blocks**: ``[residual(causal MHA), residual(point-wise FFN)]``, pre-LN
  (``x + f(LN(x))``, ``norm_first=True``, the SASRec code's placement) or post-LN
  (``LN(x + f(x))``); padding positions are zeroed after every block. Keys, values and
  queries all come from the same normalised input (the TF code's residual added the
  *normalised* query instead of ``x``; we use the standard pre-LN form).
* **mHC** (an ``mhc`` section, :class:`~seqrec.models.layers.mhc.MHCConfig`): every residual
  becomes a Manifold-Constrained Hyper-Connection over ``mhc.expansion_rate`` streams; the
  embedding is copied into the streams before the first block and the streams are averaged
  after the last one (before the final norm). With the initial gates at 0 the model computes
  the plain model's function (exactly for one stream).
* **Output**: a final LayerNorm in pre-LN mode (post-LN outputs are already normalised),
  padding rows zero; item scores use the (tied) input item embeddings.
* **Init**: :func:`seqrec.models.base.init_transformer_weights`: by default the reference
  code's Xavier-normal embedding tables (``init_scheme="xavier"``, better for SASRec on
  Beauty and ML-100K), or ``Normal(0, 1/sqrt(D))`` (``"normal"``, better for SASRec on Sports
  and TiSASRec on ML-100K; docs/results.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from seqrec.models.layers.dropout import Dropout
from seqrec.models.base import SequentialRecommender, init_transformer_weights
from seqrec.models.layers.attention import ATTN_IMPLS, CausalSelfAttention, causal_padding_additive_mask
from seqrec.models.layers.feedforward import ACTIVATIONS, PointWiseFeedForward
from seqrec.models.layers.mhc import MHCConfig, residual_from_config
from seqrec.models.layers.residual import Residual, ResidualFactory, TransformerBlock, apply_mask
from seqrec.models.registry import register_model
from seqrec.utils.options import opt, sub

INIT_SCHEMES = ("xavier", "normal")


def init_weights(model: nn.Module, c: "SASRecConfig") -> None:
    """:func:`init_transformer_weights` with the config's scheme."""
    model.apply(partial(init_transformer_weights, std=c.hidden_units**-0.5, scheme=c.init_scheme))


@dataclass
class SASRecConfig:
    """SASRec's options (TiSASRec extends them)."""

    hidden_units: int = opt(50, "hidden dimension", low=1)
    num_blocks: int = opt(2, "number of transformer blocks", low=1)
    num_heads: int = opt(2, "attention heads (hidden_units must be divisible by it)", low=1)
    dropout_rate: float = opt(0.2, "dropout", low=0, high=1, high_open=True)
    norm_first: bool = opt(True, "pre-LN blocks (post-LN when false)")
    attn_impl: str = opt("sdpa", "attention: sdpa (fused kernel) or manual (readable reference)", choices=ATTN_IMPLS)
    activation: str = opt("relu", "feed-forward activation: relu (the paper) or gelu",
                          choices=tuple(sorted(ACTIVATIONS)))
    inner_size: int = opt(0, "feed-forward width (0: hidden_units, the paper; RecBole uses 4x)", low=0)
    embed_norm: bool = opt(False, "LayerNorm on the input embeddings, then dropout (RecBole's order)")
    init_scheme: str = opt("xavier", "embedding tables: xavier (Xavier-normal, the reference code) or normal "
                           "(Normal(0, 1/sqrt(hidden_units)))", choices=INIT_SCHEMES)
    mhc: MHCConfig | None = sub(MHCConfig, "Manifold-Constrained Hyper-Connections on every residual "
                                "(arXiv 2512.24880); off when absent", "mhc")

    def describe(self) -> str:
        """What run listings add to the model's name."""
        return f"+ mHC (n={self.mhc.expansion_rate})" if self.mhc is not None else ""


def check_transformer_config(cfg: SASRecConfig) -> None:
    """Checks across fields shared by the transformer models."""
    if cfg.hidden_units % cfg.num_heads != 0:
        raise ValueError(
            f"hidden_units ({cfg.hidden_units}) must be divisible by num_heads "
            f"({cfg.num_heads}): change --num_heads or --hidden_units"
        )


def right_positions(length: int, maxlen: int, device: torch.device) -> Tensor:
    """Position indices ``[L]`` counted from the right end: ``L-1, ..., 1, 0``."""
    if length > maxlen:
        raise ValueError(
            f"sequence length {length} exceeds maxlen {maxlen}: truncate batches to "
            f"--maxlen or raise --maxlen"
        )
    return torch.arange(length - 1, -1, -1, device=device)


def transformer_blocks(c: SASRecConfig, attn_cls: type[nn.Module], residual_cls) -> nn.ModuleList:
    """``c.num_blocks`` blocks of [``attn_cls`` attention, point-wise feed-forward], each
    sub-layer wrapped in ``residual_cls`` (shared by SASRec and TiSASRec)."""
    d = c.hidden_units
    return nn.ModuleList(
        TransformerBlock(
            attn_cls(d, c.num_heads, c.dropout_rate, c.attn_impl),
            PointWiseFeedForward(d, c.inner_size or d, c.dropout_rate, c.activation),
            d,
            norm_first=c.norm_first,
            residual_cls=residual_cls,
        )
        for _ in range(c.num_blocks)
    )


@register_model("sasrec")
class SASRec(SequentialRecommender):
    """SASRec. ``SASRec(n_items, SASRecConfig(...), maxlen)``; see module docstring."""

    config_class = SASRecConfig
    supports_last_only = True
    uses_time = False
    residual_cls: ResidualFactory | type[nn.Module] = Residual  # default without mHC

    def __init__(self, n_items: int, config: SASRecConfig | None = None, maxlen: int = 200, residual_cls=None):
        super().__init__(n_items, config, maxlen)
        c = self.config
        d = c.hidden_units
        self.residual_cls = residual_from_config(c.mhc, residual_cls)  # Residual or mHC
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.input_scale = math.sqrt(d)
        self.pos_emb = nn.Embedding(maxlen, d)
        self.emb_norm = nn.LayerNorm(d) if c.embed_norm else nn.Identity()
        self.emb_dropout = Dropout(c.dropout_rate)
        self.blocks = transformer_blocks(c, CausalSelfAttention, self.residual_cls)
        self.final_norm = nn.LayerNorm(d) if c.norm_first else nn.Identity()
        init_weights(self, c)

    @classmethod
    def validate_config(cls, cfg: SASRecConfig) -> None:
        super().validate_config(cfg)
        check_transformer_config(cfg)

    def item_embedding_weight(self) -> Tensor:
        return self.item_emb.weight

    def forward(self, batch: dict[str, Tensor], last_only: bool = False) -> Tensor:
        items = batch["items"]  # (B, L)
        B, L = items.shape
        valid = items != 0  # (B, L)
        pos = right_positions(L, self.maxlen, items.device)  # (L,)
        h = self.item_emb(items) * self.input_scale + self.pos_emb(pos)
        h = apply_mask(self.emb_dropout(self.emb_norm(h)), valid)  # (B, L, D)
        attn_mask = causal_padding_additive_mask(valid)  # (B, 1, L, L), 0 / -inf
        x = self.residual_cls.expand_streams(h)
        for i, block in enumerate(self.blocks):
            last = last_only and i == len(self.blocks) - 1  # the final block: one query
            x = block(x, valid, last_only=last, attn_mask=attn_mask)
        h = self.residual_cls.reduce_streams(x)
        return apply_mask(self.final_norm(h), valid[:, -1:] if last_only else valid)  # (B, L or 1, D)
