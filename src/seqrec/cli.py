"""The `seqrec` command: thin wiring from arguments to the library."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

from . import __version__


def _add_prepare(sub) -> None:
    from .data.datasets import SPECS

    p = sub.add_parser(
        "prepare",
        help="download/read, filter, remap and store a dataset",
        description="Prepare a dataset folder. Known names: " + ", ".join(SPECS)
        + ". Any other name needs --raw (a RecBole .inter, ratings.csv, ratings.dat, u.data, ...).",
    )
    p.add_argument("name", help="dataset name (e.g. ml-1m, ml-100k, ml-32m, beauty, or your own)")
    p.add_argument("--raw", help="local file or folder to read instead of downloading (never touches the network)")
    p.add_argument("--out", help="output folder (default: $SEQREC_HOME/datasets/NAME)")
    p.add_argument("--format", dest="fmt", help="reader for --raw: ml1m, ml100k, ml_csv, recbole, amazon, sasrec")
    p.add_argument("--url", help="download from this URL instead of GroupLens (mirrors, tests)")
    p.add_argument("--min_user", type=int, help="keep users with at least this many interactions")
    p.add_argument("--min_item", type=int, help="keep items with at least this many interactions")
    p.add_argument("--iterative", action=argparse.BooleanOptionalAction, default=None,
                   help="iterate the k-core filter until stable (default: the recipe's, single pass for SASRec)")
    p.add_argument("--min_rating", type=float, help="drop interactions rated below this")
    p.add_argument("--dedup", choices=("first", "last"),
                   help="keep one interaction per user and item: its first or last (default: keep repeats)")
    p.add_argument("--time_unit_in", choices=("s", "ms", "us"),
                   help="unit of the source's timestamps, converted to seconds (default: seconds; values that "
                        "can only be milliseconds are refused with this hint)")
    # synthetic: unset values take the generator's defaults, the ones `train --dataset synthetic` uses
    p.add_argument("--users", type=int, help="synthetic: number of users (default: 1000)")
    p.add_argument("--items", type=int, help="synthetic: number of items (default: 500)")
    p.add_argument("--seed", type=int, help="synthetic: seed (default: 0)")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> int:
    from .data.datasets import SPECS, Recipe, prepare_dataset, with_recipe_overrides

    spec = SPECS.get(args.name)
    recipe = with_recipe_overrides(
        spec.recipe if spec else Recipe(),
        min_user=args.min_user, min_item=args.min_item, iterative=args.iterative, min_rating=args.min_rating,
        dedup=args.dedup,
    )
    syn = {k: v for k, v in (("n_users", args.users), ("n_items", args.items), ("seed", args.seed)) if v is not None}
    ds = prepare_dataset(args.name, raw=args.raw, out=args.out, fmt=args.fmt, recipe=recipe, url=args.url,
                         synthetic_kwargs=syn, time_unit_in=args.time_unit_in)
    print(ds.summary())
    print(f"{ds.stats['users']} users / {ds.stats['items']} items / {ds.stats['interactions']} interactions")
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="statistics of a prepared dataset and its splits")
    p.add_argument("dataset", help="dataset name or folder")
    p.add_argument("--fraction", type=float, default=0.8, help="temporal split: fraction of interactions in the past")
    p.set_defaults(func=cmd_info)


def cmd_info(args) -> int:
    from .data.datasets import resolve_dataset

    ds = resolve_dataset(args.dataset, prepare_if_missing=False)
    print(ds.summary())
    loo = ds.leave_one_out()
    n_eval = len(loo.eval_users)
    print(f"leave-one-out: {n_eval:,} users evaluated ({ds.n_users - n_eval:,} too short, train only); "
          f"{int((loo.train_end - ds.offsets[1:-1]).sum()):,} training interactions")
    s = ds.temporal_split(args.fraction).stats
    print(f"temporal split ({s['fraction']:.0%} past): past {s['past_rows']:,} / future {s['future_rows']:,} rows; "
          f"future-only users {s['future_only_users']:,}, future-only items {s['future_only_items']:,} "
          f"({s['future_rows_of_future_only_items']:,} future rows)")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a prepared dataset in another format (RecBole atomic files)")
    p.add_argument("dataset", help="dataset name or folder")
    p.add_argument("--format", default="recbole", choices=["recbole"], help="output format")
    p.add_argument("--out", default="recbole_data", help="output folder (files go in OUT/NAME/)")
    p.add_argument("--name", help="file stem (default: the dataset name)")
    p.add_argument("--ids", default="mapped", choices=["mapped", "raw"], help="contiguous ids or the source's ids")
    p.add_argument("--fraction", type=float, default=0.8, help="past fraction of the temporal split files")
    p.add_argument("--no_temporal", action="store_true", help="do not write the _past/_future files")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from .data.datasets import resolve_dataset
    from .data.export import export_recbole

    ds = resolve_dataset(args.dataset, prepare_if_missing=False)
    export_recbole(ds, args.out, name=args.name, ids=args.ids,
                   temporal_fraction=None if args.no_temporal else args.fraction)
    return 0


RUN_COMMANDS = ("train", "verify", "tune", "pipeline")
RESUMABLE_OVERRIDES = ("num_threads", "progress", "device")
SECTION_TITLES = {"data": "data", "train": "training", "eval": "evaluation", "track": "tracking"}


def _add_run_stub(sub, name: str, help: str) -> None:
    # `train` and `verify` parse their own arguments (the model decides which options exist):
    # this entry only lists them in `seqrec --help`
    sub.add_parser(name, help=help, add_help=False)


def _bool(v: str) -> bool:
    from .utils.options import coerce

    try:
        return coerce(v, bool, "value")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _model_of(argv: list[str]) -> tuple[str, str | None]:
    """Phase 1: the model whose options the full parser lists, from --model, else the
    --config YAML's, else the seed's form (tisasrec; sasrec with --no_time)."""
    from .config import SEED_MODEL, SEED_MODEL_NO_TIME, _dict_names_model, config_from_dict
    from .models import get_model_class
    from .utils.io import read_yaml

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model")
    pre.add_argument("--config")
    pre.add_argument("--no_time", action="store_true")
    pre.add_argument("--resume")
    known, _ = pre.parse_known_args(argv)
    if known.model:
        return get_model_class(known.model).registry_name, known.config
    if known.config:
        data = read_yaml(known.config)
        if _dict_names_model(data):
            return config_from_dict(data, f"{known.config}: ").model_name, known.config
    return (SEED_MODEL_NO_TIME if known.no_time else SEED_MODEL), known.config


def run_parser(command: str, model_name: str) -> argparse.ArgumentParser:
    """The full parser of ``train`` / ``verify`` for ``model_name``: the seed's flags, then one
    group per config section, the model's own options included."""
    from .config import SEED_FLAGS, flag_table

    descriptions = {
        "train": "Train on the evaluation split, select the best epoch on validation, then evaluate the test set "
                 "once (full ranking and sampled negatives). Settings come from the sections of a --config YAML "
                 "(data, model, train, eval, track) and the flags below (the command line wins). "
                 f"`seqrec train --model NAME --help` lists NAME's own options; these are {model_name}'s.",
        "verify": "Check everything a long run needs before spending GPU time: dependencies and device (CUDA, AMP, "
                  "fused kernels), dataset presence and checksums, one forward/backward/optimizer step on a real "
                  "batch, peak memory per batch size against the device's memory, disk space for checkpoints. "
                  "Exits 1 when any check fails. Takes the same settings as `seqrec train`.",
        "pipeline": "The rented-GPU flow as one command: fetch -> prepare -> verify -> debug run -> production run -> "
                    "report, everything under --out (DIR/pipeline.json records the stages: the same command after a "
                    "kill or preemption skips what is done and resumes the production run exactly). --debug stops "
                    "after the debug run. The run settings are those of `seqrec train`.",
        "tune": "A hyper-parameter study on Optuna: every trial is a run folder under --study_dir/trials, trained "
                "with the settings of the base config (--config and the flags below, as for `seqrec train`) and "
                "the values the sampler draws from --space (or each of --phases in turn, each starting from the best "
                "of the one before). Selection uses validation only; the best trial's best checkpoint is tested "
                "once. The study lives in --study_dir/study.db: the same command continues it after a kill, and "
                "several processes on one --storage share it.",
    }
    p = argparse.ArgumentParser(prog=f"seqrec {command}", description=descriptions[command])
    p.add_argument("--config", help="YAML file with the sections data, model, train, eval, track (a flat file of "
                   "the earlier layout is read too); the command line wins")
    p.add_argument("--model", help=SEED_FLAGS["model"])
    p.add_argument("--no_time", action="store_true", default=None, help=SEED_FLAGS["no_time"])
    p.add_argument("--no_mhc", action="store_true", default=None, help=SEED_FLAGS["no_mhc"])
    prof = p.add_mutually_exclusive_group()
    prof.add_argument("--debug", action="store_true", help="debug profile: 512 random users, at most 2 epochs, "
                      "autograd anomaly detection (src/seqrec/profiles/debug.yaml)")
    prof.add_argument("--production", action="store_true", help="production profile: the pre-flight check first "
                      "(a failed check stops the run), last.pt every --checkpoint_minutes (10), W&B online when "
                      "WANDB_API_KEY is set (src/seqrec/profiles/production.yaml)")
    if command == "tune":
        _add_tune_arguments(p)
    if command == "pipeline":
        g = p.add_argument_group("pipeline")
        g.add_argument("--out", required=True, help="the pipeline's folder (a mounted volume on a rented box)")
        g.add_argument("--data", help="a local ratings file or folder, or an http(s)/file URL of a raw file or of a zip "
                       "of a prepared dataset folder (default: the dataset's own download)")
        g.add_argument("--restart", action="store_true", help="start over when the configuration changed")
        g.add_argument("--price_per_hour", type=float, help="show the estimated cost of the production run")
    if command == "train":
        p.add_argument("--resume", metavar="DIR", help="continue a stopped or killed run from DIR/last.pt with its "
                       "saved config (only --num_threads, --progress and --device may be changed)")
        p.add_argument("--overwrite", action="store_true", help="replace the run already in --train_dir (deleted "
                       "once the new run's config is written; without it such a folder is refused)")
    groups = {s: p.add_argument_group(t) for s, t in SECTION_TITLES.items()}
    groups["model"] = p.add_argument_group(f"model ({model_name})")
    for name, (section, fl) in flag_table(model_name).items():
        if name == "profile":
            continue
        kw = {"default": argparse.SUPPRESS, "help": f"{fl.help} (default: {fl.default})".replace("%", "%%")}
        if fl.is_switch:
            groups[section].add_argument(f"--{name}", action="store_true", **kw)
            continue
        if fl.type is bool:
            kw.update(type=_bool, nargs="?", const=True, metavar="BOOL")
        else:
            kw["type"] = fl.type
        if fl.choices:
            kw["choices"] = fl.choices
        groups[section].add_argument(f"--{name}", **kw)
    return p


