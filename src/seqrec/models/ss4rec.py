"""SS4Rec: Continuous-Time Sequential Recommendation with State Space Models
(Xiao, Wang, Zhou & Wang, arXiv 2502.08132, 2025; official code: XiaoWei-i/SS4Rec).

Architecture (config names in brackets; defaults are the official ``config_ml.yaml``)::

    h = E[item]                      item embedding [n_items + 1, hidden_units], row 0 = 0
    (embed_norm: h = LayerNorm(Dropout(h)))         off by default, see "deviations"
    repeat num_blocks times (SSBlock, post-norm residuals, one LayerNorm per block):
        h = LN(h + Dropout(S5(h, dt)))          time-aware SSM      (skipped: mamba_only)
        h = LN(h + Dropout(Mamba(h)))           relation-aware SSM  (skipped: s5_only)
    output h [B, L, hidden_units]; scores = h @ E^T (tied, base class)

* **S5** (:class:`seqrec.models.ssm.S5`): ``s5_state`` complex diagonal states, HiPPO-LegS
  initialisation, learned per-state step in ``[dt_min, dt_max]`` scaled by the real gap
  ``dt_i``, zero-order hold, ``y = Re(C x) + D u``.
* **Mamba** (:class:`seqrec.models.ssm.Mamba`): ``d_state``, ``d_conv``, ``expand``,
  ``dt_rank = ceil(hidden_units / 16)``; with ``use_fast_path`` the fused selective scan:
  ``mamba_ssm``'s on CUDA when installed, seqrec's C++ kernel on the CPU when it builds; else the
  pure chunked scan.
* **LayerNorm**: eps 1e-12; one LayerNorm per block shared by its two residuals, and one
  dropout module (``dropout_rate``), exactly as the official ``SSBlock``.
* **Init** (the official ``_init_weights``, applied to the whole model): every ``Linear``
  and the item ``Embedding`` ~ N(0, 0.02), ``Linear`` biases 0 (this includes Mamba's
  ``in/x/dt/out_proj``, so ``dt_proj.bias = 0`` and Mamba's step starts at
  ``softplus(0) = 0.69`` instead of mamba_ssm's log-uniform [0.001, 0.1]); LayerNorm 1/0.
  S5's parameters, Mamba's ``A_log``, ``D`` and its conv keep their own initialisation.
  We additionally zero the padding row of the embedding.

Time gaps. Position ``i`` uses ``dt_i = t_{i+1} - t_i``, the gap to the *next* event:
``batch["next_timestamps"] - batch["timestamps"]``; at the last position that is the gap
to the target's timestamp, as the official code does (it sets the last real position's
interval to ``pos_timestamp - t_last``). The S5 state after position ``i`` is thus the
state evolved to the time of the item being predicted; the paper's setting assumes the
time of the next interaction is known when recommending (time-specific recommendation).
Gaps are computed in int64 and converted to ``time_unit`` units in float64 before the
cast to the model dtype; negative gaps (unsorted data) are clamped to 0; padding gets 0.
Without ``next_timestamps`` in the batch the gaps are taken from ``timestamps`` alone
(``t_{i+1} - t_i``) and the last position's gap is 0.

Causality. The output at position ``i`` depends on items at positions ``<= i`` and on
``dt_{<= i}``, i.e. on timestamps ``t_{<= i+1}``: changing item ``j`` changes outputs at
``>= j`` only; changing timestamp ``t_j`` changes outputs at ``>= j - 1`` only (it moves
``dt_{j-1}`` and ``dt_j``). Padding (left, item 0) gets zero input, ``dt = 0`` and a zeroed
Mamba conv output, so no state accumulates there: outputs at real positions do not depend
on how much left padding a batch carries, and padding rows are zero.

``time_unit`` (second | minute | hour | day, the unit of ``dt``, as TiSASRec's ``time_unit`` is
its intervals'; unrelated to the batch's per-user ``time_scale`` entry, which SS4Rec ignores).
Default **second**: the
official code feeds RecBole's raw Unix-second timestamps (``normalize_all: None``) into
S5, so the published step range [0.001, 0.1] was tuned for gaps in seconds (a 1-hour gap
with ``step = 0.01`` and ``Re(Lambda) = -0.5`` decays the state by ``e^-18``; within-
session gaps of seconds to minutes carry information). With ``day`` the same step range
keeps memory over days to months but writes near-zero input for gaps of seconds
(``Bbar ~ dt``); choose per dataset.

Deviations from the official code (XiaoWei-i/SS4Rec, ``SS4Rec.py``):

* **Timestamp precision**: RecBole loads timestamps as float32, whose spacing near
  ``1e9`` s is 64-128 s, so the official gaps are rounded to multiples of 64-128 s
  (short gaps become 0 or 64-128 s). We subtract int64 timestamps exactly.
* **Padding**: RecBole right-pads and gathers the last real position, so padding never
  matters there. Our batches are left-padded, so we mask: zero embeddings and ``dt`` at
  padding, Mamba's conv output zeroed at padding, hidden states zeroed after every
  residual (the official LayerNorm would turn zero rows into the LN bias).
* **Training on all positions**: RecBole trains on every prefix as a separate sample; the
  trainer's per-position loss on one window is the same set of (prefix, target, dt)
  triples, because position ``i`` sees exactly the prefix and ``dt_i``.
* **Ablations**: the official ``SSBlock`` stores ``model_type`` but never reads it (its
  ``S5-only`` / ``S6-only`` configs run the full model); ``ablation`` here really drops the
  other sub-layer.
* **Embedding dropout/LayerNorm**: defined but commented out in the official ``forward``;
  ``embed_norm=True`` turns them on (Mamba4Rec's order: dropout, then LayerNorm).
* **S5 internals** (:mod:`seqrec.models.ssm.s5`): same maths and initialisation as
  s5-pytorch 0.2.1 (which the official code uses), but ``Re(Lambda)`` is clipped to
  ``<= -1e-4`` (S5's ``clip_eigs``; unconstrained in s5-pytorch, where a positive real part
  would overflow for long gaps), ``Bbar`` is never materialised, and ``Abar - 1`` uses
  ``expm1``.
* **Gap floor** (``min_gap`` > 0, off by default): gaps at real positions below
  ``min_gap`` (in ``time_unit`` units) are raised to it. With the official zero-order hold
  a gap of 0 gives ``gamma = 0``, so an item that shares its successor's timestamp is never
  written into the S5 state (only the ``D * u`` skip and the Mamba layer see it); on
  day-resolution data (Amazon) that is almost half of all positions. A floor of half the
  resolution (``0.5`` days) is the mean of a gap known only to lie in ``[0, 1)`` day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seqrec.models.base import TIME_UNITS, SequentialRecommender
from seqrec.models.layers.dropout import Dropout
from seqrec.models.layers.residual import apply_mask
from seqrec.models.registry import register_model
from seqrec.models.ssm import S5, Mamba
from seqrec.utils.options import opt

ABLATIONS = ("full", "s5_only", "mamba_only")


@dataclass
class SS4RecConfig:
    """SS4Rec's options; the defaults are the official ``config_ml.yaml``."""

    hidden_units: int = opt(64, "hidden dimension", low=1)
    num_blocks: int = opt(2, "number of SS blocks (S5 then Mamba)", low=1)
    dropout_rate: float = opt(0.2, "dropout", low=0, high=1, high_open=True)
    s5_state: int = opt(32, "S5 complex state size P (official d_P)", low=1)
    d_state: int = opt(32, "Mamba state size N", low=1)
    d_conv: int = opt(4, "Mamba causal conv width", low=1)
    expand: int = opt(2, "Mamba inner width = expand * hidden_units", low=1)
    dt_min: float = opt(0.001, "S5 initial step range, lower end (per state, log-uniform)", low=0, low_open=True)
    dt_max: float = opt(0.1, "S5 initial step range, upper end", low=0, low_open=True)
    time_unit: str = opt("second", "unit of the S5 time gaps (the official code: raw Unix seconds)",
                         choices=tuple(TIME_UNITS))
    ablation: str = opt("full", "full, s5_only or mamba_only", choices=ABLATIONS)
    use_fast_path: bool = opt(True, "fused selective scan: mamba_ssm on CUDA when installed, "
                                    "seqrec's C++ kernel on the CPU")
    embed_norm: bool = opt(False, "dropout + LayerNorm on the item embeddings (off: the official code)")
    min_gap: float = opt(0.0, "floor on the S5 gaps at real positions, in time_unit units (0: none, the official "
                         "code)", low=0)


