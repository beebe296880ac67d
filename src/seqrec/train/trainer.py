"""The training loop: one flat recipe for every registered model.

The trainer knows models only through the registry and the common interface
(:class:`seqrec.models.base.SequentialRecommender`): ``forward(batch) -> hidden``,
``score_items``, ``score_all``, ``predict``. Model selection uses the validation split only;
the test split is evaluated once at the end with the best checkpoint.

Run folder (``train_dir``)::

    config.yaml          the resolved configuration
    metrics.jsonl        one JSON line per logged step / evaluation / final test
    best.pt, last.pt     checkpoints (model, optimizer, scheduler, RNG, epoch, step)
    test_metrics.json    final test metrics, both protocols, with the best epoch
"""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.datasets import resolve_dataset
from ..models import build_model, get_model_class
from ..utils.io import atomic_path
from .batches import NegativeSampler, SequenceBatcher
from .config import save_config, validate_config
from .evaluation import evaluate
from .losses import NEGATIVES, get_loss

KS = (5, 10, 20)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available: use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast_for(device: torch.device, amp: str):
    """A zero-argument context factory for mixed precision (None on CPU / when off)."""
    if device.type != "cuda" or amp == "off":
        return None, False
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return (lambda: torch.autocast("cuda", dtype=dtype)), dtype == torch.float16


def lr_lambda(warmup_steps: int, steps_per_epoch: int, decay_step: int, decay_rate: float):
    """Linear warm-up over ``warmup_steps`` optimizer steps, then ``decay_rate`` every
    ``decay_step`` epochs (step decay, as in the seed)."""

    def f(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
        epoch = step // max(1, steps_per_epoch)
        return warm * decay_rate ** (epoch // max(1, decay_step))

    return f


def build_optimizer(model: torch.nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """Adam (betas 0.9, 0.98) or AdamW.

    ``l2_emb`` is an L2 penalty on the item embedding (Adam's coupled weight decay on that
    tensor). With AdamW, ``weight_decay`` applies to weight matrices only: not to the
    embedding's L2 group, biases, norms or mHC's static biases/gates (``bias`` in the name).
    """
    emb = model.item_embedding_weight()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p is emb or not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "bias" in name or "alpha" in name else decay).append(p)
    wd = cfg["weight_decay"] if cfg["optimizer"] == "adamw" else 0.0
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0},
              {"params": [emb], "weight_decay": cfg["l2_emb"]}]
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=cfg["lr"], betas=(0.9, 0.98))
    return torch.optim.Adam(groups, lr=cfg["lr"], betas=(0.9, 0.98))