def _parse_run_args(command: str, argv: list[str]) -> tuple[argparse.Namespace, dict]:
    """(namespace, the given config flags) of a ``train`` / ``verify`` command line."""
    from .config import all_flag_names, flag_table

    model_name, _ = _model_of(argv)
    parser = run_parser(command, model_name)
    args, extra = parser.parse_known_args(argv)
    if extra:
        import difflib

        bad = next((x for x in extra if x.startswith("-")), extra[0])
        flag = bad.split("=")[0].lstrip("-")
        table = flag_table(model_name)
        if flag in all_flag_names() and flag not in table:
            raise ValueError(f"--{flag} is not an option of {model_name} (`seqrec {command} --model {model_name} "
                             "--help` lists its options)")
        close = difflib.get_close_matches(flag, sorted(set(table) | {"config", "model", "resume", "overwrite"}), n=1)
        hint = f" (did you mean --{close[0]}?)" if close else ""
        raise ValueError(f"unrecognised argument {bad!r}{hint}")
    skip = {"config", "debug", "production", "resume", "overwrite", "out", "data", "restart", "price_per_hour",
            *TUNE_ARGS}
    flags = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    if args.debug or args.production:
        flags["profile"] = "debug" if args.debug else "production"
    return args, flags


def cmd_train(argv: list[str]) -> int:
    from .config import resolve_config
    from .runs.folder import RunFolder
    from .train.trainer import TrainingStopped, train

    args, flags = _parse_run_args("train", argv)
    log = functools.partial(print, flush=True)
    if args.resume:
        extra = set(flags) - set(RESUMABLE_OVERRIDES)
        if extra or args.config:
            names = sorted(extra | ({"config"} if args.config else set()))
            raise ValueError(f"--resume uses the run's saved config; these cannot be changed: "
                             f"{', '.join('--' + k for k in names)}")
        folder = RunFolder(args.resume)
        if not (folder / "last.pt").exists() or not folder.is_run():
            raise FileNotFoundError(f"{folder.path} has no last.pt/config.yaml to resume from")
        cfg = folder.config()
        train_over = {k: flags[k] for k in ("num_threads", "device") if k in flags}
        cfg = cfg.replace(train={**train_over, "train_dir": str(folder.path)},
                          track={k: flags[k] for k in ("progress",) if k in flags})
    else:
        cfg = resolve_config(flags, args.config)
    try:
        train(cfg, log=log, resume=bool(args.resume), overwrite=bool(getattr(args, "overwrite", False)))
    except TrainingStopped as exc:
        print(f"seqrec train: {exc}", file=sys.stderr)
        return 3
    return 0


