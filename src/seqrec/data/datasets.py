"""Named datasets: where their raw files come from and the recipe that prepares them.

``prepare_dataset("ml-1m")`` downloads (or, with ``raw=``, reads a local copy of) the
GroupLens file, applies the recipe and writes a dataset folder under
``$SEQREC_HOME/datasets/<name>`` (default ``~/.cache/seqrec/datasets/<name>``).
Any RecBole ``.inter`` (or other supported file) prepares under a name of your choice with
``raw=PATH``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl

from ..utils.io import FolderInUseError, check_replaceable, file_md5, folder_lock, recover_dir
from .download import seqrec_home
from .interactions import Interactions
from .prepare import Recipe, prepare
from .store import MANIFEST, SeqDataset, load_dataset, save_dataset


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    fmt: str  # reader key: ml1m, ml100k, ml_csv, recbole, amazon, sasrec, synthetic
    recipe: Recipe
    downloadable: bool
    expected: dict | None = None  # statistics the recipe reproduces from the full file
    note: str = ""


# The SASRec/SS4Rec ML-1M recipe: counts taken once, users and items with < 5 dropped.
SASREC_5 = Recipe(min_user=5, min_item=5, iterative=False)

SPECS: dict[str, DatasetSpec] = {
    "ml-1m": DatasetSpec("ml-1m", "ml1m", SASREC_5, True, {"users": 6040, "items": 3416, "interactions": 999611},
                         "MovieLens 1M; SASRec/SS4Rec recipe (items with < 5 ratings dropped)"),
    "ml-100k": DatasetSpec("ml-100k", "ml100k", Recipe(), True, {"users": 943, "items": 1682, "interactions": 100000},
                           "MovieLens 100K, unfiltered"),
    "ml-20m": DatasetSpec("ml-20m", "ml_csv", SASREC_5, True),
    "ml-25m": DatasetSpec("ml-25m", "ml_csv", SASREC_5, True),
    "ml-32m": DatasetSpec("ml-32m", "ml_csv", SASREC_5, True, None,
                          "MovieLens 32M (32,000,204 ratings, 200,948 users); 5-core single pass"),
    "ml-latest-small": DatasetSpec("ml-latest-small", "ml_csv", SASREC_5, True),
    "beauty": DatasetSpec("beauty", "amazon", Recipe(), False,
                          {"users": 22363, "items": 12101, "interactions": 198502},
                          "Amazon Beauty, 5-core sequential version (pass --raw FOLDER with Beauty_*_org_rank.txt)"),
    "sports": DatasetSpec("sports", "amazon", Recipe(), False,
                          {"users": 35598, "items": 18357, "interactions": 296337},
                          "Amazon Sports, 5-core sequential version (pass --raw FOLDER with Sports_*_org_rank.txt)"),
    "synthetic": DatasetSpec("synthetic", "synthetic", Recipe(), False, None,
                             "generated item chains with popularity skew and realistic gaps"),
}

AMAZON_PREFIX = {"beauty": "Beauty", "sports": "Sports"}


#: A dataset name: letters, digits, ``-``, ``_`` and ``.``, not starting with ``.`` or ``-``
#: (so never a path, ``.`` or ``..``). A prepared folder elsewhere is given by its path.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def check_dataset_name(name: str) -> str:
    """``name`` if it is a plain dataset name, else a ValueError saying what is allowed."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or len(name) > 128:
        raise ValueError(
            f"{name!r} is not a dataset name: use letters, digits, '-', '_' and '.' (not first), e.g. ml-1m or "
            "my_shop; to write a prepared dataset elsewhere pass --out FOLDER, and to use one give its folder path")
    return name


def datasets_root() -> Path:
    return seqrec_home() / "datasets"


def default_dataset_dir(name: str) -> Path:
    """``$SEQREC_HOME/datasets/NAME``, for a plain ``name`` only (checked to stay inside)."""
    root = datasets_root()
    folder = root / check_dataset_name(name)
    if folder.parent.resolve() != root.resolve():  # cannot happen for a plain name; kept as the invariant
        raise ValueError(f"dataset {name!r} would resolve outside {root}")
    return folder


def _recover(folder: Path, log=print) -> None:
    """Repair a dataset folder a killed prepare left half-swapped (when no one is preparing it)."""
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists() and not old.exists():
        return
    try:
        with folder_lock(folder, f"dataset folder {folder}"):
            for line in recover_dir(folder):
                if log:
                    log(line)
    except FolderInUseError:
        pass  # someone is preparing it right now; they repair it