def time_gaps(timestamps: Tensor, next_timestamps: Tensor | None, valid: Tensor, unit_seconds: int) -> Tensor:
    """Gap to the next event, ``[B, L]`` float64 in units of ``unit_seconds``.

    ``next_timestamps - timestamps`` in int64 (exact), clamped at 0, 0 at padding. Without
    ``next_timestamps``: ``t_{i+1} - t_i`` within the window and 0 at the last position.
    """
    ts = timestamps.long()
    if next_timestamps is None:
        nxt = torch.cat([ts[:, 1:], ts[:, -1:]], dim=1)
    else:
        if next_timestamps.shape != ts.shape:
            raise ValueError(f"next_timestamps {tuple(next_timestamps.shape)} must match "
                             f"timestamps {tuple(ts.shape)}")
        nxt = next_timestamps.long()
    gap = (nxt - ts).clamp_min(0).masked_fill(~valid, 0)  # int64
    return gap.to(torch.float64) / float(unit_seconds)


class SSBlock(nn.Module):
    """One SS4Rec layer: post-norm residual S5 then post-norm residual Mamba (see module doc)."""

    def __init__(self, cfg: SS4RecConfig):
        super().__init__()
        d = cfg.hidden_units
        self.s5 = S5(d, cfg.s5_state, cfg.dt_min, cfg.dt_max) if cfg.ablation != "mamba_only" else None
        self.mamba = (Mamba(d, cfg.d_state, cfg.d_conv, cfg.expand, use_fast_path=cfg.use_fast_path)
                      if cfg.ablation != "s5_only" else None)
        self.dropout = Dropout(cfg.dropout_rate)
        self.norm = nn.LayerNorm(d, eps=1e-12)  # shared by both residuals (official SSBlock)

    def forward(self, x: Tensor, dt: Tensor | None, valid: Tensor) -> Tensor:
        if self.s5 is not None:
            x = apply_mask(self.norm(x + self.dropout(self.s5(x, dt))), valid)
        if self.mamba is not None:
            x = apply_mask(self.norm(x + self.dropout(self.mamba(x, valid))), valid)
        return x