TUNE_ARGS = ("space", "phases", "trials", "study_dir", "storage", "pruner", "prune_after", "sampler", "timeout",
             "n_jobs", "refit", "worker", "study_name", "tune_seed", "tune_metric")


def _add_tune_arguments(p: argparse.ArgumentParser) -> None:
    from .tune.study import PRUNE_AFTER, PRUNERS, SAMPLERS

    g = p.add_argument_group("study")
    which = g.add_mutually_exclusive_group(required=True)
    which.add_argument("--space", help="search space YAML (settings by flag name: float/int/categorical), or the "
                       "name of a shipped one: capacity, lr, regularisation, mhc, time (configs/tune/)")
    which.add_argument("--phases", help="comma-separated spaces run in order, each phase starting from the best "
                       "configuration of the one before (the seed's guide: capacity,lr,regularisation)")
    g.add_argument("--trials", type=int, default=20, help="finished (complete or pruned) trials per phase, counted "
                   "over every worker of the study (default: 20)")
    g.add_argument("--study_dir", required=True, help="the study's folder (trials/, study.db, study.md, best.yaml)")
    g.add_argument("--storage", help="Optuna storage shared by workers: an SQLAlchemy URL (sqlite:///..., "
                   "postgresql://...) or a journal file (journal:PATH); default DIR/study.db")
    g.add_argument("--pruner", choices=PRUNERS, default="median", help="stop hopeless trials early (default: median)")
    g.add_argument("--prune_after", type=int, default=PRUNE_AFTER, help="epochs a trial trains before the pruner may "
                   f"stop it: early epochs' scores are noise (default: {PRUNE_AFTER})")
    g.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="default: tpe")
    g.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds (per phase; "
                   "with --n_jobs, per worker)")
    g.add_argument("--n_jobs", type=int, default=1, help="parallel trials on this machine: worker processes sharing "
                   "the storage, the CPU threads split between them (on GPU one per device)")
    g.add_argument("--refit", action="store_true", help="then retrain the best configuration on train + validation "
                   "for the best trial's number of epochs and test it (reported as a separate protocol)")
    g.add_argument("--study_name", default="seqrec", help="the study's name in the storage (default: seqrec)")
    g.add_argument("--tune_seed", type=int, default=0, help="the sampler's seed (default: 0)")
    g.add_argument("--tune_metric", help="validation metric to maximise (default: the space's metric:, else the "
                   "config's --metric)")
    g.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)


