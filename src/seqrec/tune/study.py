"""``seqrec tune``: hyper-parameter studies on Optuna, with honest model selection.

Layout of a study folder ``DIR``::

    study.db            the Optuna study (SQLite; --storage: any SQLAlchemy URL or a journal file)
    trials/NAME-NNNN/   one real run folder per trial (config, metrics, report, checkpoints)
    study.md            trials table, best configuration, test result, plots
    best.yaml           the best configuration: `seqrec train --config DIR/best.yaml` runs it as is
    best_test.json      the best trial's best checkpoint evaluated on test, once
    refit/              with --refit: the best configuration retrained on train + validation

Selection uses validation only: trials train with ``test=False`` (the test split is never read
while searching); the pruner sees the validation metric after every evaluation. Killed and run
again, a study continues: finished trials are kept, a trial whose run folder is no longer
locked by a live process is marked failed and its parameters are run again. Several
``seqrec tune`` processes on one storage share the study (Optuna's own distribution).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig, config_from_dict, resolve_config, save_config
from ..runs.folder import RunFolder
from ..utils.io import FolderInUseError, FolderLock, write_json
from .space import SearchSpace, load_space

SPACE_DIR = Path(__file__).resolve().parent / "spaces"
PRUNERS = ("median", "hyperband", "none")
SAMPLERS = ("tpe", "random", "grid")


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ValueError("seqrec tune needs Optuna: pip install 'seqrec[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


PRUNE_AFTER = 10  # epochs before a pruner may stop a trial: SASRec on ML-100K scores noise (0.002-0.007
# validation NDCG@10) for its first epochs, and a median pruner at epoch 2 stopped a configuration
# identical to its phase's best (experiments/tune_ml100k/, docs/results.md)


@dataclass
class TuneOptions:
    study_dir: Path
    trials: int = 20
    storage: str | None = None
    pruner: str = "median"
    prune_after: int = PRUNE_AFTER
    sampler: str = "tpe"
    timeout: float | None = None
    seed: int = 0
    metric: str | None = None
    refit: bool = False
    progress: bool = True
    study_name: str = "seqrec"
    start_trials: bool = True  # False: only report (the --n_jobs workers ran the trials, up to --timeout)


def space_path(name_or_path: str) -> Path:
    """A space file, or the name of a shipped one (``capacity`` -> ``seqrec/tune/spaces/capacity.yaml``)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    shipped = SPACE_DIR / f"{name_or_path}.yaml"
    if not shipped.exists():
        names = ", ".join(sorted(q.stem for q in SPACE_DIR.glob("*.yaml")))
        raise ValueError(f"unknown search space {name_or_path!r}: give a YAML file or one of {names}")
    return shipped


def storage_for(opts: TuneOptions):
    """Optuna storage: SQLite in the study folder by default; an SQLAlchemy URL; or a journal
    file (``journal:PATH`` or a path ending in .log / .journal)."""
    optuna = _optuna()
    url = opts.storage or f"sqlite:///{(opts.study_dir / 'study.db').resolve()}"
    if url.startswith("journal:") or url.endswith((".log", ".journal")):
        from optuna.storages.journal import JournalFileBackend

        path = url[len("journal:"):] if url.startswith("journal:") else url
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    kw = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    # a worker on another machine that dies stops its heartbeat: its trial is failed and retried
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the heartbeat is marked experimental
        return optuna.storages.RDBStorage(
            url, engine_kwargs=kw, heartbeat_interval=60, grace_period=300,
            heartbeat_stale_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=2))


def _pruner(name: str, prune_after: int = PRUNE_AFTER):
    """Optuna's pruner; none stops a trial before it has trained ``prune_after`` epochs."""
    optuna = _optuna()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=prune_after)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, prune_after))
    return optuna.pruners.NopPruner()


