"""The training loop: one flat recipe for every registered model.

The trainer knows models only through the registry and the common interface
(:class:`seqrec.models.base.SequentialRecommender`): ``forward(batch) -> hidden``,
``score_items``, ``score_all``, ``predict``. Model selection uses the validation split only;
the test split is evaluated once at the end with the best checkpoint.

Run folder (``train_dir``)::

    config.yaml          the resolved configuration
    metrics.jsonl        one JSON line per logged step / epoch / event / final test
    best.pt, last.pt     checkpoints (model, optimizer, scheduler, RNG and data-order state)
    test_metrics.json    final test metrics, both protocols, with the best epoch

Fault tolerance: every checkpoint holds the numpy generator's state at the start of the
epoch (which fixes the epoch's batch order), the number of batches already done in it and
the generators' current states, so ``resume`` replays exactly what an uninterrupted run
does; records written after the checkpoint are truncated from ``metrics.jsonl``.

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in
:class:`torch.nn.parallel.DistributedDataParallel`; every rank draws the same global batch
and negatives, trains on its share of the users (``users[rank::world]``) with its loss
rescaled so the averaged gradient equals the single-process gradient of the global batch,
evaluates a shard of the users (metrics summed across ranks), and only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..data.datasets import resolve_dataset
from ..models import build_model, get_model_class
from ..track.sinks import Tracker, truncate_log
from ..utils.checkpoint import load_checkpoint_file, save_checkpoint_file
from ..utils.io import atomic_path, remove_stale_temps
from .rundir import RunClaim
from .batches import NegativeSampler, SequenceBatcher, draw_negatives
from .config import KS, save_config, validate_config
from .evaluation import evaluate
from .losses import NEGATIVES, get_loss

STABILITY_FIXES = (
    "lower the learning rate (e.g. --lr 0.0005), keep gradient clipping on (--grad_clip 1.0), "
    "use --mhc_no_amp or --amp off when training with mixed precision, check the data for extreme values"
)


class TrainingStopped(RuntimeError):
    """Raised when the stability guard stops a run (a checkpoint has been written)."""


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but CUDA is not available: use --device cpu or auto")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast_for(device: torch.device, amp: str):
    """A zero-argument context factory for mixed precision (None on CPU / when off) and
    whether fp16 loss scaling is needed."""
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


def worst_gradient(model: torch.nn.Module) -> tuple[str, float]:
    """Name and norm of the parameter with the largest (or a non-finite) gradient norm."""
    worst, worst_norm = "", -1.0
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        n = float(p.grad.detach().float().norm())
        if not math.isfinite(n):
            return name, n
        if n > worst_norm:
            worst, worst_norm = name, n
    return worst, worst_norm


# -- distributed helpers ----------------------------------------------------------------------

def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank); (0, 1, 0) when not launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def shard_batch(global_batch: dict, rank: int, world: int) -> tuple[dict, float]:
    """This rank's rows (``rank::world``) of a global batch, and the factor that turns its mean
    loss into its share of the global batch's mean (the ranks' gradients are averaged).

    A rank left without rows (a last batch smaller than ``world``) gets one stand-in row with
    factor 0: it still runs forward and backward, which DDP's gradient all-reduce needs."""
    n = global_batch["targets"].shape[0]
    rows = torch.arange(rank, n, world)
    empty = rows.numel() == 0
    if empty:
        rows = torch.zeros(1, dtype=torch.long)
    batch = {k: v if (k == "negatives" and v.dim() == 1) else v[rows]  # 1-D negatives: shared by the batch
             for k, v in global_batch.items()}
    n_mine = 0 if empty else int((batch["targets"] > 0).sum())
    n_all = int((global_batch["targets"] > 0).sum())
    return batch, n_mine * world / max(n_all, 1)


