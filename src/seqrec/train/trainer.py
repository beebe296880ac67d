"""The training loop: one flat recipe for every registered model.

The trainer knows models only through the registry and the common interface
(:class:`seqrec.models.base.SequentialRecommender`): ``forward(batch) -> hidden``,
``score_items``, ``score_all``, ``predict``. Model selection uses the validation split only;
the test split is evaluated once at the end with the best checkpoint.

The run folder's layout is :mod:`seqrec.runs.folder`'s; the model, its batcher and the
training step come from :func:`seqrec.assemble.assemble` and :class:`seqrec.train.step.TrainStep`,
which the pre-flight check uses too.

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

import math
import os
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..assemble import assemble
from ..config import KS, RunConfig, apply_profile, validate_config
from ..eval.evaluate import evaluate
from ..runs.folder import BEST, LAST, RunClaim, RunFolder
from ..track.sinks import Tracker, truncate_log
from ..utils.checkpoint import load_checkpoint_file, save_checkpoint_file
from ..utils.device import pick_device
from ..utils.io import remove_stale_temps
from .step import TrainStep, lr_lambda

STABILITY_FIXES = (
    "lower the learning rate (e.g. --lr 0.0005), keep gradient clipping on (--grad_clip 1.0), "
    "use --amp off when training with mixed precision, check the data for extreme values"
)


class TrainingStopped(RuntimeError):
    """Raised when the stability guard stops a run (a checkpoint has been written)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def _finished(st: dict, cfg: RunConfig) -> bool:
    """Nothing left to train: early-stopped, or out of epochs or steps (a resume with a larger
    ``num_epochs`` / ``max_steps``, possible through the API, continues)."""
    t = cfg.train
    return bool(st["early_stopped"]) or st["epoch"] > t.num_epochs or bool(t.max_steps and st["step"] >= t.max_steps)