@register_model("ss4rec")
class SS4Rec(SequentialRecommender):
    """SS4Rec. ``SS4Rec(n_items, SS4RecConfig(...))``; needs ``batch["timestamps"]`` (and
    uses ``batch["next_timestamps"]``) unless ``ablation="mamba_only"``. See module docstring."""

    config_class = SS4RecConfig
    uses_time = True

    def __init__(self, n_items: int, config: SS4RecConfig | None = None, maxlen: int = 200):
        super().__init__(n_items, config, maxlen)  # no position table: any window length works
        c = self.config
        d = c.hidden_units
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        if c.embed_norm:
            self.emb_dropout = Dropout(c.dropout_rate)
            self.emb_norm = nn.LayerNorm(d, eps=1e-12)
        self.blocks = nn.ModuleList(SSBlock(c) for _ in range(c.num_blocks))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """The official (RecBole) initialisation; see the module docstring."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @classmethod
    def validate_config(cls, cfg: SS4RecConfig) -> None:
        super().validate_config(cfg)
        if cfg.dt_min > cfg.dt_max:
            raise ValueError(f"dt_min ({cfg.dt_min}) must be <= dt_max ({cfg.dt_max}): change --dt_min or --dt_max")

    def item_embedding_weight(self) -> Tensor:
        return self.item_emb.weight

    def graph_inputs(self) -> tuple[str, ...]:
        return ("items",) if self.config.ablation == "mamba_only" else ("items", "timestamps", "next_timestamps")

    def _gaps(self, batch: dict[str, Tensor], valid: Tensor, dtype: torch.dtype) -> Tensor | None:
        if self.config.ablation == "mamba_only":
            return None
        if "timestamps" not in batch:
            raise ValueError("SS4Rec needs batch['timestamps'] (the data has no times?): use a dataset "
                             "with timestamps, or --ablation mamba_only")
        gaps = time_gaps(batch["timestamps"], batch.get("next_timestamps"), valid,
                         TIME_UNITS[self.config.time_unit])
        if self.config.min_gap:  # real positions only: padding keeps dt = 0
            gaps = torch.where(valid, gaps.clamp_min(float(self.config.min_gap)), gaps)
        return gaps.to(torch.float64 if dtype == torch.float64 else torch.float32)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        items = batch["items"]  # (B, L)
        valid = items != 0  # (B, L)
        h = self.item_emb(items)  # (B, L, D)
        if self.config.embed_norm:
            h = self.emb_norm(self.emb_dropout(h))
        h = apply_mask(h, valid)
        dt = self._gaps(batch, valid, h.dtype)  # (B, L) in time_unit units
        for block in self.blocks:
            h = block(h, dt, valid)
        return h  # (B, L, D), zero at padding
