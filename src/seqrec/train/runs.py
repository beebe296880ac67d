"""Loading saved runs: rebuild dataset, batcher and model from a run folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.datasets import resolve_dataset
from ..data.store import SeqDataset
from ..eval import paired_difference, per_user_metrics
from ..models import build_model, get_model_class
from ..utils.checkpoint import load_checkpoint_file
from ..utils.io import read_yaml
from .batches import SequenceBatcher
from .config import KS, check_metric
from .evaluation import evaluate
from .trainer import pick_device


@dataclass
class LoadedRun:
    cfg: dict
    dataset: SeqDataset
    model: torch.nn.Module
    batcher: SequenceBatcher
    device: torch.device


def load_run(run_dir: str | Path, checkpoint: str = "best.pt", device: str = "auto",
             next_time: str | None = None) -> LoadedRun:
    """A run folder's dataset, model (``checkpoint``) and batcher. ``next_time``: the evaluation
    batches' time of the held-out item (see :class:`SequenceBatcher`); default the run's own."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a seqrec run folder (no config.yaml)")
    cfg = read_yaml(cfg_path)
    ckpt_path = run_dir / checkpoint
    if not ckpt_path.exists():
        raise FileNotFoundError(f"{ckpt_path} not found (the run has not finished an evaluation yet?)")
    state = load_checkpoint_file(ckpt_path, map_location="cpu")
    dev = pick_device(device)
    ds = resolve_dataset(cfg["dataset"], prepare_if_missing=False)
    split = ds.eval_split(cfg.get("split", "loo"), cfg.get("split_fraction", 0.8))
    model = build_model(cfg["model"], n_items=ds.n_items, **cfg).to(dev)
    model.load_state_dict(state["model"])
    model.eval()
    batcher = SequenceBatcher(ds.item, ds.timestamp, ds.offsets, split.train_end, cfg["maxlen"],
                              with_time=get_model_class(cfg["model"]).uses_time,
                              next_time=next_time or cfg.get("eval_next_time", "target"))
    return LoadedRun(cfg, ds, model, batcher, dev)


def evaluate_run(run_dir, checkpoint="best.pt", split="test", n_negatives: int | None = None, device="auto",
                 log=print, next_time: str | None = None) -> dict:
    """Full ranking and (``n_negatives``, default the run's ``eval_negatives``) sampled metrics."""
    if n_negatives is not None and (isinstance(n_negatives, bool) or n_negatives < 0):
        raise ValueError(f"--negatives must be a non-negative integer (0 skips the sampled protocol), got {n_negatives}")
    run = load_run(run_dir, checkpoint, device, next_time)
    if n_negatives is None:
        n_negatives = int(run.cfg.get("eval_negatives", 100))
    users, pos = _eval_rows(run, split)
    kw = dict(device=run.device, ks=KS, batch_size=run.cfg.get("eval_batch_size", 1024),
              exclude_history=run.cfg.get("exclude_history", True))
    out = {"full": evaluate(run.model, run.batcher, users, pos, protocol="full", **kw)}
    if n_negatives:
        out["sampled"] = evaluate(run.model, run.batcher, users, pos, protocol="sampled", n_negatives=n_negatives,
                                  seed=run.cfg.get("seed", 0), **kw)
    for proto, m in out.items():
        log(f"{split} {proto:8s} " + "  ".join(f"{k} {v:.4f}" for k, v in m.items() if "@" in k))
    log(json.dumps({"run": str(run_dir), "split": split, "next_time": run.batcher.next_time, **out}, default=float))
    return out


def _eval_rows(run: LoadedRun, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in ("test", "valid"):
        raise ValueError(f"split must be 'test' or 'valid', got {split!r}")
    sp = run.dataset.eval_split(run.cfg.get("split", "loo"), run.cfg.get("split_fraction", 0.8))
    return (sp.test_users, sp.test_pos) if split == "test" else (sp.valid_users, sp.valid_pos)


def paired_compare(run_a, run_b, split: str = "test", metrics=("hr@10", "ndcg@10"), checkpoint: str = "best.pt",
                   device: str = "auto", confidence: float = 0.95) -> dict:
    """Run B against run A on the same users (full ranking): per metric, both means, the
    paired difference B - A with its standard error, confidence interval and p-value
    (:func:`seqrec.eval.paired_difference`). The two runs must share dataset and split."""
    metric_names = list(metrics)
    for m in metric_names:
        check_metric(m, "--metrics")
    runs = [load_run(r, checkpoint, device) for r in (run_a, run_b)]
    (ua, pa), (ub, pb) = (_eval_rows(r, split) for r in runs)
    sums = [r.dataset.manifest.get("checksums") for r in runs]
    if sums[0] != sums[1] or not (np.array_equal(ua, ub) and np.array_equal(pa, pb)):
        raise ValueError(f"{run_a} and {run_b} are not evaluated on the same {split} users "
                         "(different datasets or splits): a paired comparison needs the same rows")
    if runs[0].cfg.get("exclude_history", True) != runs[1].cfg.get("exclude_history", True):
        raise ValueError("the two runs differ in exclude_history: their full rankings are not the same protocol")
    per_user = []
    for r in runs:
        _, ranks = evaluate(r.model, r.batcher, ua, pa, protocol="full", device=r.device, ks=KS,
                            batch_size=r.cfg.get("eval_batch_size", 1024),
                            exclude_history=r.cfg.get("exclude_history", True), return_ranks=True)
        per_user.append(per_user_metrics(ranks, KS))
    return {"run_a": str(run_a), "run_b": str(run_b), "split": split, "protocol": "full ranking",
            "metrics": {m: paired_difference(per_user[0][m], per_user[1][m], confidence) for m in metric_names}}
