"""The run configuration: one typed section per part, nested the same way in YAML.

::

    data:   dataset, split, split_fraction, maxlen            (DataConfig)
    model:  name + that model's own options                   (the model's config dataclass)
            mhc: {expansion_rate, ...}                          transformers only; absent = off
    train:  loss, optimizer, schedule, budget, guard, device   (TrainConfig)
    eval:   metric, every, batch_size, negatives, ...          (EvalConfig)
    track:  log_every, progress, wandb, tensorboard            (TrackConfig)

Precedence: each section's defaults (the model's own for ``model``) < ``--config`` YAML <
command-line flags. Flags are generated from the sections (:func:`flag_table`); a field's
flag is its name, except ``eval``'s (``--eval_batch_size``, ``--eval_negatives``, ...) and
the mHC section's (``--mhc_expansion_rate``, ...), which keep the seed's names.

The seed's command forms keep their meaning (:func:`resolve_config`): with no model named
anywhere, the model is TiSASRec + mHC with the seed's defaults, ``--no_time`` makes it
SASRec and ``--no_mhc`` drops mHC. With ``--model NAME`` (or ``model.name`` in the YAML) the
model's own defaults apply and mHC is off unless asked for (``--mhc``, any ``--mhc_*`` flag
or an ``mhc`` section).

Run folders written before this layout hold one flat mapping; :func:`config_from_dict`
reads those too (:func:`from_legacy`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data.batches import NEXT_TIMES
from .models import available_models, get_model_class
from .utils import options
from .utils.io import atomic_path, read_yaml
from .utils.options import opt

#: Cut-offs every evaluation reports (and that --metric may use).
KS = (5, 10, 20)
LOSSES = ("bce", "bpr", "ce", "sampled_softmax")
PROFILES = ("debug", "production")
SECTIONS = ("data", "model", "train", "eval", "track")
#: The seed's model when none is named: TiSASRec (SASRec with --no_time), with mHC.
SEED_MODEL, SEED_MODEL_NO_TIME = "tisasrec", "sasrec"


@dataclass
class DataConfig:
    dataset: str | None = opt(None, "dataset name (ml-1m, ml-100k, beauty, ...) or a prepared dataset folder")
    split: str = opt("loo", "evaluation split: loo (leave-one-out), temporal (the seeds' global past/future "
                     "split) or loo_refit (leave-one-out trained on train + validation, no validation: a fixed "
                     "number of epochs, then the test once)", choices=("loo", "temporal", "loo_refit"))
    split_fraction: float = opt(0.8, "temporal split: fraction of interactions (by time) in the training past",
                                low=0, high=1, low_open=True, high_open=True)
    maxlen: int = opt(200, "maximum sequence length (most recent items kept)", low=1)


@dataclass
class TrainConfig:
    train_dir: str | None = opt(None, "output directory of the run")
    loss: str = opt("bce", "training loss", choices=LOSSES)
    num_negatives: int = opt(256, "sampled_softmax: negatives shared by the batch", low=0)
    optimizer: str = opt("adam", "adam (betas 0.9, 0.98) or adamw", choices=("adam", "adamw"))
    lr: float = opt(0.001, "learning rate", low=0, low_open=True)
    weight_decay: float = opt(0.0, "decoupled weight decay (adamw); the model's biases, norms and gates are "
                              "exempt", low=0)
    l2_emb: float = opt(0.0, "L2 regularisation of the item embeddings", low=0)
    batch_size: int = opt(128, "training batch size (sequences)", low=1)
    num_epochs: int = opt(1000, "maximum number of epochs (early stopping usually ends sooner)", low=1)
    max_steps: int = opt(0, "stop after this many optimizer steps in all (0: no limit)", low=0)
    warmup_steps: int = opt(100, "linear lr warm-up steps (0 disables)", low=0)
    lr_decay_step: int = opt(1000, "multiply the lr by lr_decay_rate every this many epochs", low=1)
    lr_decay_rate: float = opt(0.95, "lr decay factor", low=0, low_open=True)
    lr_plateau_patience: int = opt(0, "multiply the lr by lr_plateau_factor after this many evaluations without "
                                   "validation improvement (like ReduceLROnPlateau; 0 disables)", low=0)
    lr_plateau_factor: float = opt(0.1, "lr factor of each plateau decay", low=0, high=1, low_open=True,
                                   high_open=True)
    patience: int = opt(20, "stop after this many evaluations without validation improvement (0 disables)", low=0)
    grad_clip: float = opt(5.0, "clip the global gradient norm to this (0 disables)", low=0)
    max_grad_norm: float = opt(1000.0, "a gradient norm above this (before clipping) counts as an explosion: "
                               "step skipped", low=0, low_open=True)
    max_bad_steps: int = opt(20, "stop the run (with a checkpoint) after this many skipped steps", low=1)
    amp: str = opt("auto", "mixed precision on CUDA: auto (bf16 when supported), bf16, fp16, off",
                   choices=("auto", "bf16", "fp16", "off"))
    compile: bool = opt(False, "torch.compile the model for training and evaluation (the first steps wait while it "
                        "compiles; where it cannot compile, one line says so and the run goes on eagerly)")
    seed: int = opt(42, "random seed (model init, data order, negatives)")
    device: str = opt("auto", "cuda, cpu or auto (cuda when available; the seed's default is cuda)",
                      choices=("auto", "cuda", "cpu"))
    num_threads: int = opt(0, "CPU threads for torch (0: torch's default, one per core)", low=0)
    length_bucketing: int = opt(32, "batch users of similar length within chunks of this many batches (0: plain "
                                "shuffle)", low=0)
    checkpoint_every: int = opt(0, "also write last.pt every this many steps (0: at the end of each epoch only)",
                                low=0)
    checkpoint_minutes: float = opt(0.0, "also write last.pt every this many minutes of wall-clock time (0: off; "
                                    "the production profile sets 10)", low=0)
    debug_users: int = opt(0, "train and evaluate on this many random users only (0: all; --debug sets 512)",
                           low=0)
    max_hours: float = opt(0.0, "stop cleanly with a checkpoint after this many hours of training in this session "
                           "(0: no limit); --resume continues", low=0)
    profile: str | None = opt(None, "debug or production (set by --debug / --production)", choices=PROFILES)


@dataclass
class EvalConfig:
    metric: str = opt("ndcg@10", "validation metric for model selection and early stopping (K in 5, 10, 20)",
                      flag="metric")
    every: int = opt(1, "evaluate on the validation set every this many epochs", low=1, flag="eval_every")
    batch_size: int = opt(1024, "users per evaluation batch", low=1, flag="eval_batch_size")
    negatives: int = opt(100, "sampled protocol: negatives per user at test time (0 skips it)", low=0,
                         flag="eval_negatives")
    next_time: str = opt("target", "time-aware models: the held-out item's time given to the model -- target (its "
                         "real timestamp, the official SS4Rec protocol), last (the last history item's: gap 0) or "
                         "median (last + the user's median gap, as `seqrec recommend`)", choices=NEXT_TIMES,
                         flag="eval_next_time")
    exclude_history: bool = opt(True, "exclude the user's past items from full-ranking evaluation",
                                flag="exclude_history")


@dataclass
class TrackConfig:
    log_every: int = opt(50, "log training loss every this many steps", low=0)
    progress: bool = opt(True, "show progress bars")
    wandb: bool = opt(False, "also log to Weights & Biases (offline unless WANDB_MODE=online; online in the "
                      "production profile when WANDB_API_KEY is set; needs seqrec[wandb])")
    tensorboard: bool = opt(False, "also log to TensorBoard in TRAIN_DIR/tensorboard (needs seqrec[tensorboard])")


SECTION_CLASSES = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig, "track": TrackConfig}


@dataclass
class RunConfig:
    """A whole run's settings; ``model`` is the model's own config dataclass."""

    model_name: str = SEED_MODEL
    model: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    track: TrackConfig = field(default_factory=TrackConfig)

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = get_model_class(self.model_name).config_class()

    @property
    def model_class(self) -> type:
        return get_model_class(self.model_name)

    @property
    def has_mhc(self) -> bool:
        return getattr(self.model, "mhc", None) is not None

    def describe_model(self) -> str:
        """The model's name and what its config says of itself (``tisasrec + mHC (n=4)``)."""
        extra = self.model.describe() if hasattr(self.model, "describe") else ""
        return self.model_name + (f" {extra}" if extra else "")

    def to_dict(self) -> dict:
        """The nested form saved as a run's ``config.yaml``."""
        return {"data": options.to_dict(self.data), "model": {"name": self.model_name, **options.to_dict(self.model)},
                "train": options.to_dict(self.train), "eval": options.to_dict(self.eval),
                "track": options.to_dict(self.track)}

    def flags(self) -> dict[str, Any]:
        """Every setting by its flag name (``{"model": "sasrec", "dataset": ..., "mhc": True,
        "mhc_expansion_rate": 4, ...}``); an absent nested section gives only its switch."""
        out: dict[str, Any] = {"model": self.model_name}
        for name, (section, fl) in flag_table(self.model_name).items():
            obj = getattr(self, section)
            for part in fl.path[:-1]:
                obj = getattr(obj, part) if obj is not None else None
            if fl.is_switch:
                out[name] = obj is not None and getattr(obj, fl.path[-1]) is not None
            elif obj is not None:
                out[name] = getattr(obj, fl.path[-1])
        return out

    def model_flags(self) -> dict[str, Any]:
        """The model's own settings by flag name (what reports and ``compare`` list per model)."""
        table = flag_table(self.model_name)
        return {k: v for k, v in self.flags().items() if k in table and table[k][0] == "model"}

    def replace(self, **sections) -> "RunConfig":
        """A copy with some sections' fields replaced: ``cfg.replace(train={"lr": 0.01})``."""
        new = dataclasses.replace(self)
        for name, values in sections.items():
            if name == "model":
                new.model = dataclasses.replace(self.model, **values)
            else:
                setattr(new, name, dataclasses.replace(getattr(self, name), **values))
        return new