def _sampler(name: str, space: SearchSpace, seed: int, resumed_at: int = 0):
    """The sampler of a process that joins a study holding ``resumed_at`` trials. Seeded by
    ``seed`` alone, a resumed (or late) process would draw the same random start-up trials
    as the process that began the study: its first ones would repeat finished trials."""
    optuna = _optuna()
    if resumed_at:
        import numpy as np

        seed = int(np.random.SeedSequence([seed, resumed_at]).generate_state(1)[0])
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _trial_lock(trials_dir: Path, name: str) -> Path:
    return trials_dir / f".{name}.lock"


def _release_dead_trials(study, log, started_grace_s: float = 120.0) -> None:
    """RUNNING trials that no live process holds were killed: fail them and queue their
    parameters again (the same command continues the study). A trial holds its lock file
    (user attribute ``lock``) for its whole run; one killed before taking it is recognised by
    its age."""
    import datetime as dt

    from optuna.trial import TrialState

    now = dt.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        lock = t.user_attrs.get("lock")
        if lock is None:
            if t.datetime_start is None or (now - t.datetime_start).total_seconds() < started_grace_s:
                continue  # just starting, in some worker
        else:
            try:
                FolderLock(Path(lock), "trial").acquire().release()
            except FolderInUseError:
                continue  # a live worker trains it
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        if log:
            log(f"trial {t.number} was interrupted (its worker is gone): marked failed, its parameters queued again")


def _objective(base: RunConfig, space: SearchSpace, trials_dir: Path, metric: str, prefix: str):
    optuna = _optuna()
    from ..train.trainer import train

    def objective(trial) -> float:
        params = space.suggest(trial)
        run_dir = trials_dir / f"{prefix}-{trial.number:04d}"
        lock = FolderLock(_trial_lock(trials_dir, run_dir.name), f"trial {trial.number}").acquire()
        try:
            trial.set_user_attr("lock", str(lock.path))  # held until the trial ends: others see it alive
            trial.set_user_attr("train_dir", str(run_dir))
            trial.set_user_attr("worker_pid", os.getpid())
            return run(trial, params, run_dir)
        finally:
            lock.release()

    def run(trial, params, run_dir) -> float:
        cfg = resolve_config(params, base)
        cfg = cfg.replace(train={"train_dir": str(run_dir), "profile": None}, track={"progress": False},
                          eval={"metric": metric})
        t0 = time.perf_counter()

        def on_eval(epoch: int, value: float) -> bool:
            trial.report(value, epoch)
            return trial.should_prune()

        result = train(cfg, log=None, on_eval=on_eval, test=False, overwrite=True)
        trial.set_user_attr("best_epoch", result.get("best_epoch"))
        trial.set_user_attr("epochs_run", result.get("epochs_run"))
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        if result.get("pruned"):
            raise optuna.TrialPruned()
        return float(result["valid_full"][metric])

    return objective


def run_phase(base: RunConfig, space: SearchSpace, opts: TuneOptions, name: str, log=print):
    """One study: trials until ``opts.trials`` are finished (this and any other worker)."""
    optuna = _optuna()
    metric = opts.metric or space.metric or base.eval.metric
    storage = storage_for(opts)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=_sampler(opts.sampler, space, opts.seed),
                                pruner=_pruner(opts.pruner, opts.prune_after))
    old_metric = study.user_attrs.get("metric")
    if old_metric is not None and old_metric != metric:
        raise ValueError(f"study {name!r} in {opts.study_dir} maximises {old_metric}, not {metric}: use another "
                         "--study_dir, or the same metric")
    study.set_user_attr("metric", metric)
    start = _settings(base)
    if not _same_start(study.user_attrs.get("base"), start):
        raise ValueError(f"study {name!r} in {opts.study_dir} was started from another configuration (or an earlier "
                         "phase ended differently): continue it with the same command, or use another --study_dir")
    study.set_user_attr("base", start)
    study.set_user_attr("space", [p.name for p in space.params])
    _release_dead_trials(study, log)
    if study.trials:
        study.sampler = _sampler(opts.sampler, space, opts.seed, resumed_at=len(study.trials))
    trials_dir = opts.study_dir / "trials"
    trials_dir.mkdir(parents=True, exist_ok=True)
    left = opts.trials - _finished(study)
    if left > 0 and opts.start_trials:
        _optimize(study, _objective(base, space, trials_dir, metric, name), opts, left)
    _wait_for_other_workers(study, log)
    study = optuna.load_study(study_name=name, storage=storage)
    if not [t for t in study.trials if t.value is not None and t.state.name == "COMPLETE"]:
        raise ValueError(f"study {name!r} has no completed trial (all pruned or failed): see {trials_dir}")
    return study, metric