def _read_raw(name: str, spec: DatasetSpec | None, raw: str | Path | None, fmt: str | None, url: str | None,
              synthetic_kwargs: dict | None) -> tuple[Interactions, dict, pl.DataFrame | None]:
    """Read the raw interactions of a dataset; return (interactions, provenance, titles)."""
    from . import readers
    from .titles import read_titles

    given_fmt = fmt
    fmt = fmt or (spec.fmt if spec else None)
    titles = None
    if fmt == "synthetic":
        from .synthetic import generate

        kw = synthetic_kwargs or {}
        inter = generate(**kw)
        return inter, {"reader": "synthetic", "params": kw}, None
    if fmt == "amazon":
        if raw is None:
            raise ValueError(f"{name}: there is no download for the Amazon sets; pass --raw FOLDER "
                             f"(a folder with {AMAZON_PREFIX.get(name, '<Name>')}_item_org_rank.txt and _time_org_rank.txt)")
        raw = Path(raw)
        prefix = AMAZON_PREFIX.get(name, name)
        # either file of the pair may be given, or the folder: its <Prefix>_item_org_rank.txt, or its only pair
        given = raw
        if raw.is_dir():
            given = raw / f"{prefix}_item_org_rank.txt"
            if not given.exists():
                key, given = readers.detect_format(raw)
                if key != "amazon":
                    raise ValueError(f"{name}: {raw} holds a {key} file ({given.name}), not an Amazon pair")
        item_path, time_path = readers.amazon_pair(given)
        for p in (item_path, time_path):
            if not p.exists():
                raise FileNotFoundError(f"{name}: expected {p}")
        inter = readers.read_amazon(item_path, time_path)
        return inter, {"reader": "amazon", "path": str(item_path), "time_path": str(time_path),
                       "md5": file_md5(item_path), "time_md5": file_md5(time_path)}, None
    if spec is not None and spec.downloadable and given_fmt in (None, spec.fmt):  # else: a user file, --format
        from .download import fetch, locate_items, locate_ratings

        folder = fetch(name, raw=raw, url=url)
        path = locate_ratings(name, folder) if Path(folder).is_dir() else Path(folder)
        reader = {"ml1m": readers.read_ml1m, "ml100k": readers.read_ml100k, "ml_csv": readers.read_ml_csv}[spec.fmt]
        inter = reader(path)
        items_path = locate_items(name, folder) if Path(folder).is_dir() else locate_items(name, Path(folder).parent)
        if items_path is not None and Path(items_path).exists():
            titles = read_titles(items_path)
        return inter, {"reader": spec.fmt, "path": str(path), "md5": file_md5(path),
                       "downloaded": raw is None}, titles
    if raw is None:
        raise ValueError(f"unknown dataset {name!r}: pass --raw PATH to a ratings/.inter file, "
                         f"or use one of {', '.join(SPECS)}")
    inter = readers.read_any(raw, fmt=fmt)
    return inter, {"reader": fmt or "auto", "path": str(raw), "md5": file_md5(raw) if Path(raw).is_file() else None}, None


def prepare_dataset(
    name: str,
    *,
    raw: str | Path | None = None,
    out: str | Path | None = None,
    fmt: str | None = None,
    recipe: Recipe | None = None,
    url: str | None = None,
    synthetic_kwargs: dict | None = None,
    time_unit_in: str | None = None,
    log=print,
) -> SeqDataset:
    """Read, filter, remap and store dataset ``name``; return the loaded folder.

    ``out``: the folder to write (default ``$SEQREC_HOME/datasets/NAME``); an existing folder is
    replaced only if it is a prepared dataset. ``time_unit_in``: the unit of the source's
    timestamps (``s``, ``ms``, ``us``); by default seconds, and values that can only be
    milliseconds or finer are refused before anything is written."""
    check_dataset_name(name)
    spec = SPECS.get(name)
    recipe = recipe if recipe is not None else (spec.recipe if spec else Recipe())
    folder = Path(out) if out is not None else default_dataset_dir(name)
    check_replaceable(folder, MANIFEST, f"dataset {name!r}")  # before any reading or download
    with folder_lock(folder, f"dataset folder {folder}"):
        for line in recover_dir(folder):
            if log:
                log(line)
        t0 = time.perf_counter()
        inter, source, titles = _read_raw(name, spec, raw, fmt, url, synthetic_kwargs)
        inter, time_note = check_timestamps(inter, time_unit_in, log=log)
        t_read = time.perf_counter() - t0
        prepared = prepare(inter, recipe)
        t_prep = time.perf_counter() - t0 - t_read
        source = {**source, "raw_rows": len(inter), "raw_users": inter.n_users, "raw_items": inter.n_items,
                  **time_note}
        ds = save_dataset(folder, prepared, name=name, source=source, item_titles=titles)
    if log:
        log(f"read {len(inter):,} rows in {t_read:.1f}s, prepared in {t_prep:.1f}s, "
            f"saved in {time.perf_counter() - t0 - t_read - t_prep:.1f}s")
    if spec and spec.expected and log:
        got = {k: ds.stats[k] for k in spec.expected}
        if got != spec.expected and recipe == spec.recipe and source.get("raw_rows", 0) >= spec.expected["interactions"]:
            log(f"warning: {name} statistics {got} differ from the reference {spec.expected}")
    return ds