# -- flags --------------------------------------------------------------------------------------

#: Flags of the seed's table that are not fields: which model, and whether it has mHC.
SEED_FLAGS = {
    "model": "model name (sasrec, tisasrec, ss4rec, ...); default: the seed's tisasrec + mHC (sasrec with --no_time)",
    "no_time": "seed compatibility: SASRec (no time intervals) when --model is not given",
    "no_mhc": "disable Manifold-Constrained Hyper-Connections (mHC is on by default only in the seed's form, "
              "without --model)",
}


def flag_table(model_name: str) -> dict[str, tuple[str, options.Flag]]:
    """``{flag: (section, Flag)}`` for every setting of a run of ``model_name`` (read-only)."""
    return _flag_table(get_model_class(model_name))


@functools.lru_cache(maxsize=None)
def _flag_table(model_cls: type) -> dict[str, tuple[str, options.Flag]]:
    table: dict[str, tuple[str, options.Flag]] = {}
    for section, cls in SECTION_CLASSES.items():
        for fl in options.flags(cls):
            table[fl.name] = (section, fl)
    for fl in options.flags(model_cls.config_class):
        if fl.name in table:
            raise TypeError(f"model {model_cls.registry_name!r}: option {fl.name!r} clashes with the "
                            f"{table[fl.name][0]} section's")
        table[fl.name] = ("model", fl)
    return table