def check_sampled_negatives(batcher, users: np.ndarray, target_pos: np.ndarray, n_items: int,
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


def train(cfg: RunConfig, log=print, resume: bool = False, overwrite: bool = False, *,
          on_eval: Callable[[int, float], bool] | None = None, test: bool = True, preflight: bool = True) -> dict:
    """Train ``cfg``'s model on its dataset; returns the final test metrics.

    ``resume=True`` continues from ``train_dir/last.pt`` with the saved configuration.
    ``train_dir`` is claimed for the session (:class:`~seqrec.runs.folder.RunClaim`): locked,
    and a folder that already holds a run is refused unless ``resume`` or ``overwrite``.
    The production profile runs the pre-flight check first and stops on a failed check.

    ``on_eval(epoch, value)`` is called after every validation with the selection metric's
    value; returning True stops the run there (a tuner's pruner): the result is then
    ``{"pruned": True, ...}`` and no final evaluation is made. ``test=False`` never reads the
    test split (model selection in a study); the final evaluation is on validation only.
    A split without validation users (``loo_refit``) trains ``num_epochs`` and tests the last
    epoch's weights. ``preflight=False`` skips the production profile's pre-flight check (a
    caller that has just run it). ``train.max_hours`` stops the session with ``last.pt`` and
    :class:`TrainingStopped` once that much time has passed; ``resume`` continues.
    """
    log = log or (lambda *a, **k: None)
    cfg = apply_profile(cfg)
    validate_config(cfg)
    rank = dist_info()[0]
    anomaly = torch.is_anomaly_enabled()
    with RunClaim(cfg.train.train_dir, resume=resume, overwrite=overwrite, log=log, enabled=rank == 0) as claim:
        if cfg.train.profile == "production" and not resume and rank == 0 and preflight:
            _preflight_or_stop(cfg, log)
        try:
            if cfg.train.profile == "debug":  # for this run only: the caller's setting comes back
                torch.autograd.set_detect_anomaly(True)
            return _train(cfg, log, resume, claim, on_eval, test)
        finally:
            torch.autograd.set_detect_anomaly(anomaly)


def _preflight_or_stop(cfg: RunConfig, log) -> None:
    from .verify import format_checks, preflight

    checks = preflight(cfg, log=None)
    failed = [c for c in checks if not c.ok]
    if log:
        log(format_checks(checks))
    if failed:
        raise ValueError(f"--production: the pre-flight check failed ({', '.join(c.name for c in failed)}); "
                         "nothing was trained. Fix it, or run without --production")


def _train(cfg: RunConfig, log, resume: bool, claim: RunClaim, on_eval=None, test: bool = True) -> dict:
    rank, world, local_rank = dist_info()
    T, E = cfg.train, cfg.eval
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if T.device != "cpu" and torch.cuda.is_available() else "gloo")
    is_main = rank == 0
    if not is_main:
        log = lambda *a, **k: None  # noqa: E731
    if T.num_threads:
        torch.set_num_threads(T.num_threads)
    seed_everything(T.seed)
    device = pick_device(T.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    run = RunFolder(T.train_dir)
    run_dir = run.path
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)

    parts = assemble(cfg, log=log)
    ds, split, batcher = parts.dataset, parts.split, parts.batcher
    train_users = batcher.train_users()
    valid_users, valid_pos, test_users, test_pos = split.valid_users, split.valid_pos, split.test_users, split.test_pos
    if T.debug_users:
        pick = np.random.default_rng(T.seed).permutation(ds.n_users)[: T.debug_users] + 1
        train_users = np.intersect1d(train_users, pick)
        vk, tk = np.isin(valid_users, pick), np.isin(test_users, pick)
        valid_users, valid_pos, test_users, test_pos = valid_users[vk], valid_pos[vk], test_users[tk], test_pos[tk]
    check_sampled_negatives(batcher, test_users, test_pos, ds.n_items, E.negatives)
    shard = slice(rank, None, world)  # this rank's evaluation users
    step_fn = TrainStep(cfg, parts, device, log=log)
    model, optimizer, scaler = step_fn.model, step_fn.optimizer, step_fn.scaler
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{cfg.describe_model()} on {ds.name}: {ds.n_users:,} users, "
        f"{ds.n_items:,} items, {len(ds):,} interactions; {len(train_users):,} training sequences, "
        f"{split.name} split, {len(valid_users):,} / {len(test_users):,} validation / test users; "
        f"{n_params:,} parameters; device {device}"
        + (f" x {world} processes" if world > 1 else "") + (f" [{T.profile} profile]" if T.profile else ""))

    steps_per_epoch = math.ceil(len(train_users) / T.batch_size)
    ddp = (torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
           if world > 1 else None)
    forward = ddp if ddp is not None else model
    rng = np.random.default_rng(T.seed)

    # -- state (restored on resume) ----------------------------------------------------------
    st = {"epoch": 1, "batch_in_epoch": 0, "step": 0, "best": -1.0, "best_epoch": 0, "bad_evals": 0,
          "lr_scale": 1.0, "plateau_evals": 0, "early_stopped": False,
          "bad_steps": 0, "epoch_loss": 0.0, "epoch_seq": 0, "rng_epoch_start": rng.bit_generator.state,
          "rng_now": rng.bit_generator.state, "log_offset": 0, "train_time_s": 0.0}
    # the step schedule times st["lr_scale"], which plateau decays lower (restored on resume)
    schedule = lr_lambda(T.warmup_steps, steps_per_epoch, T.lr_decay_step, T.lr_decay_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step) * st["lr_scale"])
    if resume:
        ckpt = load_checkpoint_file(run / LAST, map_location=device)
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
            truncate_log(run / "metrics.jsonl", st["log_offset"])
            remove_stale_temps(run_dir)  # a kill during a checkpoint write leaves its temp file
        rng.bit_generator.state = st["rng_now"]
        if _finished(st, cfg):  # early-stopped or out of epochs/steps: only the final evaluation is redone
            log(f"{run_dir} had finished training ({st['epoch'] - 1} epochs, best epoch {st['best_epoch']}); "
                "evaluating its best checkpoint")
        else:
            log(f"resumed from {run / LAST}: epoch {st['epoch']}, {st['batch_in_epoch']} batches into it, "
                f"step {st['step']}")
    elif is_main:
        (run / "metrics.jsonl").unlink(missing_ok=True)
        run.write_config(cfg)
        claim.config_written()
    if resume and st["bad_steps"] >= T.max_bad_steps:  # stopped by the guard: --resume grants a new budget
        log(f"the previous session stopped after {st['bad_steps']} skipped steps; the count starts again")
        st["bad_steps"] = 0
    if world > 1 and rank > 0:
        # model and data order are shared (DDP broadcasts rank 0's weights; `rng` is seeded alike),
        # but each rank's dropout masks must differ, as the rows of one big batch would
        torch.manual_seed(hash((T.seed, rank, st["step"])) % 2**63)
    online = T.profile == "production" and bool(os.environ.get("WANDB_API_KEY"))
    tracker = Tracker(run / "metrics.jsonl", cfg.to_dict(), wandb=cfg.track.wandb or online, wandb_online=online,
                      tensorboard=cfg.track.tensorboard, enabled=is_main, resume_step=st["step"] if resume else None)
    metric = E.metric
    progress = bool(cfg.track.progress) and is_main
    eval_kw = dict(device=device, ks=KS, batch_size=E.batch_size, exclude_history=E.exclude_history,
                   autocast=step_fn.autocast, progress=progress)
    last_save = time.monotonic()

    def checkpoint(name: str) -> None:
        nonlocal last_save
        if is_main:
            st["log_offset"] = tracker.offset()
            save_checkpoint(run / name, model, optimizer, scheduler, scaler, st)
            if name == LAST:
                last_save = time.monotonic()

    def run_eval(users, pos, protocol="full", **kw):
        m = evaluate(model, batcher, users[shard], pos[shard], protocol=protocol, **eval_kw, **kw)
        return _reduce_metrics(m, device if device.type == "cuda" else torch.device("cpu"))

    t_start = time.perf_counter() - st["train_time_s"]
    session_start = time.monotonic()
    stop = pruned = False
    validates = len(valid_users) > 0  # loo_refit: no validation, the last epoch is kept
    for epoch in range(st["epoch"], T.num_epochs + 1 if not _finished(st, cfg) else 0):
        st["epoch"] = epoch
        if st["batch_in_epoch"] == 0:
            st["rng_epoch_start"] = rng.bit_generator.state
            st["epoch_loss"], st["epoch_seq"] = 0.0, 0
        rng.bit_generator.state = st["rng_epoch_start"]
        batches = batcher.epoch_batches(train_users, T.batch_size, rng, bucket=T.length_bucketing)
        if st["batch_in_epoch"]:
            rng.bit_generator.state = st["rng_now"]  # mid-epoch resume: negatives continue exactly
        model.train()
        t_epoch = time.perf_counter()
        seq_this_session = 0
        bar = tqdm(desc=f"epoch {epoch}", leave=False, disable=not progress,
                   unit="batch", initial=st["batch_in_epoch"], total=len(batches))
        for users in batches[st["batch_in_epoch"]:]:
            global_batch = step_fn.batch(users, rng)
            if world > 1:  # this rank's users; loss rescaled to the global batch's mean
                batch, loss_scale = shard_batch(global_batch, rank, world)
            else:
                batch, loss_scale = global_batch, 1.0
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            lv_t, gnorm = step_fn.forward_backward(batch, forward, loss_scale if world > 1 else 1.0)
            lv_t = lv_t.float()
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
                                            or gnorm > T.max_grad_norm)
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
                       f"above {T.max_grad_norm:g} or not finite; largest in {layer} ({lnorm:.4g}); step skipped "
                       f"({st['bad_steps']}/{T.max_bad_steps})")
                log(msg)
                tracker.log(kind="event", event="gradient_explosion", epoch=epoch, step=st["step"], loss=lv,
                            grad_norm=gnorm, layer=layer, layer_grad_norm=lnorm)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.update()
                if st["bad_steps"] >= T.max_bad_steps:
                    st["rng_now"] = rng.bit_generator.state
                    checkpoint(LAST)
                    reason = (f"stopped after {st['bad_steps']} skipped steps with exploding or non-finite "
                              f"gradients (last in {layer}). Suggested fixes: {STABILITY_FIXES}. The state is in "
                              f"{run / LAST}; change the settings and start again, or --resume it as "
                              f"it is (the count of skipped steps then starts again).")
                    tracker.log(kind="event", event="stopped", step=st["step"], reason=reason)
                    tracker.close()
                    raise TrainingStopped(reason)
                continue
            step_fn.apply()
            scheduler.step()
            st["epoch_loss"] += lv * len(users)
            st["epoch_seq"] += len(users)
            seq_this_session += len(users)
            if progress:
                rate = seq_this_session / max(time.perf_counter() - t_epoch, 1e-9)
                bar.set_postfix(loss=f"{lv:.4f}", seq_s=f"{rate:.0f}", refresh=False)
                bar.update(1)
            if cfg.track.log_every and st["step"] % cfg.track.log_every == 0:
                tracker.log(kind="step", epoch=epoch, step=st["step"], loss=lv, grad_norm=gnorm,
                            lr=scheduler.get_last_lr()[0])
            due = (T.checkpoint_every and st["step"] % T.checkpoint_every == 0) or (
                T.checkpoint_minutes and time.monotonic() - last_save >= 60 * T.checkpoint_minutes)
            if due:
                st["rng_now"] = rng.bit_generator.state
                st["train_time_s"] = time.perf_counter() - t_start
                checkpoint(LAST)
            if T.max_steps and st["step"] >= T.max_steps:
                stop = True
                break
            if T.max_hours and time.monotonic() - session_start >= 3600 * T.max_hours:
                st["rng_now"] = rng.bit_generator.state
                st["train_time_s"] = time.perf_counter() - t_start
                checkpoint(LAST)
                reason = (f"the time budget of --max_hours {T.max_hours:g} was reached at step {st['step']} (epoch "
                          f"{epoch}); {run / LAST} holds the state: run with --resume {run_dir} to continue")
                tracker.log(kind="event", event="time_budget", step=st["step"], reason=reason)
                tracker.close()
                raise TrainingStopped(reason)
        bar.close()
        dt = time.perf_counter() - t_epoch
        record = {"kind": "epoch", "epoch": epoch, "step": st["step"],
                  "train_loss": st["epoch_loss"] / max(1, st["epoch_seq"]), "epoch_time_s": dt,
                  "seq_per_s": seq_this_session / max(dt, 1e-9), "lr": scheduler.get_last_lr()[0]}
        msg = f"epoch {epoch:3d}  loss {record['train_loss']:.4f}  {record['seq_per_s']:.0f} seq/s"
        early_stop = False
        if not validates:
            st["best_epoch"] = epoch
            checkpoint(BEST)
        elif epoch % E.every == 0 or stop or epoch == T.num_epochs:
            t_eval = time.perf_counter()
            valid = run_eval(valid_users, valid_pos)
            record.update({f"valid_{k}": v for k, v in valid.items() if "@" in k})
            record["eval_time_s"] = time.perf_counter() - t_eval
            msg += f"  valid {_format_metrics(valid)}  ({record['eval_time_s']:.1f}s)"
            if valid[metric] > st["best"]:
                st["best"], st["best_epoch"], st["bad_evals"], st["plateau_evals"] = valid[metric], epoch, 0, 0
                checkpoint(BEST)
                msg += " *"
            else:
                st["bad_evals"] += 1
                st["plateau_evals"] += 1
                if T.lr_plateau_patience and st["plateau_evals"] >= T.lr_plateau_patience:
                    st["lr_scale"] *= T.lr_plateau_factor
                    st["plateau_evals"] = 0
                    # at once, not from the next scheduler step (LambdaLR's own rule, per group)
                    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                        group["lr"] = base * factor(scheduler.last_epoch)
                    msg += f"  lr x{T.lr_plateau_factor:g} (plateau)"
            early_stop = bool(T.patience) and st["bad_evals"] >= T.patience
            if on_eval is not None and on_eval(epoch, float(valid[metric])):
                pruned = early_stop = True
                msg += "  (pruned)"
        log(msg)
        tracker.log(**record)
        # the epoch is complete: the next checkpoint starts the next epoch from its beginning
        st["epoch"], st["batch_in_epoch"] = epoch + 1, 0
        st["early_stopped"] = early_stop
        st["rng_now"] = rng.bit_generator.state
        st["train_time_s"] = time.perf_counter() - t_start
        checkpoint(LAST)
        if pruned:
            break
        if early_stop:
            log(f"early stop: no {metric} improvement in {st['bad_evals']} evaluations")
            break
        if stop:
            break

    train_time = time.perf_counter() - t_start
    if world > 1:
        dist.barrier()
    if pruned:
        summary = {"pruned": True, "best_epoch": st["best_epoch"], "epochs_run": st["epoch"] - 1, "steps": st["step"],
                   "valid_best": st["best"], "train_time_s": train_time}
        tracker.log(kind="event", event="pruned", **summary)
        tracker.close()
        return summary
    if not (run / BEST).exists():
        raise ValueError("no checkpoint was selected (the run ended before its first evaluation)")
    ckpt = load_checkpoint_file(run / BEST, map_location=device)
    model.load_state_dict(ckpt["model"])
    result = {"protocol_full": "full ranking over all items"
              + (", user's history items excluded" if E.exclude_history else ""), "split": split.name}
    if validates:
        result["valid_full"] = run_eval(valid_users, valid_pos)
    if test:
        result["test_full"] = run_eval(test_users, test_pos)
    else:
        result["test"] = "not evaluated (model selection: the test split is read once, for the chosen run)"
    if E.negatives and test:
        result["protocol_sampled"] = f"{E.negatives} uniform negatives not in the user's history"
        result["test_sampled"] = run_eval(test_users, test_pos, "sampled", n_negatives=E.negatives, seed=T.seed)
    result.update(best_epoch=st["best_epoch"], epochs_run=st["epoch"] - 1, steps=st["step"], train_time_s=train_time,
                  model=cfg.model_name, model_description=cfg.describe_model(), dataset=ds.name, device=str(device), world_size=world)
    tracker.log(kind="test", **result)
    tracker.close()
    if is_main:
        run.write_test_metrics(result)
        from ..track.report import write_report

        report = write_report(run_dir)
    log(report_lines(result))
    if is_main:
        log(f"report: {report}")
    return result


def report_lines(result: dict) -> str:
    if "valid_full" in result:
        rows = [f"best epoch {result.get('best_epoch')} (selected on validation)"]
    else:  # a refit: no validation users, the last epoch is tested
        rows = [f"last epoch {result.get('best_epoch')} tested ({result.get('split')}: no validation)"]
    for key in ("valid_full", "test_full", "test_sampled"):  # what the run evaluated
        if key in result:
            m = result[key]
            rows.append(f"{key:13s} HR@10 {m['hr@10']:.4f}  NDCG@10 {m['ndcg@10']:.4f}  "
                        f"MRR@10 {m['mrr@10']:.4f}  HR@20 {m['hr@20']:.4f}  (users {m.get('n_users')})")
    return "\n".join(rows)
