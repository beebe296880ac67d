"""Search spaces: YAML over the run config's settings, checked before any trial runs.

A space file maps settings, by their flag names (the run config's vocabulary: ``lr``,
``hidden_units``, ``mhc_expansion_rate``, ``eval_batch_size``, ...), to a distribution::

    # configs/tune/capacity.yaml -- the seed's phase 2
    hidden_units: {type: int, low: 48, high: 512, step: 16}
    num_blocks:   {type: int, low: 1, high: 6}
    num_heads:    {type: categorical, choices: [1, 2, 4, 8]}
    lr:           {type: float, low: 1.0e-4, high: 5.0e-3, log: true}
    metric: ndcg@10          # optional: the validation metric to maximise (default: the config's;
                             # the phases of one study must agree)

``float`` (``log`` or linear, optional ``step``), ``int`` (``step``, ``log``) and ``categorical``
(``choices``). Before any trial, every value is checked against the setting's type and range,
and the combinations a study can sample are built into run configs and validated: a space that
could sample a broken configuration (``hidden_units % num_heads != 0``, say) is refused, naming
the line and a combination that breaks. For the grid sampler, float settings need ``grid:`` values.
"""

from __future__ import annotations

import difflib
import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import RunConfig, check_metric, flag_table, resolve_config, validate_config
from ..utils.options import coerce

TYPES = ("float", "int", "categorical")
#: Settings a study may not vary: where the run goes and what it is evaluated on.
FIXED = {"dataset", "train_dir", "split", "split_fraction", "profile", "device", "num_threads", "progress", "seed"}
MAX_COMBINATIONS = 20_000  # above this, a random sample of combinations is validated


@dataclass
class Param:
    name: str
    type: str
    line: int
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: list | None = None
    grid: list | None = None

    def suggest(self, trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, self.choices)
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def values(self) -> list:
        """The values a grid runs, or the edges (and middle) of a float range for the checks."""
        if self.type == "categorical":
            return list(self.choices)
        if self.grid is not None:
            return list(self.grid)
        if self.type == "int":
            step = int(self.step or 1)
            if self.log:
                return sorted({int(self.low), int(self.high)})
            return list(range(int(self.low), int(self.high) + 1, step))
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return [self.low, mid, self.high]


@dataclass
class SearchSpace:
    path: str
    params: list[Param]
    metric: str | None = None
    metric_line: int | None = None

    def suggest(self, trial) -> dict[str, Any]:
        return {p.name: p.suggest(trial) for p in self.params}

    def grid(self) -> dict[str, list]:
        """The search space of Optuna's GridSampler (every float needs ``grid:``)."""
        out = {}
        for p in self.params:
            if p.type == "float" and p.grid is None and p.step is None:
                raise ValueError(f"{self.path}, line {p.line}: {p.name}: the grid sampler needs `grid: [values]` "
                                 "for a float range (or a step)")
            if p.type == "float" and p.grid is None:
                n = int(round((p.high - p.low) / p.step))
                out[p.name] = [p.low + i * p.step for i in range(n + 1)]
            else:
                out[p.name] = p.values()
        return out


def _fail(path, line, msg) -> ValueError:
    return ValueError(f"{path}, line {line}: {msg}")


