"""TiSASRec: Time Interval Aware Self-Attention (Li, Wang & McAuley, WSDM 2020).

Attention per head (``Dh`` head width, ``r`` the relation matrix below)::

    e_ij = q_i . (k_j + PK_j + RK[r_ij]) / sqrt(Dh),   z_i = sum_j a_ij (v_j + PV_j + RV[r_ij])

``PK, PV`` are absolute-position embeddings for keys and values (no position embedding is
added to the input, as in the paper), ``RK, RV`` interval embeddings with
``time_span + 1`` rows. ``PK, PV, RK, RV`` are shared by all blocks (as in the reference
code). Positions are counted from the right end of the window, exactly as in
:mod:`seqrec.models.sasrec`, as are the pre-/post-LN placement, the causal/padding mask,
the final LayerNorm, the initialisation (``init_scheme``), the ``sqrt(D)`` input scale and the optional mHC
residual (an ``mhc`` section, see :mod:`seqrec.models.layers.mhc`).

Relation matrix (:func:`time_interval_matrix`, built on the fly, vectorised):

1. timestamps (seconds) are converted to whole time units, ``u_i = floor(t_i / unit)``
   with ``unit`` = 1, 60, 3600, 86400 seconds for ``time_unit`` = second, minute, hour,
   day: ``--time_unit`` is the granularity of the intervals;
2. ``d_ij = |u_i - u_j|``;
3. with ``time_personalize`` (the paper's personalised intervals), ``d_ij`` is divided by
   the user's personal scale ``s`` and floored. ``s`` is, in units,
   ``max(1, floor(time_scale / unit))`` when the batch carries ``time_scale`` (the user's
   smallest non-zero gap in seconds, over their history); otherwise it is computed from
   the window *causally*: for query ``i``, the smallest non-zero ``d_ab`` over real
   positions ``a, b <= i`` (1 if there is none). The causal choice keeps position ``i``
   independent of later timestamps; at the last position it is the window's smallest gap;
4. ``r_ij = min(d_ij, time_span)``; ``r_ij = 0`` when ``i`` or ``j`` is padding (those
   entries are masked out of attention anyway).

Dropout: on item embeddings, on ``PK``/``PV`` (per element of ``[B, L, D]``) and on the
attention weights and sub-layer outputs as in SASRec. The interval embeddings get dropout
on the *table* (``[time_span + 1, D]``, one mask per forward pass) rather than on every
``[B, L, L, D]`` entry as in the reference code: that is what lets the default attention
path avoid ``[B, L, L, D]`` tensors. Memory per block, default path: ``O(B H L (L + S))``
(``S = time_span + 1``), the order of ordinary attention; the ``attn_impl="manual"``
reference path keeps two ``[B, L, L, D]`` tensors per block (e.g. B=128, L=200, D=50:
about 1 GB each in float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seqrec.models.layers.dropout import Dropout, dropout
from seqrec.models.base import TIME_UNITS, SequentialRecommender
from seqrec.models.layers.attention import TimeIntervalSelfAttention, causal_padding_mask
from seqrec.models.layers.mhc import residual_from_config
from seqrec.models.layers.residual import Residual, ResidualFactory, apply_mask
from seqrec.models.registry import register_model
from seqrec.models.sasrec import SASRecConfig, check_transformer_config, init_weights, right_positions, transformer_blocks
from seqrec.utils.options import opt


_BIG = torch.iinfo(torch.int64).max


def time_interval_matrix(
    timestamps: Tensor,
    mask: Tensor,
    time_span: int,
    unit_seconds: int,
    personal_scale: Tensor | None = None,
    *,
    personalize: bool | None = None,
) -> Tensor:
    """Clipped (optionally personalised) time-interval matrix ``[B, L, L]`` (long).

    Args:
        timestamps: ``[B, L]`` int64 seconds (values at padding are ignored).
        mask: ``[B, L]`` bool, ``True`` at real positions.
        time_span: intervals are clipped to ``[0, time_span]``.
        unit_seconds: seconds per time unit (see :data:`TIME_UNITS`).
        personal_scale: optional ``[B]`` personal scale in *seconds*; converted to units as
            ``max(1, floor(personal_scale / unit_seconds))``.
        personalize: divide intervals by the personal scale. ``None`` (default) means
            "personalise iff ``personal_scale`` is given"; ``True`` without a scale uses
            the causal in-window scale described in the module docstring.

    Entries where either position is padding are 0. See the module docstring for the
    definition.
    """
    if personalize is None:
        personalize = personal_scale is not None
    elif not personalize and personal_scale is not None:
        raise ValueError("personal_scale was given but personalize=False")
    mask = mask.bool()
    units = _floor_div(timestamps.long(), int(unit_seconds))  # (B, L)
    units = units.masked_fill(~mask, 0)
    dist = (units[:, :, None] - units[:, None, :]).abs()  # (B, L, L)
    pair = mask[:, :, None] & mask[:, None, :]  # (B, L, L)
    if personalize:
        if personal_scale is not None:
            scale = torch.as_tensor(personal_scale, device=dist.device).to(torch.float64)
            scale = torch.floor(scale / float(unit_seconds)).long().clamp_min(1)
            scale = scale.view(-1, 1, 1)  # (B, 1, 1)
        else:
            scale = _causal_min_gap(dist, pair).unsqueeze(-1)  # (B, L, 1)
        dist = _floor_div(dist, scale)
    return dist.clamp_max(int(time_span)).masked_fill(~pair, 0)


def _floor_div(a: Tensor, b: Tensor | int) -> Tensor:
    """``floor(a / b)`` of int64 tensors, computed in float64: exact for ``|a| < 2**53`` (a
    quotient's fraction is at least ``1 / b`` away from the next integer), and it stays exact
    in exported graphs, where the exporters turn integer division into float32 arithmetic."""
    return torch.floor(a.to(torch.float64) / b).to(torch.int64)


def _causal_min_gap(dist: Tensor, pair: Tensor) -> Tensor:
    """``[B, L]``: smallest non-zero ``dist[a, b]`` over real ``a, b <= i`` (1 if none)."""
    L = dist.shape[-1]
    idx = torch.arange(L, device=dist.device)
    strictly_lower = idx[None, :] < idx[:, None]  # (L, L), [a, b] = b < a
    usable = pair & strictly_lower & (dist > 0)
    row_min = dist.masked_fill(~usable, _BIG).amin(dim=-1)  # (B, L): min over b < a
    prefix_min = torch.cummin(row_min, dim=1).values  # (B, L): min over a <= i
    return torch.where(prefix_min == _BIG, torch.ones_like(prefix_min), prefix_min)


@dataclass
class TiSASRecConfig(SASRecConfig):
    """SASRec's options plus the time intervals'."""

    time_span: int = opt(100, "intervals are clipped to this many units", low=1)
    time_unit: str = opt("hour", "unit of the time intervals", choices=tuple(TIME_UNITS))
    time_personalize: bool = opt(True, "divide intervals by the user's smallest gap (the paper's personalised "
                                 "intervals)")


@register_model("tisasrec")
class TiSASRec(SequentialRecommender):
    """TiSASRec. ``TiSASRec(n_items, TiSASRecConfig(...))``; needs ``batch["timestamps"]``."""

    config_class = TiSASRecConfig
    supports_last_only = True
    uses_time = True
    residual_cls: ResidualFactory | type[nn.Module] = Residual  # default without mHC

    def __init__(self, n_items: int, config: TiSASRecConfig | None = None, maxlen: int = 200, residual_cls=None):
        super().__init__(n_items, config, maxlen)
        c = self.config
        d = c.hidden_units
        self.residual_cls = residual_from_config(c.mhc, residual_cls)  # Residual or mHC
        self.unit_seconds = TIME_UNITS[c.time_unit]
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.input_scale = math.sqrt(d)
        self.pos_k_emb = nn.Embedding(maxlen, d)
        self.pos_v_emb = nn.Embedding(maxlen, d)
        self.rel_k_emb = nn.Embedding(c.time_span + 1, d)
        self.rel_v_emb = nn.Embedding(c.time_span + 1, d)
        self.emb_norm = nn.LayerNorm(d) if c.embed_norm else nn.Identity()
        self.emb_dropout = Dropout(c.dropout_rate)
        self.blocks = transformer_blocks(c, TimeIntervalSelfAttention, self.residual_cls)
        self.final_norm = nn.LayerNorm(d) if c.norm_first else nn.Identity()
        init_weights(self, c)

    @classmethod
    def validate_config(cls, cfg: TiSASRecConfig) -> None:
        super().validate_config(cfg)
        check_transformer_config(cfg)

    def item_embedding_weight(self) -> Tensor:
        return self.item_emb.weight

    def graph_inputs(self) -> tuple[str, ...]:
        return ("items", "timestamps", "time_scale") if self.config.time_personalize else ("items", "timestamps")

    def relation_matrix(self, batch: dict[str, Tensor], valid: Tensor) -> Tensor:
        """The ``[B, L, L]`` interval matrix for ``batch`` (see :func:`time_interval_matrix`)."""
        if "timestamps" not in batch:
            raise ValueError(
                "TiSASRec needs batch['timestamps'] (the data has no times?): "
                "use a dataset with timestamps or the 'sasrec' model"
            )
        c = self.config
        scale = batch.get("time_scale") if c.time_personalize else None
        return time_interval_matrix(
            batch["timestamps"],
            valid,
            c.time_span,
            self.unit_seconds,
            scale,
            personalize=c.time_personalize,
        )

    def forward(self, batch: dict[str, Tensor], last_only: bool = False) -> Tensor:
        items = batch["items"]  # (B, L)
        B, L = items.shape
        c = self.config
        d = c.hidden_units
        p = c.dropout_rate if self.training else 0.0
        valid = items != 0  # (B, L)
        relation = self.relation_matrix(batch, valid)  # (B, L, L)
        pos = right_positions(L, self.maxlen, items.device)  # (L,)
        h = apply_mask(self.emb_dropout(self.emb_norm(self.item_emb(items) * self.input_scale)), valid)
        pos_k = dropout(self.pos_k_emb(pos).expand(B, L, d), p, self.training)  # (B, L, D)
        pos_v = dropout(self.pos_v_emb(pos).expand(B, L, d), p, self.training)
        rel_k = dropout(self.rel_k_emb.weight, p, self.training)  # (S, D)
        rel_v = dropout(self.rel_v_emb.weight, p, self.training)
        attn_mask = causal_padding_mask(valid)  # (B, 1, L, L)
        x = self.residual_cls.expand_streams(h)
        for i, block in enumerate(self.blocks):
            x = block(
                x,
                valid,
                last_only=last_only and i == len(self.blocks) - 1,  # the final block: one query
                attn_mask=attn_mask,
                relation=relation,
                pos_k=pos_k,
                pos_v=pos_v,
                rel_k=rel_k,
                rel_v=rel_v,
            )
        h = self.residual_cls.reduce_streams(x)
        return apply_mask(self.final_norm(h), valid[:, -1:] if last_only else valid)  # (B, L or 1, D)