#: Seconds per unit of a source's timestamps (``--time_unit_in``).
TIME_UNITS_IN = {"s": 1, "ms": 1_000, "us": 1_000_000}
#: Seconds timestamps stay below this (the year 5138); larger values are milliseconds or finer.
MAX_SECONDS = 100_000_000_000


def check_timestamps(inter: Interactions, unit: str | None = None, log=print) -> tuple[Interactions, dict]:
    """Timestamps in seconds, checked before anything is written.

    ``unit`` ``ms``/``us`` converts (floor division) and says so; ``None`` refuses values that
    cannot be seconds, naming the file and the fix. Negative timestamps and exact duplicate rows
    (same user, item and timestamp) are counted and reported as warnings."""
    where = inter.source or "input"
    if unit is not None and unit not in TIME_UNITS_IN:
        raise ValueError(f"--time_unit_in must be one of {', '.join(TIME_UNITS_IN)}, got {unit!r}")
    ts = inter.frame["timestamp"]
    note: dict = {}
    if len(ts) and ts.null_count() == 0:
        biggest = int(ts.abs().max())
        if unit is None and biggest >= MAX_SECONDS:
            guess = "milliseconds" if biggest < MAX_SECONDS * 1000 else "microseconds"
            flag = "ms" if guess == "milliseconds" else "us"
            raise ValueError(
                f"{where}: timestamps look like {guess}, not seconds (the largest, {biggest}, would be the year "
                f"{1970 + biggest // 31_556_952:,}); nothing was written. Pass --time_unit_in {flag} to convert "
                f"them to seconds")
        factor = TIME_UNITS_IN.get(unit or "s", 1)
        if factor != 1:
            inter = Interactions(inter.frame.with_columns(pl.col("timestamp") // factor), inter.source)
            note = {"time_unit_in": unit}
            if log:
                log(f"{where}: timestamps converted from {unit} to seconds (--time_unit_in {unit})")
        negative = int((inter.frame["timestamp"] < 0).sum())
        if negative and log:
            log(f"warning: {where}: {negative:,} rows have negative timestamps (before 1970); they are kept as given")
    dups = len(inter) - inter.frame.select("user", "item", "timestamp").n_unique()
    if dups and log:
        log(f"warning: {where}: {dups:,} rows repeat another row's user, item and timestamp; they are kept "
            "(--dedup first|last keeps one interaction per user and item)")
    return inter, note


def resolve_dataset(name_or_path: str | Path, *, prepare_if_missing: bool = True, log=print) -> SeqDataset:
    """A dataset folder path, a name prepared earlier, or a downloadable name (prepared now)."""
    p = Path(name_or_path)
    if (p / MANIFEST).exists():
        return load_dataset(p)
    name = str(name_or_path)
    if not NAME_PATTERN.match(name):
        raise ValueError(f"{name!r} is neither a prepared dataset folder (no {MANIFEST} in it) nor a dataset name; "
                         "run `seqrec prepare` first, or check the path")
    folder = default_dataset_dir(name)
    _recover(folder, log)
    if (folder / MANIFEST).exists():
        return load_dataset(folder)
    spec = SPECS.get(name)
    if spec is None:
        raise ValueError(
            f"unknown dataset {name!r}: not a prepared folder, not in {seqrec_home() / 'datasets'}, "
            f"and not one of {', '.join(SPECS)}. Run `seqrec prepare {name} --raw PATH` first."
        )
    if not (prepare_if_missing and (spec.downloadable or spec.fmt == "synthetic")):
        raise ValueError(f"dataset {name!r} is not prepared yet: run `seqrec prepare {name} --raw PATH`")
    return prepare_dataset(name, log=log)


def with_recipe_overrides(recipe: Recipe, **overrides) -> Recipe:
    """Replace the fields given (non-None) in ``overrides``."""
    return replace(recipe, **{k: v for k, v in overrides.items() if v is not None})