def all_flag_names() -> set[str]:
    """Every flag any registered model's run accepts (for "did you mean" hints)."""
    names = set(SEED_FLAGS)
    for name in available_models():
        names |= set(flag_table(name))
    return names


# -- building a config ----------------------------------------------------------------------------

def _model_config(cls: type, data: dict, where: str, base: Any = None) -> Any:
    data = {k: v for k, v in data.items() if k != "name"}
    try:
        return options.from_dict(cls.config_class, data, where, base)
    except ValueError as exc:
        if "unknown option" in str(exc) and cls.registry_name:
            raise ValueError(f"{exc} for model {cls.registry_name!r} (`seqrec train --model {cls.registry_name} "
                             "--help` lists its options)") from None
        raise


def config_from_dict(data: dict, where: str = "") -> RunConfig:
    """A :class:`RunConfig` from its nested form, or from a flat pre-sections mapping."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}a config must be a mapping")
    nested = set(data) <= set(SECTIONS) and all(isinstance(v, (dict, type(None))) for v in data.values())
    if data and not nested:
        if any(k in SECTIONS and isinstance(v, dict) for k, v in data.items()):
            extra = sorted(set(data) - set(SECTIONS))
            if not extra:
                bad = next(k for k, v in data.items() if not isinstance(v, (dict, type(None))))
                raise ValueError(f"{where}{bad} must be a mapping of its options, got {data[bad]!r}")
            close = difflib.get_close_matches(extra[0], SECTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{where}unknown section {extra[0]!r}{hint}: a config has the sections "
                             f"{', '.join(SECTIONS)}")
        return from_legacy(data, where)
    model = data.get("model") or {}
    if not isinstance(model, dict):
        raise ValueError(f"{where}model must be a mapping with a name and the model's options")
    name = model.get("name") or SEED_MODEL
    try:
        cls = get_model_class(name)
    except ValueError as exc:
        raise ValueError(f"{where}model.name: {exc}") from None
    cfg = RunConfig(model_name=cls.registry_name, model=_model_config(cls, model, f"{where}model."))
    for section, scls in SECTION_CLASSES.items():
        setattr(cfg, section, options.from_dict(scls, data.get(section), f"{where}{section}."))
    return cfg


def load_config(path: str | Path) -> RunConfig:
    """A config file (nested sections, or a flat file of the earlier layout)."""
    return config_from_dict(read_yaml(path), f"{path}: ")


def save_config(cfg: RunConfig, path: str | Path) -> None:
    import yaml

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")


#: Options of the earlier flat layout that left the product (experiments/README.md): a legacy
#: run folder is read only if it used their default (the behaviour that remains).
REMOVED_OPTIONS = {"block_form": "standard", "positions": "end", "embed_scale": True, "init_std": 0.0,
                   "score_dropout": 0.0, "ffn": False, "s5_discretization": "zoh",
                   "negative_sharing": "batch"}
_LEGACY_IGNORED = {"config", "mhc", "no_mhc", "no_time", "model", "debug", "production", "maxlen_model"}
_LEGACY_TIME_SCALE = {"seconds": "second", "minutes": "minute", "hours": "hour", "days": "day"}


def from_legacy(flat: dict, where: str = "") -> RunConfig:
    """A :class:`RunConfig` from the flat mapping of the earlier layout (a run's saved
    ``config.yaml`` or an old YAML): every key spelled as its flag; ``mhc`` (or ``not no_mhc``)
    says whether the model had mHC, as the old default did."""
    flat = dict(flat)
    name = flat.get("model") or (SEED_MODEL_NO_TIME if flat.get("no_time") else SEED_MODEL)
    cls = get_model_class(name)
    for key, default in REMOVED_OPTIONS.items():
        if key in flat and flat.pop(key) != default:
            raise ValueError(f"{where}this configuration uses {key}, which left seqrec in the product cut; run it "
                             "with the commit named in experiments/README.md")
    if "time_scale" in flat:  # SS4Rec's name of its time unit (every old run saved every model's options)
        ts = flat.pop("time_scale")
        if cls.registry_name == "ss4rec":
            flat["time_unit"] = _LEGACY_TIME_SCALE.get(ts, ts)
    mhc_on = flat.get("mhc", not flat.get("no_mhc", False))
    has_mhc = "mhc" in {f.name for f in dataclasses.fields(cls.config_class)}
    if not has_mhc or not mhc_on:
        for k in [k for k in flat if k.startswith("mhc_")]:
            flat.pop(k)
    flat.pop("maxlen_model", None)
    table = flag_table(cls.registry_name)
    values: dict[str, dict] = {s: {} for s in SECTIONS}
    for key, v in flat.items():
        if key in _LEGACY_IGNORED:
            continue
        if key not in table:
            # an option of another model (old run folders saved every model's options)
            if key in all_flag_names():
                continue
            raise options._unknown(key, table, where)
        section, fl = table[key]
        values[section][key] = v
    try:
        model = options.from_flags(cls.config_class,
                                   {**values["model"], **({"mhc": True} if has_mhc and mhc_on else {})})
        cfg = RunConfig(model_name=cls.registry_name, model=model)
        for section, scls in SECTION_CLASSES.items():
            setattr(cfg, section, options.from_flags(scls, values[section]))
    except ValueError as exc:
        raise ValueError(f"{where}{exc}") from None
    return cfg


def resolve_config(flags: dict[str, Any] | None = None, config: str | Path | RunConfig | dict | None = None
                   ) -> RunConfig:
    """Section defaults < ``config`` (a YAML path, a nested dict or a RunConfig) < ``flags``
    (flag-named values, e.g. from the command line), with the seed's forms (module docstring)."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    for profile in PROFILES:  # --debug / --production
        if flags.pop(profile, False):
            flags["profile"] = profile
    if isinstance(config, (str, os.PathLike)):
        base, yaml_names_model = load_config(config), _dict_names_model(read_yaml(config))
    elif isinstance(config, dict):
        base, yaml_names_model = config_from_dict(config), _dict_names_model(config)
    elif isinstance(config, RunConfig):
        base, yaml_names_model = config, True
    else:
        base, yaml_names_model = None, False
    no_time, no_mhc = bool(flags.pop("no_time", False)), bool(flags.pop("no_mhc", False))
    flag_model = flags.pop("model", None)
    seed_form = flag_model is None and not yaml_names_model
    if flag_model is not None:
        name = get_model_class(flag_model).registry_name
    elif yaml_names_model:
        name = base.model_name
    else:
        name = SEED_MODEL_NO_TIME if no_time else SEED_MODEL
    cls = get_model_class(name)
    if no_time and cls.uses_time:
        raise ValueError(f"--no_time asks for SASRec, but the model is {name!r}: drop one of them")
    table = flag_table(name)
    unknown = [k for k in flags if k not in table]
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(table), n=1)
        other = [m for m in available_models() if unknown[0] in flag_table(m)]
        hint = (f" (it is an option of {', '.join(other)})" if other else
                f" (did you mean --{close[0]}?)" if close else "")
        raise ValueError(f"--{unknown[0]} is not an option of {name}{hint}")
    has_mhc_field = "mhc" in {f.name for f in dataclasses.fields(cls.config_class)}
    mhc_flags = [k for k in flags if k == "mhc" or k.startswith("mhc_")]
    if no_mhc and any(k != "mhc" for k in mhc_flags):
        raise ValueError(f"--no_mhc with --{mhc_flags[0]}: choose one")
    # the model section: its defaults (mHC on in the seed's form), the YAML's, then the flags
    if base is not None and base.model_name == name:
        model = base.model
    else:
        model = cls.config_class()
    if seed_form and has_mhc_field and model.mhc is None and not no_mhc:
        model = dataclasses.replace(model, mhc=options.from_dict(type(model), {"mhc": True}).mhc)
    model_flags = {k: v for k, v in flags.items() if table[k][0] == "model"}
    model = options.from_flags(cls.config_class, model_flags, model)
    if no_mhc and has_mhc_field:
        model = dataclasses.replace(model, mhc=None)
    cfg = RunConfig(model_name=name, model=model)
    for section, scls in SECTION_CLASSES.items():
        sec_flags = {k: v for k, v in flags.items() if table[k][0] == section}
        start = getattr(base, section) if base is not None else scls()
        setattr(cfg, section, options.from_flags(scls, sec_flags, start))
    return cfg


