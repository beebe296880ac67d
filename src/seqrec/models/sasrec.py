"""SASRec: Self-Attentive Sequential Recommendation (Kang & McAuley, ICDM 2018).

Design (see also docs in :mod:`seqrec.models.base` and :mod:`seqrec.models.layers`):

* **Input**: ``E[item] * sqrt(D) + P[pos]`` (``embed_scale=False``: no ``sqrt(D)``, as RecTools),
  embedding dropout, then padding positions are zeroed (multiplied by the non-pad mask), as in
  the reference code.
* **Positions are counted from the right end**: in a window of length ``L`` position ``i``
  gets index ``L - 1 - i`` (the last element is always 0). With right-aligned, left-padded
  windows this equals the original fixed-``maxlen`` indexing (where the last element is
  always ``maxlen - 1``), and it makes hidden states independent of how much left padding
  a batch carries (e.g. batches trimmed to their longest sequence). ``L <= maxlen``.
  ``positions="start"`` counts from the first real item of each row's window instead
  (RecBole's indexing): with the loss on every position, a target's slot then has the same
  position index in training as at test time.
* **Blocks**: ``[residual(causal MHA), residual(point-wise FFN)]``, pre-LN
  (``x + f(LN(x))``, ``norm_first=True``, the SASRec code's placement) or post-LN
  (``LN(x + f(x))``); padding positions are zeroed after every block. Keys, values and
  queries all come from the same normalised input (the TF code's residual added the
  *normalised* query instead of ``x``; we use the standard pre-LN form).
* **mHC** (``mhc=True``, :mod:`seqrec.models.layers.mhc`): every residual becomes a
  Manifold-Constrained Hyper-Connection over ``mhc_expansion_rate`` streams; the embedding
  is copied into the streams before the first block and the streams are averaged after
  the last one (before the final norm). With the initial gates at 0 the model computes
  the plain model's function (exactly for one stream).
* **Output**: a final LayerNorm in pre-LN mode (post-LN outputs are already normalised),
  padding rows zero; item scores use the (tied) input item embeddings.
* **Reference-code block** (``block_form="sasrec"``): ``h = LN(x); h + f(h)`` with attention
  keys/values from the raw ``x`` (:class:`~seqrec.models.layers.residual.SASRecCodeResidual`).
* **Init**: see :func:`seqrec.models.base.init_transformer_weights`: by default the reference
  code's Xavier-normal embedding tables (``init_scheme="xavier"``; on Beauty and ML-100K this
  tests clearly better than the alternative, see docs/results.md); ``init_scheme="normal"``
  draws them from ``Normal(0, init_std)`` (``init_std`` 0: ``hidden_units ** -0.5``).
  ``embed_norm`` adds a LayerNorm on the input embeddings, as RecBole does.
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
from seqrec.models.layers.mhc import check_mhc_config, residual_from_config
from seqrec.models.layers.residual import (
    Residual,
    ResidualFactory,
    SASRecCodeResidual,
    TransformerBlock,
    apply_mask,
)
from seqrec.models.registry import register_model

POSITIONS = ("end", "start")
BLOCK_FORMS = ("standard", "sasrec")
INIT_SCHEMES = ("normal", "xavier")


@dataclass
class SASRecConfig:
    hidden_units: int = 50
    num_blocks: int = 2
    num_heads: int = 2
    dropout_rate: float = 0.2
    maxlen: int = 200
    norm_first: bool = True  # pre-LN (True) or post-LN (False)
    attn_impl: str = "sdpa"  # "sdpa" (fused kernel) or "manual" (readable reference)
    activation: str = "relu"  # feed-forward activation: "relu" (paper) or "gelu"
    inner_size: int = 0  # feed-forward width; 0 = hidden_units (the paper; RecBole uses 4x)
    embed_norm: bool = False  # LayerNorm on the input embeddings, then dropout (RecBole / FMLP-Rec order)
    init_std: float = 0.0  # std of the embedding init with init_scheme normal; 0 = hidden_units ** -0.5
    score_dropout: float = 0.0  # dropout on the item table used for scoring, training only (RecTools/eSASRec)
    positions: str = "end"  # position index counted from the window's end (SASRec code) or "start" (RecBole)
    block_form: str = "standard"  # "standard" pre/post-LN blocks, or "sasrec": the reference code's (queries normalised, keys/values raw, residual from LN(x))
    init_scheme: str = "xavier"  # embedding tables Xavier-normal as the reference code, or "normal": Normal(0, init_std)
    embed_scale: bool = True  # multiply item embeddings by sqrt(hidden_units) on input (the paper; RecTools: off)
    # mHC (Manifold-Constrained Hyper-Connections, seqrec.models.layers.mhc)
    mhc: bool = False  # replace every residual by an mHC hyper-connection
    mhc_expansion_rate: int = 4  # number of parallel residual streams n
    mhc_sinkhorn_iter: int = 20  # Sinkhorn-Knopp iterations for H_res
    mhc_init_gate: float = 0.01  # initial value of the dynamic gates alpha
    mhc_no_amp: bool = False  # coefficients and Sinkhorn in float32 under autocast


def check_transformer_config(cfg: SASRecConfig) -> None:
    """Checks shared by the transformer models; messages name the flag to change."""
    for name in ("hidden_units", "num_blocks", "num_heads", "maxlen"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}: change --{name}")
    if cfg.hidden_units % cfg.num_heads != 0:
        raise ValueError(
            f"hidden_units ({cfg.hidden_units}) must be divisible by num_heads "
            f"({cfg.num_heads}): change --num_heads or --hidden_units"
        )
    if not 0.0 <= float(cfg.dropout_rate) < 1.0:
        raise ValueError(
            f"dropout_rate must be in [0, 1), got {cfg.dropout_rate!r}: change --dropout_rate"
        )
    if cfg.attn_impl not in ATTN_IMPLS:
        raise ValueError(
            f"attn_impl must be one of {ATTN_IMPLS}, got {cfg.attn_impl!r}: change --attn_impl"
        )
    if cfg.positions not in POSITIONS:
        raise ValueError(
            f"positions must be one of {POSITIONS}, got {cfg.positions!r}: change --positions"
        )
    if cfg.block_form not in BLOCK_FORMS:
        raise ValueError(
            f"block_form must be one of {BLOCK_FORMS}, got {cfg.block_form!r}: change --block_form"
        )
    if cfg.block_form == "sasrec" and (cfg.mhc or not cfg.norm_first):
        raise ValueError(
            "block_form 'sasrec' is a pre-LN form without mHC: use --no_mhc and --norm_first true, "
            "or --block_form standard"
        )
    if isinstance(cfg.init_std, bool) or not isinstance(cfg.init_std, (int, float)) or cfg.init_std < 0:
        raise ValueError(f"init_std must be >= 0 (0: hidden_units ** -0.5), got {cfg.init_std!r}: change --init_std")
    if cfg.init_scheme not in INIT_SCHEMES:
        raise ValueError(
            f"init_scheme must be one of {INIT_SCHEMES}, got {cfg.init_scheme!r}: change --init_scheme"
        )
    if not isinstance(cfg.embed_scale, bool):
        raise ValueError(f"embed_scale must be true or false, got {cfg.embed_scale!r}: change --embed_scale")
    if cfg.init_scheme == "xavier" and cfg.init_std:
        raise ValueError("init_std applies to init_scheme 'normal' only: set --init_std 0 or --init_scheme normal")
    if cfg.activation not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {tuple(sorted(ACTIVATIONS))}, got {cfg.activation!r}: "
            "change --activation"
        )
    check_mhc_config(cfg)


def right_positions(length: int, maxlen: int, device: torch.device) -> Tensor:
    """Position indices ``[L]`` counted from the right end: ``L-1, ..., 1, 0``."""
    if length > maxlen:
        raise ValueError(
            f"sequence length {length} exceeds maxlen {maxlen}: truncate batches to "
            f"--maxlen or raise --maxlen"
        )
    return torch.arange(length - 1, -1, -1, device=device)


def position_ids(valid: Tensor, maxlen: int, mode: str) -> Tensor:
    """Position indices for a right-aligned batch (``valid [B, L]``).

    ``"end"``: :func:`right_positions`, ``[L]`` (shared by every row). ``"start"``: ``[B, L]``,
    the first real item of each row's window is 0, the next 1, ... (padding gets 0): RecBole's
    indexing, where the slot that predicts the k-th next item is position k - 1 in training
    and at test time alike. Both are causal (position ``i`` depends on slots ``<= i`` only)
    and independent of the amount of left padding.
    """
    L = valid.shape[1]
    right = right_positions(L, maxlen, valid.device)  # also checks L <= maxlen
    if mode == "end":
        return right
    return (valid.long().cumsum(dim=1) - 1).clamp_min(0)


def block_residual(c: SASRecConfig, override=None):
    """The residual form of the blocks: :class:`SASRecCodeResidual` for ``block_form="sasrec"``,
    else ``Residual`` or the mHC factory (:func:`residual_from_config`)."""
    if c.block_form == "sasrec":
        if override is not None:
            raise ValueError("pass either residual_cls or block_form='sasrec', not both")
        return SASRecCodeResidual
    return residual_from_config(c, override)


def init_weights(model: nn.Module, c: SASRecConfig) -> None:
    """:func:`init_transformer_weights` with the config's scheme and embedding std."""
    model.apply(partial(init_transformer_weights, std=c.init_std or c.hidden_units**-0.5, scheme=c.init_scheme))


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
    """SASRec. ``SASRec(n_items, SASRecConfig(...))``; see module docstring."""

    config_class = SASRecConfig
    supports_last_only = True
    uses_time = False
    residual_cls: ResidualFactory | type[nn.Module] = Residual  # default without mHC

    def __init__(self, n_items: int, config: SASRecConfig | None = None, residual_cls=None):
        super().__init__(n_items, config)
        c = self.config
        d = c.hidden_units
        self.residual_cls = block_residual(c, residual_cls)  # Residual, SASRecCodeResidual or mHC
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.input_scale = math.sqrt(d) if c.embed_scale else 1.0
        self.pos_emb = nn.Embedding(c.maxlen, d)
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
        pos = position_ids(valid, self.config.maxlen, self.config.positions)  # (L,) or (B, L)
        h = self.item_emb(items) * self.input_scale + self.pos_emb(pos)
        h = apply_mask(self.emb_dropout(self.emb_norm(h)), valid)  # (B, L, D)
        attn_mask = causal_padding_additive_mask(valid)  # (B, 1, L, L), 0 / -inf
        x = self.residual_cls.expand_streams(h)
        for i, block in enumerate(self.blocks):
            last = last_only and i == len(self.blocks) - 1  # the final block: one query
            x = block(x, valid, last_only=last, attn_mask=attn_mask)
        h = self.residual_cls.reduce_streams(x)
        return apply_mask(self.final_norm(h), valid[:, -1:] if last_only else valid)  # (B, L or 1, D)