def load_space(path: str | Path, base: RunConfig, combinations: bool = True) -> SearchSpace:
    """Parse and check a space file against ``base`` (the study's starting configuration);
    ``combinations``: also build every configuration it can sample from ``base``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"search space {path} not found")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else "?"
        raise _fail(path, line, f"YAML syntax error: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict) or node is None or not data:
        raise ValueError(f"{path}: a search space is a mapping of setting: distribution, and it is empty")
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value}
    table = flag_table(base.model_name)
    params, metric, metric_line = [], None, None
    for name, spec in data.items():
        line = lines.get(name, "?")
        if name == "metric":
            metric, metric_line = spec, line
            try:
                check_metric(str(spec), "metric")
            except ValueError as exc:
                raise _fail(path, line, f"{exc} (the evaluation reports hr, ndcg, mrr and recall at 5, 10, 20)") from None
            continue
        if name not in table or name in FIXED:
            close = difflib.get_close_matches(str(name), sorted(set(table) - FIXED), n=1)
            why = "is fixed for a study" if name in FIXED else f"is not a setting of {base.model_name}"
            raise _fail(path, line, f"{name!r} {why}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        section, fl = table[name]
        if fl.is_switch:
            raise _fail(path, line, f"{name!r} switches a section on or off: search its options instead")
        params.append(_param(path, line, name, spec, fl))
    space = SearchSpace(str(path), params, metric, metric_line)
    if combinations:
        _check_combinations(space, base)
    return space


def _param(path, line, name, spec, fl) -> Param:
    if not isinstance(spec, dict) or spec.get("type") not in TYPES:
        raise _fail(path, line, f"{name}: give {{type: float|int|categorical, ...}}, got {spec!r}")
    kind = spec["type"]
    known = {"type", "low", "high", "step", "log", "choices", "grid"}
    if set(spec) - known:
        raise _fail(path, line, f"{name}: unknown key {sorted(set(spec) - known)[0]!r} (use {', '.join(sorted(known))})")
    want = fl.type
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _fail(path, line, f"{name}: a categorical needs a non-empty list of choices")
        try:
            choices = [coerce(c, want, name) for c in choices]
        except ValueError as exc:
            raise _fail(path, line, f"{exc} (a choice of the wrong type)") from None
        if fl.choices:
            bad = [c for c in choices if c not in fl.choices]
            if bad:
                raise _fail(path, line, f"{name}: {bad[0]!r} is not one of {', '.join(map(str, fl.choices))}")
        if len(set(map(repr, choices))) != len(choices):
            raise _fail(path, line, f"{name}: repeated choices")
        return Param(name, kind, line, choices=choices)
    if want not in (int, float) or (kind == "int" and want is not int):
        raise _fail(path, line, f"{name} is {'a ' + want.__name__ if want in (bool, str) else 'an integer'} setting: "
                                f"use type {'categorical' if want in (bool, str) else 'int'}")
    try:
        low, high = coerce(spec.get("low"), float, f"{name}.low"), coerce(spec.get("high"), float, f"{name}.high")
    except ValueError as exc:
        raise _fail(path, line, str(exc)) from None
    if low is None or high is None:
        raise _fail(path, line, f"{name}: a {kind} range needs low and high")
    if not low < high:
        raise _fail(path, line, f"{name}: the range [{low:g}, {high:g}] is {'empty' if low == high else 'inverted'}")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise _fail(path, line, f"{name}: a log range needs low > 0, got {low:g}")
    step = spec.get("step")
    if step is not None:
        step = coerce(step, float, f"{name}.step")
        if step <= 0 or (kind == "int" and not float(step).is_integer()):
            raise _fail(path, line, f"{name}: step must be a positive {'integer' if kind == 'int' else 'number'}")
        if log:
            raise _fail(path, line, f"{name}: step and log exclude each other")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise _fail(path, line, f"{name}: an int range needs integer low and high")
    grid = spec.get("grid")
    if grid is not None:
        if not isinstance(grid, list) or not grid:
            raise _fail(path, line, f"{name}: grid must be a non-empty list")
        grid = [coerce(g, want, name) for g in grid]
        if any(not low <= g <= high for g in grid):
            raise _fail(path, line, f"{name}: grid values must lie in [{low:g}, {high:g}]")
    return Param(name, kind, line, low=int(low) if kind == "int" else low, high=int(high) if kind == "int" else high,
                 step=step, log=log, grid=grid)


def _check_combinations(space: SearchSpace, base: RunConfig) -> None:
    """Build and validate the configurations the space can sample (every combination of the
    discrete values and the float ranges' edges; a random sample when there are too many)."""
    values = [p.values() for p in space.params]
    total = math.prod(len(v) for v in values)
    if total <= MAX_COMBINATIONS:
        combos = itertools.product(*values)
    else:
        rng = random.Random(0)
        combos = (tuple(rng.choice(v) for v in values) for _ in range(MAX_COMBINATIONS))
    for combo in combos:
        flags = dict(zip((p.name for p in space.params), combo))
        try:
            validate_config(resolve_config(flags, base), need_run=False)
        except ValueError as exc:
            # the first parameter the message names, else the first of the space
            named = next((p for p in space.params if p.name in str(exc)), space.params[0])
            shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in flags.items())
            raise _fail(space.path, named.line, f"the space can sample a broken configuration ({shown}): {exc}") from None
