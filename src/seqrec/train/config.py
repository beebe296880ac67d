"""The training argument table (the seed's table plus seqrec's additions).

One list, :data:`ARGUMENTS`, drives the command line, the YAML config files and the saved
``config.yaml`` of a run. Precedence: built-in defaults < ``--config`` YAML < command line.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


#: Cut-offs every evaluation reports (and that --metric may use).
KS = (5, 10, 20)
#: What an evaluation batch gives as the time following its last position (the held-out item's).
NEXT_TIMES = ("target", "last", "median")


@dataclass(frozen=True)
class Arg:
    name: str
    default: Any
    help: str
    type: Any = None  # inferred from default when None
    choices: tuple | None = None
    flag: bool = False  # store_true


ARGUMENTS: list[Arg] = [
    # -- the seed's table ---------------------------------------------------------------
    Arg("dataset", None, "dataset name (ml-1m, ml-100k, beauty, ...) or a prepared dataset folder", str),
    Arg("train_dir", None, "output directory of the run", str),
    Arg("batch_size", 128, "training batch size (sequences)"),
    Arg("lr", 0.001, "learning rate"),
    Arg("lr_decay_step", 1000, "multiply the lr by lr_decay_rate every this many epochs"),
    Arg("lr_decay_rate", 0.95, "lr decay factor"),
    Arg("warmup_steps", 100, "linear lr warm-up steps (0 disables)"),
    Arg("maxlen", 200, "maximum sequence length (most recent items kept)"),
    Arg("hidden_units", 50, "hidden dimension"),
    Arg("num_blocks", 2, "number of transformer / SSM blocks"),
    Arg("num_heads", 2, "attention heads (hidden_units must be divisible by it)"),
    Arg("dropout_rate", 0.2, "dropout"),
    Arg("l2_emb", 0.0, "L2 regularisation of the item embeddings"),
    Arg("device", "auto", "cuda, cpu or auto (cuda when available; the seed's default is cuda)", str, ("auto", "cuda", "cpu")),
    Arg("no_time", False, "seed compatibility: use SASRec (no time intervals) when --model is not given", flag=True),
    Arg("no_mhc", False, "disable Manifold-Constrained Hyper-Connections", flag=True),
    Arg("mhc_expansion_rate", 4, "mHC: number of parallel residual streams n"),
    Arg("mhc_sinkhorn_iter", 20, "mHC: Sinkhorn-Knopp iterations for H_res"),
    Arg("mhc_init_gate", 0.01, "mHC: initial value of the dynamic gates alpha"),
    Arg("mhc_no_amp", False, "mHC: compute the mixing coefficients and Sinkhorn in float32 under AMP", flag=True),
    Arg("time_span", 100, "TiSASRec: intervals are clipped to this many units"),
    Arg("time_unit", "hour", "TiSASRec: unit of time intervals", str, ("second", "minute", "hour", "day")),
    Arg("num_epochs", 1000, "maximum number of epochs (early stopping usually ends sooner)"),
    # -- seqrec additions -----------------------------------------------------------------
    Arg("model", None, "model name (sasrec, tisasrec, ...); default: tisasrec, or sasrec with --no_time", str),
    Arg("config", None, "YAML file setting any of these arguments (the command line wins)", str),
    Arg("loss", "bce", "training loss", str, ("bce", "bpr", "ce", "sampled_softmax")),
    Arg("num_negatives", 256, "sampled_softmax: number of negatives (per batch, or per position with --negative_sharing position)"),
    Arg("negative_sharing", "batch", "sampled_softmax: negatives shared by the batch, or drawn for every position (RecTools/eSASRec)",
        str, ("batch", "position")),
    Arg("optimizer", "adam", "adam (betas 0.9, 0.98) or adamw", str, ("adam", "adamw")),
    Arg("weight_decay", 0.0, "decoupled weight decay (adamw)"),
    Arg("grad_clip", 5.0, "clip the global gradient norm to this (0 disables)"),
    Arg("amp", "auto", "mixed precision on CUDA: auto (bf16 when supported), bf16, fp16, off", str,
        ("auto", "bf16", "fp16", "off")),
    Arg("inner_size", 0, "feed-forward width (0: hidden_units, as in the SASRec paper; RecBole uses 4x)"),
    Arg("norm_first", True, "pre-LN blocks (post-LN when false)", None),
    Arg("length_bucketing", 32, "batch users of similar length within chunks of this many batches (0: plain shuffle)"),
    Arg("seed", 42, "random seed (model init, data order, negatives)"),
    Arg("patience", 20, "stop after this many evaluations without validation improvement (0 disables)"),
    Arg("lr_plateau_patience", 0, "multiply the lr by lr_plateau_factor after this many evaluations without "
        "validation improvement (like ReduceLROnPlateau; 0 disables)"),
    Arg("lr_plateau_factor", 0.1, "lr factor of each plateau decay (with --lr_plateau_patience)"),
    Arg("eval_every", 1, "evaluate on the validation set every this many epochs"),
    Arg("eval_batch_size", 1024, "users per evaluation batch"),
    Arg("split", "loo", "evaluation split: loo (leave-one-out) or temporal (the seeds' global past/future split)", str,
        ("loo", "temporal")),
    Arg("split_fraction", 0.8, "temporal split: fraction of interactions (by time) in the training past"),
    Arg("eval_next_time", "target", "time-aware models, evaluation: the held-out item's time given to the model -- "
        "target (its real timestamp, the official SS4Rec protocol), last (the last history item's: gap 0) or "
        "median (last + the user's median gap, as `seqrec recommend`)", str, NEXT_TIMES),
    Arg("metric", "ndcg@10", "validation metric for model selection and early stopping (K in 5, 10, 20)", str),
    Arg("exclude_history", True, "exclude the user's past items from full-ranking evaluation", None),
    Arg("eval_negatives", 100, "sampled protocol: negatives per user at test time (0 skips it)"),
    Arg("max_steps", 0, "stop after this many optimizer steps in all (0: no limit)"),
    Arg("log_every", 50, "log training loss every this many steps"),
    Arg("debug", False, "debug profile: a tiny slice of users, 2 epochs, anomaly detection", flag=True),
    Arg("production", False, "production profile: the configuration as given, nothing trimmed", flag=True),
    Arg("debug_users", 0, "train and evaluate on this many random users only (0: all; --debug sets 512)"),
    Arg("checkpoint_every", 0, "also write last.pt every this many steps (0: at the end of each epoch only)"),
    Arg("max_grad_norm", 1000.0, "a gradient norm above this (before clipping) counts as an explosion: step skipped"),
    Arg("max_bad_steps", 20, "stop the run (with a checkpoint) after this many skipped steps"),
    Arg("wandb", False, "also log to Weights & Biases (offline unless WANDB_MODE=online; needs seqrec[wandb])", flag=True),
    Arg("tensorboard", False, "also log to TensorBoard in TRAIN_DIR/tensorboard (needs seqrec[tensorboard])", flag=True),
    Arg("num_threads", 0, "CPU threads for torch (0: torch's default, one per core)"),
    Arg("progress", True, "show progress bars", None),
]

ARG_BY_NAME = {a.name: a for a in ARGUMENTS}


def _str2bool(v: str) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).lower()
    if s in ("1", "true", "yes", "y", "on"):
        return True
    if s in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {v!r}")


def model_arguments() -> dict[str, tuple[Any, str]]:
    """Config fields of the registered models that the table above does not list (e.g.
    SS4Rec's ``s5_state``), as ``{name: (default, help)}``. A field several models share
    keeps the first model's default; its help lists each model's own description."""
    import dataclasses

    from ..models import available_models, get_model_class

    defaults: dict[str, Any] = {}
    helps: dict[str, dict[str, list[str]]] = {}  # field -> {comment: [models with it]}
    for name in available_models():
        cls = get_model_class(name).config_class
        comments = _field_comments(cls)
        for f in dataclasses.fields(cls):
            if f.name in ARG_BY_NAME or f.name == "mhc":
                continue
            if f.name not in defaults:
                defaults[f.name] = f.default if f.default is not dataclasses.MISSING else None
                helps[f.name] = {}
            comment = comments.get(f.name, "model option (see its config class)")
            helps[f.name].setdefault(comment, []).append(name)  # TiSASRec inherits SASRec's
    return {k: (defaults[k], "; ".join(f"{', '.join(models)}: {comment}" for comment, models in helps[k].items()))
            for k in defaults}


@functools.cache
def _field_comments(config_class) -> dict[str, str]:
    """``{field: comment}`` from the ``name: type = default  # comment`` lines of a config
    dataclass and its bases (the comments are the options' documentation)."""
    import inspect
    import re

    out: dict[str, str] = {}
    for klass in reversed(config_class.__mro__):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for m in re.finditer(r"^\s+(\w+)\s*:[^=\n]+=[^#\n]*#\s*(.+)$", source, re.M):
            out[m.group(1)] = m.group(2).strip().replace("%", "%%")  # argparse formats help
    return out


def add_train_arguments(parser: argparse.ArgumentParser, extra_model_args: dict | None = None) -> None:
    """Add every training argument; defaults are SUPPRESSed so we know what was given.

    ``extra_model_args`` defaults to every registered model's own options."""
    if extra_model_args is None:
        extra_model_args = model_arguments()
    for a in ARGUMENTS:
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": f"{a.help} (default: {a.default})"}
        if a.flag:
            parser.add_argument(f"--{a.name}", action="store_true", **kw)
            continue
        typ = a.type or (type(a.default) if a.default is not None else str)
        if typ is bool:
            kw["type"] = _str2bool
            kw["metavar"] = "BOOL"
        else:
            kw["type"] = typ
        if a.choices:
            kw["choices"] = a.choices
        parser.add_argument(f"--{a.name}", **kw)
    for name, (default, help_) in (extra_model_args or {}).items():
        if name in ARG_BY_NAME:
            continue
        typ = _str2bool if isinstance(default, bool) else (type(default) if default is not None else str)
        parser.add_argument(f"--{name}", type=typ, default=argparse.SUPPRESS, help=f"{help_} (default: {default})")


def load_yaml(path: str | Path) -> dict:
    """A YAML mapping; syntax errors name the file, line and column."""
    from ..utils.io import read_yaml

    return read_yaml(path)


def _arg_type(default: Any, declared: Any = None) -> Any:
    return declared or (type(default) if default is not None else str)


def _yaml_value(key: str, value: Any, typ: Any, path: Any) -> Any:
    """A YAML value in its argument's type. YAML 1.1 (PyYAML) reads ``1e-4`` -- no dot --
    as a *string*; numbers and booleans written as strings are converted here."""
    if value is None:
        return value
    if isinstance(value, (list, dict)):
        if typ in (bool, int, float, str):
            kind = "a list" if isinstance(value, list) else "a mapping"
            want = {bool: "true or false", int: "an integer", float: "a number", str: "a single value"}[typ]
            raise ValueError(f"{path}: {key} must be {want}, got {kind} ({value!r})")
        return value
    if typ is bool:
        try:
            return _str2bool(value)
        except argparse.ArgumentTypeError:
            raise ValueError(f"{path}: {key} must be true or false, got {value!r}") from None
    if typ in (int, float) and not isinstance(value, bool):
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {key} must be a number, got {value!r}") from None
        if typ is float:
            return x
        if not x.is_integer():
            raise ValueError(f"{path}: {key} must be an integer, got {value!r}")
        return int(x)
    return value


def resolve_config(cli: dict, known_extra: set[str] | None = None) -> dict:
    """Merge defaults < YAML (``cli['config']``) < command-line values into one flat dict."""
    cfg = {a.name: a.default for a in ARGUMENTS}
    types = {a.name: _arg_type(a.default, a.type) for a in ARGUMENTS if not a.flag}
    types.update({a.name: bool for a in ARGUMENTS if a.flag})
    if known_extra is None:
        extra = model_arguments()
        types.update({k: _arg_type(d) for k, (d, _) in extra.items() if k not in types})
        known_extra = set(extra)
    known = set(cfg) | set(known_extra)
    if cli.get("config"):
        for k, v in load_yaml(cli["config"]).items():
            if k not in known:
                close = difflib.get_close_matches(k, sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"{cli['config']}: unknown argument {k!r}{hint}")
            cfg[k] = _yaml_value(k, v, types.get(k), cli["config"])
    cfg.update(cli)
    if cfg.get("model") is None:
        cfg["model"] = "sasrec" if cfg.get("no_time") else "tisasrec"
    cfg["mhc"] = not cfg.get("no_mhc", False)
    return cfg


#: Ranges of the numeric settings, checked before anything is built: ``(low, high, open)`` with
#: ``open`` the ends excluded, as in ``"(]"``: ``[1, inf)`` for counts, ``(0, 1)`` for fractions.
_COUNT, _OPTIONAL = (1, math.inf, "[)"), (0, math.inf, "[)")
RANGES: dict[str, tuple[float, float, str]] = {
    **dict.fromkeys(("batch_size", "maxlen", "hidden_units", "num_blocks", "num_heads", "num_epochs", "eval_every",
                     "eval_batch_size", "mhc_expansion_rate", "mhc_sinkhorn_iter", "time_span", "lr_decay_step",
                     "max_bad_steps"), _COUNT),
    **dict.fromkeys(("warmup_steps", "patience", "lr_plateau_patience", "eval_negatives", "max_steps", "log_every",
                     "debug_users", "checkpoint_every", "num_threads", "length_bucketing", "inner_size",
                     "num_negatives", "l2_emb", "weight_decay", "grad_clip"), _OPTIONAL),
    **dict.fromkeys(("lr", "lr_decay_rate", "max_grad_norm"), (0, math.inf, "()")),
    **dict.fromkeys(("lr_plateau_factor", "split_fraction"), (0, 1, "()")),
    "dropout_rate": (0, 1, "[)"),
}


def _range_error(key: str, value: float) -> str | None:
    lo, hi, ends = RANGES[key]
    above = value > lo if ends[0] == "(" else value >= lo
    below = value < hi if ends[1] == ")" else value <= hi
    if above and below:
        return None
    if hi == math.inf and isinstance(ARG_BY_NAME[key].default, int):
        what = "a positive integer" if lo == 1 else "a non-negative integer"
    elif hi == math.inf:
        what = f"> {lo:g}" if ends[0] == "(" else f">= {lo:g}"
    else:
        what = f"in {ends[0]}{lo:g}, {hi:g}{ends[1]}"
    return f"--{key} must be {what}, got {value!r}"


def _check_types(cfg: dict) -> None:
    """Every table argument holds a value of its type (a YAML list or a string where a number
    belongs fails here, naming the argument)."""
    for a in ARGUMENTS:
        if a.name not in cfg or cfg[a.name] is None:
            continue
        v = cfg[a.name]
        typ = bool if a.flag else _arg_type(a.default, a.type)
        if typ is bool:
            ok = isinstance(v, bool)
        elif typ is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif typ is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        else:
            ok = isinstance(v, str)
        if not ok:
            want = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(typ, typ)
            raise ValueError(f"--{a.name} must be {want}, got {v!r}")


def validate_config(cfg: dict) -> None:
    """Fail before training with a message that says what to change."""
    for key in ("dataset", "train_dir"):
        if not cfg.get(key):
            raise ValueError(f"--{key} is required")
    _check_types(cfg)
    for a in ARGUMENTS:
        if a.choices and cfg.get(a.name) not in a.choices:
            raise ValueError(f"--{a.name} must be one of {', '.join(a.choices)}, got {cfg.get(a.name)!r}")
    for key in RANGES:
        if key in cfg and (err := _range_error(key, cfg[key])):
            raise ValueError(err)
    if cfg.get("loss") == "sampled_softmax" and not cfg.get("num_negatives"):
        raise ValueError("--loss sampled_softmax needs --num_negatives > 0 (the number of negatives it trains "
                         "against); e.g. --num_negatives 256")
    if cfg["hidden_units"] % cfg["num_heads"] != 0:
        raise ValueError(
            f"hidden_units ({cfg['hidden_units']}) must be divisible by num_heads ({cfg['num_heads']}): "
            "change --num_heads or --hidden_units"
        )
    check_metric(str(cfg["metric"]))


def check_metric(metric: str, flag: str = "--metric") -> None:
    """``metric`` names one of the values every evaluation reports (e.g. ``ndcg@10``)."""
    name, _, k = metric.partition("@")
    if name not in ("hr", "ndcg", "mrr", "recall") or not k.isdigit():
        raise ValueError(f"{flag} must look like ndcg@10, hr@10, mrr@10 or recall@10, got {metric!r}")
    if int(k) not in KS:
        raise ValueError(f"{flag}: evaluations report K in {', '.join(map(str, KS))}, got {metric!r}")


def save_config(cfg: dict, path: str | Path) -> None:
    from ..utils.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(dict(cfg), sort_keys=False))
