"""Loading a trained run back: its settings, dataset, model (a checkpoint) and batcher.

Everything that reads a run's settings defaults to what the run used (its split, window,
evaluation batch size, history exclusion, sampled negatives, next-event time).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..assemble import assemble
from ..config import KS, RunConfig, check_metric
from ..data.batches import SequenceBatcher
from ..data.splits import EvalSplit
from ..data.store import SeqDataset
from ..eval import paired_difference, per_user_metrics
from ..eval.evaluate import evaluate
from ..utils.checkpoint import load_checkpoint_file
from ..utils.device import pick_device
from .folder import BEST, RunFolder


@dataclass
class LoadedRun:
    cfg: RunConfig
    dataset: SeqDataset
    split: EvalSplit
    model: torch.nn.Module
    batcher: SequenceBatcher
    device: torch.device
    folder: RunFolder


def load_run(run_dir: str | Path, checkpoint: str = BEST, device: str = "auto",
             next_time: str | None = None) -> LoadedRun:
    """A run folder's dataset, model (``checkpoint``, loaded without running code from it) and
    batcher. ``next_time``: the evaluation batches' time of the held-out item (default the run's)."""
    folder = RunFolder(run_dir).require()
    cfg = folder.config()
    state = load_checkpoint_file(folder.checkpoint(checkpoint), map_location="cpu")
    dev = pick_device(device)
    parts = assemble(cfg, next_time=next_time, prepare_if_missing=False)
    model = parts.model
    model.load_state_dict(state["model"])
    model.to(dev).eval()
    return LoadedRun(cfg, parts.dataset, parts.split, model, parts.batcher, dev, folder)


def _eval_rows(run: LoadedRun, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in ("test", "valid"):
        raise ValueError(f"split must be 'test' or 'valid', got {split!r}")
    sp = run.split
    return (sp.test_users, sp.test_pos) if split == "test" else (sp.valid_users, sp.valid_pos)


def _eval_kw(run: LoadedRun) -> dict:
    return dict(device=run.device, ks=KS, batch_size=run.cfg.eval.batch_size,
                exclude_history=run.cfg.eval.exclude_history)


def evaluate_run(run_dir, checkpoint: str = BEST, split: str = "test", n_negatives: int | None = None,
                 device: str = "auto", log=print, next_time: str | None = None) -> dict:
    """Full ranking and (``n_negatives``, default the run's ``eval.negatives``) sampled metrics."""
    if n_negatives is not None and (isinstance(n_negatives, bool) or n_negatives < 0):
        raise ValueError(f"--negatives must be a non-negative integer (0 skips the sampled protocol), got {n_negatives}")
    run = load_run(run_dir, checkpoint, device, next_time)
    if n_negatives is None:
        n_negatives = run.cfg.eval.negatives
    users, pos = _eval_rows(run, split)
    out = {"full": evaluate(run.model, run.batcher, users, pos, protocol="full", **_eval_kw(run))}
    if n_negatives:
        out["sampled"] = evaluate(run.model, run.batcher, users, pos, protocol="sampled", n_negatives=n_negatives,
                                  seed=run.cfg.train.seed, **_eval_kw(run))
    for proto, m in out.items():
        log(f"{split} {proto:8s} " + "  ".join(f"{k} {v:.4f}" for k, v in m.items() if "@" in k))
    log(json.dumps({"run": str(run_dir), "split": split, "next_time": run.batcher.next_time, **out}, default=float))
    return out


def paired_compare(run_a, run_b, split: str = "test", metrics=("hr@10", "ndcg@10"), checkpoint: str = BEST,
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
    if runs[0].cfg.eval.exclude_history != runs[1].cfg.eval.exclude_history:
        raise ValueError("the two runs differ in exclude_history: their full rankings are not the same protocol")
    per_user = []
    for r in runs:
        _, ranks = evaluate(r.model, r.batcher, ua, pa, protocol="full", return_ranks=True, **_eval_kw(r))
        per_user.append(per_user_metrics(ranks, KS))
    return {"run_a": str(run_a), "run_b": str(run_b), "split": split, "protocol": "full ranking",
            "metrics": {m: paired_difference(per_user[0][m], per_user[1][m], confidence) for m in metric_names}}