def cmd_tune(argv: list[str]) -> int:
    import os
    import subprocess

    from .config import resolve_config
    from .tune.study import TuneOptions, run_tune

    args, flags = _parse_run_args("tune", argv)
    if args.n_jobs < 1 or args.trials < 1 or args.prune_after < 0:
        raise ValueError("--n_jobs and --trials must be positive integers, --prune_after at least 0")
    base = resolve_config(flags, args.config)
    if args.tune_metric:
        from .config import check_metric

        check_metric(args.tune_metric, "--tune_metric")
    phases = [p.strip() for p in (args.phases or args.space).split(",") if p.strip()]
    opts = TuneOptions(study_dir=Path(args.study_dir), trials=args.trials, storage=args.storage, pruner=args.pruner,
                       prune_after=args.prune_after, sampler=args.sampler, timeout=args.timeout,
                       seed=args.tune_seed, metric=args.tune_metric, refit=args.refit,
                       progress=base.track.progress, study_name=args.study_name)
    log = functools.partial(print, flush=True)
    if args.n_jobs > 1 and not args.worker:
        threads = max(1, (os.cpu_count() or 1) // args.n_jobs)
        from .tune.study import storage_for

        opts.study_dir.mkdir(parents=True, exist_ok=True)
        storage_for(opts)  # the tables exist before the workers start (two creating one SQLite file collide)
        rest = [a for a in argv if a != "--refit"]
        procs = []
        import torch

        gpus = torch.cuda.device_count()
        for i in range(args.n_jobs):
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            if gpus:  # one trial per device: worker i sees device i (round robin past the count)
                env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
            cmd = [sys.executable, "-m", "seqrec", "tune", *rest, "--n_jobs", "1", "--worker",
                   "--num_threads", str(threads), "--tune_seed", str(args.tune_seed + i)]
            procs.append(subprocess.Popen(cmd, env=env))
        log(f"{args.n_jobs} tune workers, {threads} CPU thread(s) each, on {args.storage or args.study_dir}")
        codes = [p.wait() for p in procs]
        if any(codes):
            raise ValueError(f"a tune worker failed (exit codes {codes}); run the same command again to continue")
        opts.start_trials = False  # the workers ran the trials (or stopped at --timeout): this process reports
    summary = run_tune(base, phases, opts, log=log, worker=args.worker)
    if not args.worker:
        log(f"study: {Path(args.study_dir) / 'study.md'}; best configuration: {Path(args.study_dir) / 'best.yaml'}")
        import json

        log(json.dumps({k: summary[k] for k in ("metric", "best_trial", "best_valid", "best_params")}, default=str))
    return 0


def cmd_pipeline(argv: list[str]) -> int:
    from .config import resolve_config
    from .pipeline import Pipeline
    from .train.trainer import TrainingStopped

    args, flags = _parse_run_args("pipeline", argv)
    flags.pop("profile", None)  # the stages choose their profiles
    if args.price_per_hour is not None and args.price_per_hour < 0:
        raise ValueError("--price_per_hour must be >= 0")
    cfg = resolve_config(flags, args.config)
    if not cfg.data.dataset:
        raise ValueError("--dataset is required (in --config or on the command line)")
    pipe = Pipeline(cfg, args.out, data=args.data, debug_only=args.debug, restart=args.restart,
                    price_per_hour=args.price_per_hour, log=functools.partial(print, flush=True))
    try:
        pipe.run()
    except TrainingStopped as exc:
        print(f"seqrec pipeline: {exc}", file=sys.stderr)
        return 3
    return 0


def cmd_verify(argv: list[str]) -> int:
    from .config import apply_profile, resolve_config
    from .train.verify import format_checks, preflight

    args, flags = _parse_run_args("verify", argv)
    cfg = apply_profile(resolve_config(flags, args.config))
    if not cfg.train.train_dir:
        cfg = cfg.replace(train={"train_dir": "runs/verify"})
    checks = preflight(cfg, log=None)
    print(format_checks(checks))
    return 0 if all(c.ok for c in checks) else 1


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="re-evaluate a saved run (full ranking and sampled)")
    p.add_argument("run_dir", help="a --train_dir of `seqrec train`")
    p.add_argument("--checkpoint", default="best.pt", help="checkpoint file in the run folder")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--negatives", type=int, help="sampled protocol negatives (0 skips it; default: the run's "
                   "--eval_negatives)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    from .data.batches import NEXT_TIMES

    p.add_argument("--next_time", choices=NEXT_TIMES,
                   help="time-aware models: the held-out item's time given to the model (default: the run's "
                        "--eval_next_time; 'target' is its real timestamp)")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from .runs.load import evaluate_run

    evaluate_run(args.run_dir, checkpoint=args.checkpoint, split=args.split, n_negatives=args.negatives,
                 device=args.device, next_time=args.next_time)
    return 0


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="table of several runs' settings and test metrics; --paired: a "
                       "significance test of two runs on the same users")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--markdown", help="also write the table to this Markdown file")
    p.add_argument("--csv", help="also write the table to this CSV file")
    p.add_argument("--paired", action="store_true",
                   help="exactly two runs A B: re-rank both best checkpoints on the same users (full ranking) and "
                        "report B - A per metric with its paired standard error, confidence interval and p-value")
    p.add_argument("--split", choices=("test", "valid"), default="test", help="--paired: users to compare on")
    p.add_argument("--metrics", default="hr@10,ndcg@10", help="--paired: comma-separated metrics")
    p.add_argument("--confidence", type=float, default=0.95, help="--paired: level of the interval")
    p.add_argument("--device", default="auto", help="--paired: device for the re-ranking")
    p.set_defaults(func=cmd_compare)