def _wait_for_other_workers(study, log, poll: float = 2.0) -> None:
    """Before the next phase (or the report), the trials other workers still run must end:
    every worker then starts the next phase from the same best configuration."""
    from optuna.trial import TrialState

    said = False
    while True:
        _release_dead_trials(study, log)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return
        if log and not said:
            log(f"waiting for {len(running)} trial(s) of other workers to finish")
            said = True
        time.sleep(poll)


def _optimize(study, objective, opts: TuneOptions, left: int) -> None:
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    bar = tqdm(total=opts.trials, initial=_finished(study), desc=study.study_name, unit="trial",
               disable=not opts.progress)

    def show(study, trial):
        bar.n = _finished(study)
        try:
            bar.set_postfix(best=f"{study.best_value:.4f}", refresh=False)
        except ValueError:
            pass
        bar.refresh()

    try:
        study.optimize(objective, n_trials=None, timeout=opts.timeout,
                       callbacks=[MaxTrialsCallback(opts.trials, states=(TrialState.COMPLETE, TrialState.PRUNED)),
                                  show], catch=())
    finally:
        bar.close()


def best_config(study, base: RunConfig) -> RunConfig:
    return resolve_config(study.best_trial.params, base)


def run_tune(base: RunConfig, spaces: list[str], opts: TuneOptions, log=print, worker: bool = False) -> dict:
    """Run the phases (one space each, each starting from the best configuration found so far:
    a phase whose trials all fall short of an earlier best leaves that best in place), then
    test the best trial over all phases once, write best.yaml and study.md; ``refit`` retrains it on train +
    validation. A ``worker`` only runs trials."""
    _check_phases(base, spaces, opts)
    opts.study_dir.mkdir(parents=True, exist_ok=True)
    studies = []
    cfg = base
    top = None  # (trial, study, its configuration): the best validation value over the phases so far
    for phase in spaces:
        space = load_space(space_path(phase), cfg)  # checked before any trial of this phase
        name = f"{opts.study_name}-{Path(phase).stem}" if len(spaces) > 1 else opts.study_name
        study, metric = run_phase(cfg, space, opts, name, log=log)
        studies.append((study, space, metric))
        if top is None or study.best_trial.value > top[0].value:  # a phase that found nothing better
            top = (study.best_trial, study, best_config(study, cfg))  # leaves the earlier best in place
        cfg = top[2]
    if worker:
        return {}
    best, study, _ = top
    metric = studies[-1][2]
    best_cfg = cfg.replace(train={"train_dir": str(opts.study_dir / "best"), "profile": None},
                           eval={"metric": metric})
    save_config(best_cfg, opts.study_dir / "best.yaml")
    summary = {"metric": metric, "best_trial": best.number, "best_study": study.study_name,
               "best_valid": best.value, "best_params": best.params, "best_epoch": best.user_attrs.get("best_epoch"),
               "best_run": best.user_attrs.get("train_dir"), "test": _test_once(best, opts, log)}
    if opts.refit:
        summary["refit"] = _refit(best_cfg, best, opts, log)
    write_json(opts.study_dir / "summary.json", summary)
    from .report import write_study_report

    write_study_report(opts.study_dir, [s for s, _, _ in studies], summary)
    return summary