def _dict_names_model(d: dict) -> bool:
    """Whether a config mapping names its model (then the seed's default model is not used)."""
    m = d.get("model")
    return bool(m.get("name")) if isinstance(m, dict) else bool(m)  # nested, or the flat layout


# -- checks ---------------------------------------------------------------------------------------

def check_metric(metric: str, flag: str = "--metric") -> None:
    """``metric`` names one of the values every evaluation reports (e.g. ``ndcg@10``)."""
    name, _, k = str(metric).partition("@")
    if name not in ("hr", "ndcg", "mrr", "recall") or not k.isdigit():
        raise ValueError(f"{flag} must look like ndcg@10, hr@10, mrr@10 or recall@10, got {metric!r}")
    if int(k) not in KS:
        raise ValueError(f"{flag}: evaluations report K in {', '.join(map(str, KS))}, got {metric!r}")


def validate_config(cfg: RunConfig, *, need_run: bool = True) -> None:
    """Every setting, before anything is built: a message that names the flag and the fix."""
    if need_run:
        if not cfg.data.dataset:
            raise ValueError("--dataset is required")
        if not cfg.train.train_dir:
            raise ValueError("--train_dir is required")
    for section in SECTION_CLASSES:
        options.check(getattr(cfg, section))
    cfg.model_class.validate_config(cfg.model)
    check_metric(cfg.eval.metric)
    if cfg.train.loss == "sampled_softmax" and not cfg.train.num_negatives:
        raise ValueError("--loss sampled_softmax needs --num_negatives > 0 (the number of negatives it trains "
                         "against); e.g. --num_negatives 256")


# -- profiles -------------------------------------------------------------------------------------

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"


#: Profile values that only ever trim: the smaller of the profile's and the config's wins.
_TRIMS = ("num_epochs", "log_every")


def apply_profile(cfg: RunConfig) -> RunConfig:
    """``train.profile`` debug or production: the values of ``profiles/NAME.yaml`` over the
    config. ``num_epochs`` and ``log_every`` only go down; an explicit ``debug_users`` wins."""
    name = cfg.train.profile
    if name is None:
        return cfg
    prof = read_yaml(PROFILE_DIR / f"{name}.yaml")
    out = {}
    for section, values in prof.items():
        values = dict(values or {})
        for key in _TRIMS:
            have = getattr(getattr(cfg, section), key, None)
            if key in values and have:
                values[key] = min(values[key], have)
        if section == "train" and cfg.train.debug_users:
            values.pop("debug_users", None)
        out[section] = values
    return cfg.replace(**out)
