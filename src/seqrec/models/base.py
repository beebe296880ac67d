"""The interface every sequential recommender implements (the trainer relies on it).

Batch convention (``dict[str, Tensor]``):

* ``items``: LongTensor ``[B, L]``, sequences right-aligned (left-padded with 0);
  0 is padding, real items are ``1..n_items``.
* ``timestamps``: int64 ``[B, L]`` Unix seconds (0 at padding); present when the data has
  times. Required by models with ``uses_time = True``.
* ``time_scale``: optional ``[B]`` (int or float) seconds: the user's personal time scale
  (smallest non-zero gap between two of the user's interactions).

``forward(batch) -> [B, L, D]`` is causal (position ``i`` sees positions ``<= i`` only) and
never reads padding; hidden states at padding positions are zero.
"""

from __future__ import annotations

import difflib
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from seqrec.utils import options


#: Seconds per time unit: the ``time_unit`` option of the time-aware models (TiSASRec's interval
#: granularity, SS4Rec's unit of the S5 gaps).
TIME_UNITS: dict[str, int] = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


class SequentialRecommender(nn.Module):
    """Base class: tied-embedding scoring on top of a per-position hidden state.

    Subclasses set ``config_class`` (a dataclass of :func:`seqrec.utils.options.opt` fields:
    the model's own options, defaults and checks) and ``uses_time``, implement
    :meth:`forward` and :meth:`item_embedding_weight`, and may extend
    :meth:`validate_config` with checks across fields. ``maxlen``: the longest window the
    model will see (the size of its position tables, if any).
    """

    config_class: ClassVar[type] = None  # type: ignore[assignment]
    uses_time: ClassVar[bool] = False
    registry_name: ClassVar[str] = ""  # set by @register_model

    def __init__(self, n_items: int, config: Any = None, maxlen: int = 200):
        super().__init__()
        if config is None:
            config = self.config_class()
        if not isinstance(n_items, int) or n_items < 1:
            raise ValueError(f"n_items must be a positive int, got {n_items!r}")
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1:
            raise ValueError(f"--maxlen must be a positive integer, got {maxlen!r}")
        self.validate_config(config)
        self.n_items = n_items
        self.maxlen = maxlen
        self.config = config

    # --- configuration -------------------------------------------------------------------
    @classmethod
    def validate_config(cls, cfg: Any) -> None:
        """Raise ``ValueError`` saying what to change if ``cfg`` is unusable: every field's
        type, choices and range (declared on the field); subclasses add checks across fields."""
        if cls.config_class is not None and not isinstance(cfg, cls.config_class):
            raise ValueError(
                f"{cls.__name__} expects a {cls.config_class.__name__}, got {type(cfg).__name__}"
            )
        options.check(cfg)

    @classmethod
    def config_from_options(cls, **values: Any):
        """``config_class`` from options spelled as the command-line flags (``hidden_units=64``,
        ``mhc=True``, ``mhc_expansion_rate=2``); an unknown name fails with the closest one."""
        known = {f.name for f in options.flags(cls.config_class)}
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"model {cls.registry_name or cls.__name__!r} has no option {key!r}{hint}")
        return options.from_flags(cls.config_class, values)

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters weight decay must skip: every vector or scalar (biases,
        norms, gates) and what a module lists in its ``no_decay`` attribute."""
        out = set()
        for mname, module in self.named_modules():
            declared = getattr(module, "no_decay", ())
            for pname, p in module.named_parameters(recurse=False):
                if p.ndim < 2 or pname in declared:
                    out.add(f"{mname}.{pname}" if mname else pname)
        return out

    # --- model ---------------------------------------------------------------------------
    def forward(self, batch: dict[str, Tensor]) -> Tensor:  # pragma: no cover - abstract
        """Hidden state per position, ``[B, L, D]``."""
        raise NotImplementedError

    def item_embedding_weight(self) -> Tensor:  # pragma: no cover - abstract
        """Item embedding table ``[n_items + 1, D]`` (row 0 = padding), tied to the output."""
        raise NotImplementedError

    def graph_inputs(self) -> tuple[str, ...]:
        """The batch keys :meth:`forward` reads, in order: the inputs of an exported graph
        (:mod:`seqrec.export`). Time-aware models add theirs."""
        return ("items",)

    # --- scoring -------------------------------------------------------------------------
    def output_embedding(self) -> Tensor:
        """The item table the scores use (tied to the input embedding)."""
        return self.item_embedding_weight()

    def score_all(self, hidden: Tensor) -> Tensor:
        """Scores of every item, ``[..., D] -> [..., n_items + 1]``.

        Column 0 is the padding item; callers mask it (e.g. set it to ``-inf``).
        """
        return hidden @ self.output_embedding().t()

    def score_items(self, hidden: Tensor, items: Tensor) -> Tensor:
        """Scores of chosen items: ``hidden [..., D]``, ``items [..., K]`` -> ``[..., K]``.

        Equals ``score_all(hidden).gather(-1, items)`` without scoring every item.
        ``items`` must have ``hidden``'s leading dims plus ``K`` (use ``K = 1`` for one
        item per position: ``items[..., None]``).
        """
        if items.dim() != hidden.dim() or items.shape[:-1] != hidden.shape[:-1]:
            raise ValueError(
                f"score_items: items {tuple(items.shape)} must be hidden's leading dims "
                f"{tuple(hidden.shape[:-1])} plus a candidate dim K"
            )
        emb = self.output_embedding()[items]  # (..., K, D)
        return (emb @ hidden.unsqueeze(-1)).squeeze(-1)

    #: ``forward(batch, last_only=True)`` computes only the last position's output (the
    #: final block then attends from one query): what inference needs, ~2x cheaper.
    supports_last_only: bool = False

    def predict(self, batch: dict[str, Tensor]) -> Tensor:
        """Scores ``[B, n_items + 1]`` of the item following the last position.

        The encoder may run under autocast; the scores are computed outside it, in the item
        table's own dtype (float32 unless the model itself was cast): bf16 scores have ~3
        significant digits, and the ties they create would count against the target under
        the pessimistic tie rule.
        """
        out = self(batch, last_only=True) if self.supports_last_only else self(batch)  # __call__: --compile
        hidden = out[:, -1]
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return self.score_all(hidden.to(self.output_embedding().dtype))


def init_transformer_weights(module: nn.Module, std: float = 0.0, scheme: str = "xavier") -> None:
    """Initialisation shared by the transformer models (applied with ``Module.apply``):
    ``Linear`` Xavier-uniform weight and zero bias; ``Embedding`` Xavier-normal with
    ``scheme="xavier"`` (the reference code's: std ``sqrt(2 / (rows + D))``, item vectors start
    small and, after the ``sqrt(D)`` input scaling, at a scale comparable to the position
    vectors), or ``Normal(0, std)`` with ``scheme="normal"`` (the models pass
    ``hidden_units ** -0.5``: item vectors of unit expected norm); the padding row zero;
    ``LayerNorm`` weight 1, bias 0."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        if scheme == "xavier":
            nn.init.xavier_normal_(module.weight)
        else:
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
