"""The one place a run configuration becomes a dataset split, a model and its batcher.

Training, the pre-flight check, evaluation, recommendations and the Python API all call
:func:`assemble`, so they see the same model built the same way from the same settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import RunConfig
from .data.batches import SequenceBatcher
from .data.datasets import resolve_dataset
from .data.splits import EvalSplit
from .data.store import SeqDataset
from .models import SequentialRecommender, build_model


@dataclass
class Assembled:
    dataset: SeqDataset
    split: EvalSplit
    model: SequentialRecommender
    batcher: SequenceBatcher


def assemble(cfg: RunConfig, dataset: SeqDataset | None = None, *, next_time: str | None = None,
             prepare_if_missing: bool = True, log=print) -> Assembled:
    """``cfg``'s dataset (``dataset`` if given), its evaluation split, the model (freshly
    initialised, on the CPU) and the batcher of its windows. ``next_time``: the evaluation
    batches' time of the held-out item (default the run's ``eval.next_time``)."""
    ds = dataset if dataset is not None else resolve_dataset(cfg.data.dataset, prepare_if_missing=prepare_if_missing,
                                                             log=log)
    split = ds.eval_split(cfg.data.split, cfg.data.split_fraction)
    model = build_model(cfg.model_name, n_items=ds.n_items, maxlen=cfg.data.maxlen, config=cfg.model)
    batcher = SequenceBatcher(ds.item, ds.timestamp, ds.offsets, split.train_end, cfg.data.maxlen,
                              with_time=cfg.model_class.uses_time, next_time=next_time or cfg.eval.next_time)
    return Assembled(ds, split, model, batcher)