def _finished(st: dict, cfg: dict) -> bool:
    """Nothing left to train: early-stopped, or out of epochs or steps (a resume with a larger
    ``num_epochs`` / ``max_steps``, possible through the API, continues)."""
    return bool(st["early_stopped"]) or st["epoch"] > cfg["num_epochs"] or bool(
        cfg["max_steps"] and st["step"] >= cfg["max_steps"])


def check_sampled_negatives(batcher: SequenceBatcher, users: np.ndarray, target_pos: np.ndarray, n_items: int,
                            n_negatives: int) -> None:
    """Fail *before* training when some test user's history leaves fewer than ``n_negatives``
    items to draw the sampled protocol's negatives from (small item sets, long histories)."""
    if not n_negatives or len(users) == 0:
        return
    hist_len = target_pos - batcher.start[users - 1]  # with repeats: >= distinct items seen
    for r in np.nonzero(n_items - 1 - hist_len < n_negatives)[0]:
        s, t = batcher.start[users[r] - 1], target_pos[r]
        allowed = n_items - len(np.unique(batcher.item[s : t + 1]))  # neither history nor target
        if allowed < n_negatives:
            raise ValueError(
                f"--eval_negatives {n_negatives}: test user {int(users[r])} leaves only {allowed} of {n_items} items "
                f"to sample negatives from; lower --eval_negatives, or set it to 0 (full ranking only)")


def _reduce_metrics(m: dict, device) -> dict:
    """Average per-user metrics across ranks, weighting each rank by its number of users."""
    if not (dist.is_available() and dist.is_initialized()):
        return m
    keys = sorted(k for k in m if "@" in k)
    n = float(m.get("n_users", 0))
    # a rank without users (fewer users than processes) has NaN means: it contributes 0, not NaN
    t = torch.tensor([m[k] * n if n else 0.0 for k in keys] + [n], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    total = float(t[-1])
    out = {k: float(t[i]) / max(total, 1.0) for i, k in enumerate(keys)}
    out["n_users"] = int(total)
    return out


# -- checkpoints ------------------------------------------------------------------------------

def save_checkpoint(path: Path, model, optimizer, scheduler, scaler, state: dict) -> None:
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "state": state,
    }
    save_checkpoint_file(payload, path)


def _format_metrics(m: dict, keys=("hr@10", "ndcg@10")) -> str:
    return "  ".join(f"{k} {m[k]:.4f}" for k in keys if k in m)


def apply_profile(cfg: dict) -> dict:
    """``--debug``: a tiny slice end to end (few users, 2 epochs, anomaly detection)."""
    cfg = dict(cfg)
    if cfg.get("debug") and cfg.get("production"):
        raise ValueError("--debug and --production exclude each other")
    if cfg.get("debug"):
        cfg["num_epochs"] = min(cfg["num_epochs"], 2)
        cfg["debug_users"] = cfg.get("debug_users") or 512
        cfg["patience"] = 0
        cfg["log_every"] = min(cfg["log_every"] or 10, 10)
    return cfg


def train(cfg: dict, log=print, resume: bool = False, overwrite: bool = False) -> dict:
    """Train ``cfg['model']`` on ``cfg['dataset']``; returns the final test metrics.

    ``resume=True`` continues from ``train_dir/last.pt`` with the saved configuration.
    ``train_dir`` is claimed for the session (:class:`RunClaim`): locked, and a folder that
    already holds a run is refused unless ``resume`` or ``overwrite``.
    """
    cfg = apply_profile(cfg)
    validate_config(cfg)
    rank = dist_info()[0]
    with RunClaim(cfg["train_dir"], resume=resume, overwrite=overwrite, log=log, enabled=rank == 0) as claim:
        return _train(cfg, log, resume, claim)