def cmd_compare_paired(args) -> int:
    import json

    from .runs.load import paired_compare

    if len(args.runs) != 2:
        raise ValueError(f"--paired compares exactly two runs (A B), got {len(args.runs)}")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    out = paired_compare(args.runs[0], args.runs[1], split=args.split, metrics=metrics, device=args.device,
                         confidence=args.confidence)
    a, b = (Path(r).name for r in args.runs)
    ci = f"{args.confidence:.0%} CI"
    lines = [f"{args.split}, full ranking, {next(iter(out['metrics'].values()))['n']:,} users; A = {a}, B = {b}",
             f"| metric | A | B | B - A | paired SE | {ci} | p | users A better / B better |",
             "|---|---|---|---|---|---|---|---|"]
    for m, r in out["metrics"].items():
        lines.append(f"| {m} | {r['mean_a']:.4f} | {r['mean_b']:.4f} | {r['diff']:+.4f} | {r['se']:.4f} | "
                     f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | {r['p']:.3g} | {r['a_better']:,} / {r['b_better']:,} |")
    table = "\n".join(lines)
    print(table)
    print(json.dumps(out))
    from .track.compare import to_csv
    from .utils.io import atomic_path

    rows = [{"run_a": out["run_a"], "run_b": out["run_b"], "split": args.split, "metric": m, **r}
            for m, r in out["metrics"].items()]
    for path, text in ((args.markdown, table + "\n"), (args.csv, to_csv(rows))):
        if path:
            with atomic_path(path) as tmp:
                tmp.write_text(text)
    return 0


def cmd_compare(args) -> int:
    from .track.compare import load_runs, to_csv, to_markdown
    from .utils.io import atomic_path

    if args.paired:
        return cmd_compare_paired(args)

    skipped: list[Path] = []
    rows = load_runs(args.runs, skipped=skipped)
    if skipped:
        print(f"skipped {len(skipped)} path(s) that are not run folders (no config.yaml): "
              + ", ".join(str(p) for p in skipped[:5]) + (" ..." if len(skipped) > 5 else ""), file=sys.stderr)
    if not rows:
        raise FileNotFoundError("no seqrec run folder among the given paths")
    table = to_markdown(rows)
    print(table)
    for path, text in ((args.markdown, table + "\n"), (args.csv, to_csv(rows))):
        if path:
            with atomic_path(path) as tmp:
                tmp.write_text(text)
    return 0


def _add_recommend(sub) -> None:
    p = sub.add_parser("recommend", help="top-k items for a user of the dataset or for a given history")
    p.add_argument("run_dir", help="a finished run folder")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user id as in the source data")
    who.add_argument("--history", help="comma-separated item ids (source ids), oldest first")
    who.add_argument("--all", action="store_true", help="batch: every user of the dataset, written to --out")
    who.add_argument("--users", metavar="FILE", help="batch: the users listed in FILE (one source id per line, or a "
                     ".csv/.parquet with a 'user' column), written to --out")
    p.add_argument("--timestamps", help="comma-separated Unix seconds aligned with --history (time-aware models)")
    p.add_argument("--k", type=int, default=10, help="how many items")
    p.add_argument("--include_seen", action="store_true", help="allow items already in the history")
    p.add_argument("--out", help="batch: the Parquet file to write (columns user, rank, item, score; source ids), "
                   "written atomically")
    p.add_argument("--chunk_size", type=int, default=1024, help="batch: users per forward pass (bounds the memory)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "auto"],
                   help="default: cpu for one user, auto (the GPU when there is one) for a batch")
    _add_backend(p)
    p.set_defaults(func=cmd_recommend)


def _add_backend(p) -> None:
    p.add_argument("--backend", default="torch", choices=["torch", "onnx", "torchscript"],
                   help="score with the PyTorch model (default) or an exported graph of the same checkpoint "
                   "(onnx: onnxruntime on CPU, needs seqrec[export]); RUN/model.onnx or RUN/model.pt is exported "
                   "and checked on first use, or give --graph FILE")
    p.add_argument("--graph", default=None, help="the exported file for --backend (default RUN/model.onnx|.pt)")
    p.add_argument("--compile", action="store_true", help="torch backend: run the model through torch.compile "
                   "(worth it for long batch jobs; the first calls wait while it compiles)")


def _load_for(args, device: str):
    from .api import load

    return load(args.run_dir, device=device, backend=args.backend, graph=args.graph, compile=args.compile)


def _unix_seconds(text: str) -> int:
    """``1700000000``, ``1.7e9`` or ``1700000000.5`` -> whole Unix seconds; else a clear error."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--timestamps: {text!r} is not a number of Unix seconds") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"--timestamps: {text!r} is not a number of Unix seconds")
    return int(value)


def _read_users(path: str) -> list:
    """Source user ids from a text file (one per line; blank lines skipped) or a table with a
    ``user`` column (.csv, .parquet)."""
    import polars as pl

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--users {p}: no such file")
    if p.suffix in (".parquet", ".csv"):
        frame = pl.read_parquet(p) if p.suffix == ".parquet" else pl.read_csv(p, infer_schema_length=0)
        if "user" not in frame.columns:
            raise ValueError(f"--users {p}: no 'user' column (columns: {', '.join(frame.columns)})")
        return frame["user"].to_list()
    return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def cmd_recommend_batch(args) -> int:
    import time

    from .utils.io import atomic_path

    if not args.out:
        raise ValueError("--all / --users write a table: give --out FILE.parquet")
    if not str(args.out).endswith(".parquet"):
        raise ValueError(f"--out {args.out}: the batch output is a Parquet file (NAME.parquet)")
    if args.chunk_size < 1:
        raise ValueError(f"--chunk_size must be a positive integer, got {args.chunk_size}")
    users = _read_users(args.users) if args.users else None
    rec = _load_for(args, args.device or "auto")
    t0 = time.perf_counter()
    table = rec.recommend_table(users, k=args.k, exclude_seen=not args.include_seen, chunk_size=args.chunk_size,
                                progress=True)
    with atomic_path(args.out) as tmp:
        table.write_parquet(tmp)
    n = table["user"].n_unique()
    print(f"wrote {args.out}: {table.height:,} rows, {n:,} users x top {args.k} in {time.perf_counter() - t0:.1f} s "
          f"on {rec.device}")
    return 0


def cmd_recommend(args) -> int:
    if args.all or args.users:
        return cmd_recommend_batch(args)
    rec = _load_for(args, args.device or "cpu")
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    kw = {"k": args.k, "exclude_seen": not args.include_seen}
    if args.user is not None:
        top = rec.recommend(args.user, **kw)
        print(f"top {args.k} for user {args.user}:")
    else:
        ts = [_unix_seconds(t) for t in split(args.timestamps)] if args.timestamps else None
        top = rec.recommend(history=split(args.history), timestamps=ts, **kw)
        print(f"top {args.k} after {len(split(args.history))} items:")
    for r in top:
        title = f"  {r['title']}" if r.get("title") else ""
        print(f"{r['rank']:3d}. item {r['item']}{title}  (score {r['score']:.3f})")
    return 0


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve a run's recommendations over HTTP (FastAPI; needs seqrec[serve])",
                       description="POST /recommend, POST /recommend/batch, GET /health, GET /model; OpenAPI docs at "
                       "/docs. Concurrent requests are answered by one forward pass (micro-batching).")
    p.add_argument("run_dir", help="a finished run folder (loaded once, at start)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--max_batch", type=int, default=64, help="most requests answered by one forward pass")
    p.add_argument("--max_wait_ms", type=float, default=2.0, help="how long a request waits for others to join it")
    _add_backend(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from .serve import serve

    if args.max_batch < 1 or args.max_wait_ms < 0 or not 0 < args.port < 65536:
        raise ValueError("--max_batch must be >= 1, --max_wait_ms >= 0 and --port in 1..65535")
    serve(args.run_dir, host=args.host, port=args.port, device=args.device, max_batch=args.max_batch,
          max_wait_ms=args.max_wait_ms, backend=args.backend, graph=args.graph, compile=args.compile,
          log=functools.partial(print, flush=True))
    return 0


def _add_export_model(sub) -> None:
    p = sub.add_parser("export-model", help="write a run's model as an ONNX or TorchScript graph (scores over the "
                       "catalogue, or the top k), checked against PyTorch on real users",
                       description="Inputs: the model's own (items, and timestamps / next_timestamps / time_scale "
                       "for time-aware models), int64, windows of maxlen right-aligned with 0 padding; see "
                       "seqrec.export's docstring.")
    p.add_argument("run_dir", help="a finished run folder")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    p.add_argument("--out", default=None, help="the file to write (default RUN/model.onnx or RUN/model.pt)")
    p.add_argument("--top_k", type=int, default=None, help="return the top K items and scores instead of all scores")
    p.add_argument("--checkpoint", default="best.pt", help="which checkpoint of the run (default best.pt)")
    p.set_defaults(func=cmd_export_model)


def cmd_export_model(args) -> int:
    from .export import export_model

    export_model(args.run_dir, args.format, args.out, top_k=args.top_k, checkpoint=args.checkpoint,
                 log=functools.partial(print, flush=True))
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="(re)write report.md and plots of a run")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from .track.report import write_report

    print(write_report(args.run_dir))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqrec",
        description="Time-aware sequential recommendation: data preparation, training (SASRec, TiSASRec, "
        "mHC, SS4Rec) and evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"seqrec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


_COMMANDS = [_add_prepare, _add_info, _add_export,
             lambda sub: _add_run_stub(sub, "verify", "pre-flight check of a training config (deps, device, data, "
                                       "one step, memory, disk)"),
             lambda sub: _add_run_stub(sub, "train", "train a model (SASRec, TiSASRec, SS4Rec, ...) and evaluate it; "
                                       "`seqrec train --model NAME --help` lists NAME's options"),
             lambda sub: _add_run_stub(sub, "pipeline", "the whole rented-GPU flow (fetch, prepare, verify, debug, "
                                       "production, report), resumable after a kill"),
             lambda sub: _add_run_stub(sub, "tune", "hyper-parameter study on Optuna (validation-only selection, "
                                       "resumable, several workers on one storage)"),
             _add_evaluate, _add_recommend, _add_serve, _add_export_model, _add_compare, _add_report]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in RUN_COMMANDS:
        command, run = argv[0], {"train": cmd_train, "verify": cmd_verify, "tune": cmd_tune,
                                 "pipeline": cmd_pipeline}[argv[0]]
        return _guarded(command, lambda: run(argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return _guarded(args.command, lambda: args.func(args))


def _guarded(command: str, fn) -> int:
    """Run a command; every user-facing error becomes one line and a non-zero exit."""
    try:
        return int(fn() or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` & co. that stopped reading: not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # every user-facing error: one line, no traceback (SEQREC_DEBUG=1 shows it)
        if os.environ.get("SEQREC_DEBUG", "") not in ("", "0"):
            raise
        print(f"seqrec {command}: error: {error_line(exc)}", file=sys.stderr)
        return 2


def error_line(exc: BaseException) -> str:
    """One line for any exception: our messages as they are, the system's with the file named."""
    import errno as _errno

    from .utils.io import SeqrecIOError

    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    elif isinstance(exc, OSError) and not isinstance(exc, SeqrecIOError) and exc.errno is not None:
        where = exc.filename or ""
        if exc.errno in (_errno.ENOSPC, _errno.EDQUOT):
            text = f"no space left on device at {where or 'the output folder'}"
        else:
            text = f"{where}: {exc.strerror or exc}" if where else f"{exc.strerror or exc}"
    elif isinstance(exc, SeqrecIOError):
        text = exc.strerror or str(exc)
    else:
        text = str(exc) or type(exc).__name__
        ours = type(exc).__module__.startswith("seqrec")
        if not (ours or isinstance(exc, (ValueError, FileNotFoundError, LookupError))):
            text = f"{type(exc).__name__}: {text}"
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    if len(lines) > 1:
        text += " ... (SEQREC_DEBUG=1 shows the rest)"
    return text