class RunLog:
    """Appends JSON lines to ``metrics.jsonl`` (flushed at every line)."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "a", encoding="utf-8")

    def write(self, **record) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def save_checkpoint(path: Path, model, optimizer, scheduler, state: dict) -> None:
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "state": state,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _format_metrics(m: dict, keys=("hr@10", "ndcg@10")) -> str:
    return "  ".join(f"{k} {m[k]:.4f}" for k in keys if k in m)


def train(cfg: dict, log=print) -> dict:
    """Train ``cfg['model']`` on ``cfg['dataset']``; returns the final test metrics."""
    validate_config(cfg)
    model_cls = get_model_class(cfg["model"])
    cfg_fields = set(model_cls.config_class.__dataclass_fields__)
    if cfg.get("mhc") and "mhc" not in cfg_fields:
        raise ValueError(f"model {cfg['model']!r} has no mHC variant: pass --no_mhc")
    if cfg.get("num_threads"):
        torch.set_num_threads(cfg["num_threads"])
    seed_everything(cfg["seed"])
    device = pick_device(cfg["device"])
    run_dir = Path(cfg["train_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)

    ds = resolve_dataset(cfg["dataset"], log=log)
    split = ds.leave_one_out()
    model = build_model(cfg["model"], n_items=ds.n_items, **cfg).to(device)
    batcher = SequenceBatcher(ds.item, ds.timestamp, ds.offsets, split.train_end, cfg["maxlen"],
                              with_time=model_cls.uses_time)
    train_users = batcher.train_users()
    eval_users = split.eval_users
    valid_pos = split.valid_pos[eval_users - 1]
    test_pos = split.test_pos[eval_users - 1]
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{cfg['model']} on {ds.name}: {ds.n_users:,} users, {ds.n_items:,} items, {len(ds):,} interactions; "
        f"{len(train_users):,} training sequences, {len(eval_users):,} evaluated users; "
        f"{n_params:,} parameters; device {device}")

    loss_fn = get_loss(cfg["loss"])
    neg_kind = NEGATIVES[cfg["loss"]]
    sampler = NegativeSampler(ds.item, ds.offsets, split.train_end, ds.n_items) if neg_kind != "none" else None
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(train_users) / cfg["batch_size"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg["warmup_steps"], steps_per_epoch, cfg["lr_decay_step"], cfg["lr_decay_rate"])
    )
    autocast, use_scaler = autocast_for(device, cfg["amp"])
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    rng = np.random.default_rng(cfg["seed"])
    save_config(cfg, run_dir / "config.yaml")
    runlog = RunLog(run_dir / "metrics.jsonl")
    metric = cfg["metric"]
    eval_kw = dict(device=device, ks=KS, batch_size=cfg["eval_batch_size"], exclude_history=cfg["exclude_history"],
                   autocast=autocast)

    best, best_epoch, bad_evals, step = -1.0, 0, 0, 0
    t_start = time.perf_counter()
    stop = False
    for epoch in range(1, cfg["num_epochs"] + 1):
        model.train()
        batches = batcher.epoch_batches(train_users, cfg["batch_size"], rng, bucket=cfg["length_bucketing"])
        t_epoch, total_loss, n_seq = time.perf_counter(), 0.0, 0
        bar = tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=not cfg["progress"], unit="batch")
        for users in bar:
            batch = batcher.train_batch(users)
            if neg_kind == "per_position":
                batch["negatives"] = torch.from_numpy(sampler.sample(users, tuple(batch["targets"].shape[1:]), rng))
            elif neg_kind == "shared":
                batch["negatives"] = torch.from_numpy(rng.integers(1, ds.n_items + 1, size=cfg["num_negatives"]))
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast() if autocast else nullcontext():
                hidden = model(batch)
                loss = loss_fn(model, hidden, batch["targets"], negatives=batch.get("negatives"))
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"] if cfg["grad_clip"] > 0 else float("inf"))
            if not torch.isfinite(loss) or not torch.isfinite(gnorm):
                log(f"warning: step {step}: non-finite loss or gradient (loss {loss.item():.4g}, grad norm "
                    f"{gnorm.item():.4g}); step skipped. Try a lower --lr.")
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.update()
                step += 1
                continue
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            step += 1
            lv = loss.item()
            total_loss += lv * len(users)
            n_seq += len(users)
            if cfg["progress"]:
                bar.set_postfix(loss=f"{lv:.4f}", refresh=False)
            if cfg["log_every"] and step % cfg["log_every"] == 0:
                runlog.write(kind="step", epoch=epoch, step=step, loss=lv, grad_norm=float(gnorm),
                             lr=scheduler.get_last_lr()[0])
            if cfg["max_steps"] and step >= cfg["max_steps"]:
                stop = True
                break
        bar.close()
        dt = time.perf_counter() - t_epoch
        record = {"kind": "epoch", "epoch": epoch, "step": step, "train_loss": total_loss / max(1, n_seq),
                  "epoch_time_s": dt, "seq_per_s": n_seq / max(dt, 1e-9), "lr": scheduler.get_last_lr()[0]}
        msg = f"epoch {epoch:3d}  loss {record['train_loss']:.4f}  {record['seq_per_s']:.0f} seq/s"
        if epoch % cfg["eval_every"] == 0 or stop or epoch == cfg["num_epochs"]:
            t_eval = time.perf_counter()
            valid = evaluate(model, batcher, eval_users, valid_pos, protocol="full", **eval_kw)
            record.update({f"valid_{k}": v for k, v in valid.items() if "@" in k})
            record["eval_time_s"] = time.perf_counter() - t_eval
            msg += f"  valid {_format_metrics(valid)}  ({record['eval_time_s']:.1f}s)"
            state = {"epoch": epoch, "step": step, "best": best, "best_epoch": best_epoch}
            if valid[metric] > best:
                best, best_epoch, bad_evals = valid[metric], epoch, 0
                state.update(best=best, best_epoch=best_epoch)
                save_checkpoint(run_dir / "best.pt", model, optimizer, scheduler, state)
                msg += " *"
            else:
                bad_evals += 1
            save_checkpoint(run_dir / "last.pt", model, optimizer, scheduler, state)
            if cfg["patience"] and bad_evals >= cfg["patience"]:
                log(msg)
                log(f"early stop: no {metric} improvement in {bad_evals} evaluations")
                runlog.write(**record)
                break
        log(msg)
        runlog.write(**record)
        if stop:
            break

    train_time = time.perf_counter() - t_start
    ckpt = torch.load(run_dir / "best.pt", map_location=device, weights_only=False)
    model.load_state_dict(ckpt["model"])
    result = final_test(model, batcher, eval_users, valid_pos, test_pos, cfg, ds, eval_kw)
    result.update(best_epoch=best_epoch, epochs_run=epoch, steps=step, train_time_s=train_time,
                  model=cfg["model"], dataset=ds.name, device=str(device))
    runlog.write(kind="test", **result)
    runlog.close()
    with atomic_path(run_dir / "test_metrics.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    log(report_lines(result))
    return result


def final_test(model, batcher, eval_users, valid_pos, test_pos, cfg, ds, eval_kw) -> dict:
    """Validation and test metrics of the loaded (best) model, full ranking and sampled."""
    out = {"protocol_full": "full ranking over all items"
           + (", user's history items excluded" if cfg["exclude_history"] else ""),
           "valid_full": evaluate(model, batcher, eval_users, valid_pos, protocol="full", **eval_kw),
           "test_full": evaluate(model, batcher, eval_users, test_pos, protocol="full", **eval_kw)}
    if cfg["eval_negatives"]:
        out["protocol_sampled"] = f"{cfg['eval_negatives']} uniform negatives not in the user's history"
        out["test_sampled"] = evaluate(model, batcher, eval_users, test_pos, protocol="sampled",
                                       n_negatives=cfg["eval_negatives"], seed=cfg["seed"], **eval_kw)
    return out


def report_lines(result: dict) -> str:
    rows = [f"best epoch {result.get('best_epoch')} (selected on validation)"]
    for key in ("valid_full", "test_full", "test_sampled"):
        if key in result:
            m = result[key]
            rows.append(f"{key:13s} HR@10 {m['hr@10']:.4f}  NDCG@10 {m['ndcg@10']:.4f}  "
                        f"MRR@10 {m['mrr@10']:.4f}  HR@20 {m['hr@20']:.4f}  (users {m.get('n_users')})")
    return "\n".join(rows)