def _train(cfg: dict, log, resume: bool, claim: RunClaim) -> dict:
    rank, world, local_rank = dist_info()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cfg["device"] != "cpu" and torch.cuda.is_available() else "gloo")
    is_main = rank == 0
    if not is_main:
        log = lambda *a, **k: None  # noqa: E731
    model_cls = get_model_class(cfg["model"])
    if cfg.get("mhc") and "mhc" not in model_cls.config_class.__dataclass_fields__:
        raise ValueError(f"model {cfg['model']!r} has no mHC variant: pass --no_mhc")
    if cfg.get("num_threads"):
        torch.set_num_threads(cfg["num_threads"])
    seed_everything(cfg["seed"])
    device = pick_device(cfg["device"], local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    run_dir = Path(cfg["train_dir"])
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("debug"):
        torch.autograd.set_detect_anomaly(True)

    ds = resolve_dataset(cfg["dataset"], log=log)
    split = ds.eval_split(cfg["split"], cfg["split_fraction"])
    model = build_model(cfg["model"], n_items=ds.n_items, **cfg).to(device)
    batcher = SequenceBatcher(ds.item, ds.timestamp, ds.offsets, split.train_end, cfg["maxlen"],
                              with_time=model_cls.uses_time, next_time=cfg["eval_next_time"])
    train_users = batcher.train_users()
    valid_users, valid_pos, test_users, test_pos = split.valid_users, split.valid_pos, split.test_users, split.test_pos
    if cfg.get("debug_users"):
        pick = np.random.default_rng(cfg["seed"]).permutation(ds.n_users)[: cfg["debug_users"]] + 1
        train_users = np.intersect1d(train_users, pick)
        vk, tk = np.isin(valid_users, pick), np.isin(test_users, pick)
        valid_users, valid_pos, test_users, test_pos = valid_users[vk], valid_pos[vk], test_users[tk], test_pos[tk]
    check_sampled_negatives(batcher, test_users, test_pos, ds.n_items, cfg["eval_negatives"])
    shard = slice(rank, None, world)  # this rank's evaluation users
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{cfg['model']}{' + mHC' if cfg.get('mhc') else ''} on {ds.name}: {ds.n_users:,} users, "
        f"{ds.n_items:,} items, {len(ds):,} interactions; {len(train_users):,} training sequences, "
        f"{split.name} split, {len(valid_users):,} / {len(test_users):,} validation / test users; "
        f"{n_params:,} parameters; device {device}"
        + (f" x {world} processes" if world > 1 else "") + (" [debug profile]" if cfg.get("debug") else ""))

    loss_fn = get_loss(cfg["loss"])
    neg_kind = NEGATIVES[cfg["loss"]]
    sampler = NegativeSampler(ds.item, ds.offsets, split.train_end, ds.n_items) if neg_kind != "none" else None
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(train_users) / cfg["batch_size"])
    autocast, use_scaler = autocast_for(device, cfg["amp"])
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    ddp = (torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
           if world > 1 else None)
    forward = ddp if ddp is not None else model
    rng = np.random.default_rng(cfg["seed"])

    # -- state (restored on resume) ----------------------------------------------------------
    st = {"epoch": 1, "batch_in_epoch": 0, "step": 0, "best": -1.0, "best_epoch": 0, "bad_evals": 0,
          "lr_scale": 1.0, "plateau_evals": 0, "early_stopped": False,
          "bad_steps": 0, "epoch_loss": 0.0, "epoch_seq": 0, "rng_epoch_start": rng.bit_generator.state,
          "rng_now": rng.bit_generator.state, "log_offset": 0, "train_time_s": 0.0}
    # the step schedule times st["lr_scale"], which plateau decays lower (restored on resume)
    schedule = lr_lambda(cfg["warmup_steps"], steps_per_epoch, cfg["lr_decay_step"], cfg["lr_decay_rate"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step) * st["lr_scale"])
    if resume:
        ckpt = load_checkpoint_file(run_dir / "last.pt", map_location=device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        if ckpt.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        st.update(ckpt["state"])
        if is_main:
            truncate_log(run_dir / "metrics.jsonl", st["log_offset"])
            remove_stale_temps(run_dir)  # a kill during a checkpoint write leaves its temp file
        rng.bit_generator.state = st["rng_now"]
        if _finished(st, cfg):  # early-stopped or out of epochs/steps: only the final evaluation is redone
            log(f"{run_dir} had finished training ({st['epoch'] - 1} epochs, best epoch {st['best_epoch']}); "
                "evaluating its best checkpoint")
        else:
            log(f"resumed from {run_dir / 'last.pt'}: epoch {st['epoch']}, {st['batch_in_epoch']} batches into it, "
                f"step {st['step']}")
    elif is_main:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        claim.config_written()
    if resume and st["bad_steps"] >= cfg["max_bad_steps"]:  # stopped by the guard: --resume grants a new budget
        log(f"the previous session stopped after {st['bad_steps']} skipped steps; the count starts again")
        st["bad_steps"] = 0
    if world > 1 and rank > 0:
        # model and data order are shared (DDP broadcasts rank 0's weights; `rng` is seeded alike),
        # but each rank's dropout masks must differ, as the rows of one big batch would
        torch.manual_seed(hash((cfg["seed"], rank, st["step"])) % 2**63)
    tracker = Tracker(run_dir, cfg, wandb=cfg.get("wandb", False), tensorboard=cfg.get("tensorboard", False),
                      enabled=is_main, resume_step=st["step"] if resume else None)
    metric = cfg["metric"]
    eval_kw = dict(device=device, ks=KS, batch_size=cfg["eval_batch_size"], exclude_history=cfg["exclude_history"],
                   autocast=autocast, progress=bool(cfg["progress"]) and is_main)

    def checkpoint(name: str) -> None:
        if is_main:
            st["log_offset"] = tracker.offset()
            save_checkpoint(run_dir / name, model, optimizer, scheduler, scaler, st)

    def run_eval(users, pos, protocol="full", **kw):
        m = evaluate(model, batcher, users[shard], pos[shard], protocol=protocol, **eval_kw, **kw)
        return _reduce_metrics(m, device if device.type == "cuda" else torch.device("cpu"))

    t_start = time.perf_counter() - st["train_time_s"]
    stop = False
    for epoch in range(st["epoch"], cfg["num_epochs"] + 1 if not _finished(st, cfg) else 0):
        st["epoch"] = epoch
        if st["batch_in_epoch"] == 0:
            st["rng_epoch_start"] = rng.bit_generator.state
            st["epoch_loss"], st["epoch_seq"] = 0.0, 0
        rng.bit_generator.state = st["rng_epoch_start"]
        batches = batcher.epoch_batches(train_users, cfg["batch_size"], rng, bucket=cfg["length_bucketing"])
        if st["batch_in_epoch"]:
            rng.bit_generator.state = st["rng_now"]  # mid-epoch resume: negatives continue exactly
        model.train()
        t_epoch = time.perf_counter()
        seq_this_session = 0
        bar = tqdm(desc=f"epoch {epoch}", leave=False, disable=not (cfg["progress"] and is_main),
                   unit="batch", initial=st["batch_in_epoch"], total=len(batches))
        for users in batches[st["batch_in_epoch"]:]:
            global_batch = batcher.train_batch(users)
            negatives = draw_negatives(neg_kind, users, global_batch["targets"], rng, sampler, ds.n_items,
                                       cfg["num_negatives"], cfg["negative_sharing"])
            if negatives is not None:
                global_batch["negatives"] = negatives
            if world > 1:  # this rank's users; loss rescaled to the global batch's mean
                batch, loss_scale = shard_batch(global_batch, rank, world)
            else:
                batch, loss_scale = global_batch, 1.0
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast() if autocast else nullcontext():
                hidden = forward(batch)
                loss = loss_fn(model, hidden, batch["targets"], negatives=batch.get("negatives"))
                if world > 1:
                    loss = loss * loss_scale
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            clip = cfg["grad_clip"] if cfg["grad_clip"] > 0 else float("inf")
            gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
            lv_t = loss.detach().float()
            if world > 1:  # the ranks' scaled losses sum to world x the global batch's mean
                dist.all_reduce(lv_t)
                lv_t /= world
            lv = float(lv_t)  # the same on every rank, so every rank takes the same decision below
            st["step"] += 1
            st["batch_in_epoch"] += 1
            # fp16: inf/NaN gradients with a finite loss are the gradient scaler's own overflow
            # probes (it then lowers its scale and skips the step): not an explosion
            scaler_skip = scaler is not None and not math.isfinite(gnorm) and math.isfinite(lv)
            exploded = not scaler_skip and (not math.isfinite(lv) or not math.isfinite(gnorm)
                                            or gnorm > cfg["max_grad_norm"])
            if scaler_skip:
                scaler.step(optimizer)  # skipped: unscale_ recorded the infs
                scaler.update()  # (the lr schedule does not advance, as for any skipped step)
                tracker.log(kind="event", event="amp_overflow", epoch=epoch, step=st["step"],
                            scale=float(scaler.get_scale()))
                continue
            if exploded:
                layer, lnorm = worst_gradient(model)
                st["bad_steps"] += 1
                msg = (f"warning: step {st['step']} (epoch {epoch}): loss {lv:.4g}, gradient norm {gnorm:.4g} "
                       f"above {cfg['max_grad_norm']:g} or not finite; largest in {layer} ({lnorm:.4g}); step skipped "
                       f"({st['bad_steps']}/{cfg['max_bad_steps']})")
                log(msg)
                tracker.log(kind="event", event="gradient_explosion", epoch=epoch, step=st["step"], loss=lv,
                            grad_norm=gnorm, layer=layer, layer_grad_norm=lnorm)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.update()
                if st["bad_steps"] >= cfg["max_bad_steps"]:
                    st["rng_now"] = rng.bit_generator.state
                    checkpoint("last.pt")
                    reason = (f"stopped after {st['bad_steps']} skipped steps with exploding or non-finite "
                              f"gradients (last in {layer}). Suggested fixes: {STABILITY_FIXES}. The state is in "
                              f"{run_dir / 'last.pt'}; change the settings and start again, or --resume it as "
                              f"it is (the count of skipped steps then starts again).")
                    tracker.log(kind="event", event="stopped", step=st["step"], reason=reason)
                    tracker.close()
                    raise TrainingStopped(reason)
                continue
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            st["epoch_loss"] += lv * len(users)
            st["epoch_seq"] += len(users)
            seq_this_session += len(users)
            if cfg["progress"] and is_main:
                rate = seq_this_session / max(time.perf_counter() - t_epoch, 1e-9)
                bar.set_postfix(loss=f"{lv:.4f}", seq_s=f"{rate:.0f}", refresh=False)
                bar.update(1)
            if cfg["log_every"] and st["step"] % cfg["log_every"] == 0:
                tracker.log(kind="step", epoch=epoch, step=st["step"], loss=lv, grad_norm=gnorm,
                            lr=scheduler.get_last_lr()[0])
            if cfg["checkpoint_every"] and st["step"] % cfg["checkpoint_every"] == 0:
                st["rng_now"] = rng.bit_generator.state
                st["train_time_s"] = time.perf_counter() - t_start
                checkpoint("last.pt")
            if cfg["max_steps"] and st["step"] >= cfg["max_steps"]:
                stop = True
                break
        bar.close()
        dt = time.perf_counter() - t_epoch
        record = {"kind": "epoch", "epoch": epoch, "step": st["step"],
                  "train_loss": st["epoch_loss"] / max(1, st["epoch_seq"]), "epoch_time_s": dt,
                  "seq_per_s": seq_this_session / max(dt, 1e-9), "lr": scheduler.get_last_lr()[0]}
        msg = f"epoch {epoch:3d}  loss {record['train_loss']:.4f}  {record['seq_per_s']:.0f} seq/s"
        early_stop = False
        if epoch % cfg["eval_every"] == 0 or stop or epoch == cfg["num_epochs"]:
            t_eval = time.perf_counter()
            valid = run_eval(valid_users, valid_pos)
            record.update({f"valid_{k}": v for k, v in valid.items() if "@" in k})
            record["eval_time_s"] = time.perf_counter() - t_eval
            msg += f"  valid {_format_metrics(valid)}  ({record['eval_time_s']:.1f}s)"
            if valid[metric] > st["best"]:
                st["best"], st["best_epoch"], st["bad_evals"], st["plateau_evals"] = valid[metric], epoch, 0, 0
                checkpoint("best.pt")
                msg += " *"
            else:
                st["bad_evals"] += 1
                st["plateau_evals"] += 1
                patience = cfg.get("lr_plateau_patience", 0)
                if patience and st["plateau_evals"] >= patience:
                    st["lr_scale"] *= cfg["lr_plateau_factor"]
                    st["plateau_evals"] = 0
                    # at once, not from the next scheduler step (LambdaLR's own rule, per group)
                    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                        group["lr"] = base * factor(scheduler.last_epoch)
                    msg += f"  lr x{cfg['lr_plateau_factor']:g} (plateau)"
            early_stop = bool(cfg["patience"]) and st["bad_evals"] >= cfg["patience"]
        log(msg)
        tracker.log(**record)
        # the epoch is complete: the next checkpoint starts the next epoch from its beginning
        st["epoch"], st["batch_in_epoch"] = epoch + 1, 0
        st["early_stopped"] = early_stop
        st["rng_now"] = rng.bit_generator.state
        st["train_time_s"] = time.perf_counter() - t_start
        checkpoint("last.pt")
        if early_stop:
            log(f"early stop: no {metric} improvement in {st['bad_evals']} evaluations")
            break
        if stop:
            break

    train_time = time.perf_counter() - t_start
    if world > 1:
        dist.barrier()
    if not (run_dir / "best.pt").exists():
        raise ValueError("no checkpoint was selected (the run ended before its first evaluation)")
    ckpt = load_checkpoint_file(run_dir / "best.pt", map_location=device)
    model.load_state_dict(ckpt["model"])
    result = {"protocol_full": "full ranking over all items"
              + (", user's history items excluded" if cfg["exclude_history"] else ""),
              "split": split.name, "valid_full": run_eval(valid_users, valid_pos),
              "test_full": run_eval(test_users, test_pos)}
    if cfg["eval_negatives"]:
        result["protocol_sampled"] = f"{cfg['eval_negatives']} uniform negatives not in the user's history"
        result["test_sampled"] = run_eval(test_users, test_pos, "sampled", n_negatives=cfg["eval_negatives"], seed=cfg["seed"])
    result.update(best_epoch=st["best_epoch"], epochs_run=st["epoch"] - 1, steps=st["step"], train_time_s=train_time,
                  model=cfg["model"], mhc=bool(cfg.get("mhc")), dataset=ds.name, device=str(device), world_size=world)
    tracker.log(kind="test", **result)
    tracker.close()
    if is_main:
        with atomic_path(run_dir / "test_metrics.json") as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n")
        from ..track.report import write_report

        report = write_report(run_dir)
    log(report_lines(result))
    if is_main:
        log(f"report: {report}")
    return result


def report_lines(result: dict) -> str:
    rows = [f"best epoch {result.get('best_epoch')} (selected on validation)"]
    for key in ("valid_full", "test_full", "test_sampled"):
        if key in result:
            m = result[key]
            rows.append(f"{key:13s} HR@10 {m['hr@10']:.4f}  NDCG@10 {m['ndcg@10']:.4f}  "
                        f"MRR@10 {m['mrr@10']:.4f}  HR@20 {m['hr@20']:.4f}  (users {m.get('n_users')})")
    return "\n".join(rows)