def _check_phases(base: RunConfig, spaces: list[str], opts: TuneOptions) -> None:
    """Every phase's space file, checked before any trial runs: its settings, ranges and types,
    and one metric for all (the phases' best trials are compared with each other). What a
    space can sample is checked when its phase starts, from the configuration it starts from."""
    first = None  # (metric, where it was set)
    for phase in spaces:
        space = load_space(space_path(phase), base, combinations=False)
        metric = opts.metric or space.metric or base.eval.metric
        where = ("--tune_metric" if opts.metric else f"{space.path}, line {space.metric_line}" if space.metric
                 else f"the config's eval.metric ({space.path} sets none)")
        if first is None:
            first = (metric, where)
        elif metric != first[0]:
            raise ValueError(f"{where}: phase metric {metric} differs from {first[0]} ({first[1]}): every phase of a "
                             "study must maximise one metric (their best trials are compared)")


def _test_once(best, opts: TuneOptions, log) -> dict:
    """The best trial's best checkpoint on test, once (kept: a rerun does not evaluate again)."""
    from ..runs.load import evaluate_run

    path = opts.study_dir / "best_test.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("trial_run") == best.user_attrs.get("train_dir"):
            return saved
    out = evaluate_run(best.user_attrs["train_dir"], split="test", log=lambda *a: None)
    result = {"protocol": "full ranking, history excluded; trial selected on validation, its best checkpoint "
                          "tested once", "trial_run": best.user_attrs.get("train_dir"), **out}
    write_json(path, result)
    if log:
        log(f"best trial {best.number} on test: HR@10 {out['full']['hr@10']:.4f}  NDCG@10 {out['full']['ndcg@10']:.4f}")
    return result


def _settings(cfg: RunConfig) -> dict:
    """A configuration without where it runs (folder, threads, device)."""
    d = cfg.to_dict()
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("train_dir", "num_threads", "device")}
    return d


def _same_start(stored: dict | None, start: dict) -> bool:
    """Whether a study's stored starting configuration is ``start``. A setting the stored one
    lacks (added to seqrec since the study began) counts as equal when ``start`` has its default."""
    if stored is None:
        return True
    if stored == start:
        return True
    try:
        old = config_from_dict({k: dict(v) if isinstance(v, dict) else v for k, v in stored.items()})
    except Exception:  # not a configuration this version reads
        return False
    return _settings(old) == start


def _refit(best_cfg: RunConfig, best, opts: TuneOptions, log) -> dict:
    """The best configuration retrained on train + validation for the best trial's number of
    epochs, then tested (the eSASRec benchmark's protocol; reported apart)."""
    from ..train.trainer import train

    epochs = int(best.user_attrs.get("best_epoch") or best_cfg.train.num_epochs)
    if best_cfg.data.split != "loo":
        raise ValueError("--refit needs the leave-one-out split (train + validation, then the test item)")
    run_dir = opts.study_dir / "refit"
    folder = RunFolder(run_dir)
    cfg = best_cfg.replace(data={"split": "loo_refit"}, train={"train_dir": str(run_dir), "num_epochs": epochs,
                                                                "patience": 0, "lr_plateau_patience": 0},
                           track={"progress": False})
    if folder.test_metrics() and _settings(folder.config()) == _settings(cfg):  # this configuration's refit
        res = folder.test_metrics()
    else:
        res = train(cfg, log=None, overwrite=True)
    out = {"protocol": f"refit: trained on train + validation for {epochs} epochs (the best trial's best epoch), "
                       "then tested once; full ranking, history excluded", "epochs": epochs,
           "run": str(run_dir), "full": res["test_full"], "sampled": res.get("test_sampled")}
    if log:
        log(f"refit ({epochs} epochs on train + validation) on test: HR@10 {out['full']['hr@10']:.4f}  "
            f"NDCG@10 {out['full']['ndcg@10']:.4f}")
    return out


__all__ = ["PRUNERS", "SAMPLERS", "TuneOptions", "load_space", "run_tune", "space_path"]
