"""Typed option dataclasses: one declaration gives the YAML key, the command-line flag, the
help text, the default and the check of every setting.

A section (a model's config, the training settings, ...) is a dataclass whose fields are
declared with :func:`opt` (a value) or :func:`sub` (an optional nested section, e.g. a
transformer's ``mhc``). From that one declaration:

- :func:`to_dict` / :func:`from_dict`: the nested YAML form (unknown keys fail with the
  closest valid name; YAML 1.1 strings such as ``1e-4`` are converted to the field's type);
- :func:`flags` / :func:`from_flags`: the flat command-line form. A field's flag is its name
  (or ``flag=``), a nested section's fields get its prefix (``mhc.expansion_rate`` is
  ``--mhc_expansion_rate``); a nested section is switched on by its own flag
  (``--mhc``) or by any of its fields' flags;
- :func:`check`: types, choices and ranges, with a message naming the flag and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Flag:
    """One command-line flag of a section: ``--name``, the field path it sets, its type."""

    name: str
    path: tuple[str, ...]
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    is_switch: bool = False  # the ``--mhc`` flag that turns a nested section on


def opt(default: Any, help: str, *, choices: tuple | None = None, low: float | None = None,
        high: float | None = None, low_open: bool = False, high_open: bool = False,
        flag: str | None = None, nullable: bool = False) -> Any:
    """A field with its documentation and constraints (``low``/``high`` inclusive unless
    ``*_open``). ``nullable``: ``None`` is allowed besides values of the field's type."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "low": low, "high": high,
            "low_open": low_open, "high_open": high_open, "flag": flag, "nullable": nullable or default is None}
    return field(default=default, metadata=meta)


def sub(cls: type, help: str, prefix: str) -> Any:
    """An optional nested section (absent = ``None`` = off), its flags prefixed ``prefix_``."""
    return field(default=None, metadata={"help": help, "sub": cls, "prefix": prefix})


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_type(cls: type, f: dataclasses.Field) -> type:
    """The value type of ``f`` (``int | None`` -> ``int``)."""
    t = _hints(cls)[f.name]
    args = [a for a in typing.get_args(t) if a is not type(None)]
    if args:
        t = args[0]
    return t if isinstance(t, type) else str


def _describe(t: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(t, t.__name__)


def coerce(value: Any, t: type, name: str) -> Any:
    """``value`` in type ``t``: YAML/CLI strings for numbers and booleans are converted; a list
    or mapping where a single value belongs is refused naming ``name``."""
    if value is None:
        return None
    if isinstance(value, (list, dict)):
        kind = "a list" if isinstance(value, list) else "a mapping"
        raise ValueError(f"{name} must be {_describe(t)}, got {kind} ({value!r})")
    if t is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "y", "on"):
            return True
        if s in ("0", "false", "no", "n", "off"):
            return False
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if t in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"{name} must be {_describe(t)}, got {value!r}")
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be {_describe(t)}, got {value!r}") from None
        if t is float:
            return x if not isinstance(value, float) else value
        if not x.is_integer():
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(x)
    if t is str:
        return value if isinstance(value, str) else str(value)
    return value


# -- nested dict form ---------------------------------------------------------------------------

def to_dict(obj: Any) -> dict:
    """The nested plain-dict form (nested sections as dicts, absent ones as None)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = to_dict(v) if dataclasses.is_dataclass(v) else v
    return out


def _unknown(key: str, known, where: str) -> ValueError:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"{where}unknown option {key!r}{hint}")


def from_dict(cls: type, data: dict | None, where: str = "", base: Any = None) -> Any:
    """An instance of ``cls`` from its nested dict form, over ``base`` (default: the defaults).

    ``where`` prefixes messages (e.g. ``"configs/x.yaml: model."``)."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {f.name: getattr(base, f.name) for f in fields.values()} if base is not None else {}
    for key, v in data.items():
        if key not in fields:
            raise _unknown(key, fields, where)
        f = fields[key]
        if "sub" in f.metadata:
            if v is None or v is False:
                values[key] = None
            elif v is True:
                values[key] = values.get(key) or f.metadata["sub"]()
            elif isinstance(v, dict):
                values[key] = from_dict(f.metadata["sub"], v, f"{where}{key}.", values.get(key))
            elif dataclasses.is_dataclass(v):
                values[key] = v
            else:
                raise ValueError(f"{where}{key} must be a mapping of its options, true or null, got {v!r}")
        else:
            values[key] = coerce(v, field_type(cls, f), f"{where}{key}")
    return cls(**values)


# -- flat flag form -----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def flags(cls: type, prefix: str = "", path: tuple[str, ...] = ()) -> tuple[Flag, ...]:
    """The command-line flags of ``cls`` (nested sections included, with their switch)."""
    out = []
    for f in dataclasses.fields(cls):
        m = f.metadata
        if "sub" in m:
            p = f"{prefix}{m['prefix']}"
            out.append(Flag(p, (*path, f.name), bool, False, m["help"], is_switch=True))
            out.extend(flags(m["sub"], f"{p}_", (*path, f.name)))
            continue
        name = m.get("flag") or f"{prefix}{f.name}"
        default = f.default if f.default is not MISSING else None
        out.append(Flag(name, (*path, f.name), field_type(cls, f), default, m.get("help", ""), m.get("choices")))
    return tuple(out)


def from_flags(cls: type, values: dict[str, Any], base: Any = None) -> Any:
    """An instance of ``cls`` from flag-named ``values`` (only the given flags change ``base``).

    A nested section is created (with its defaults) when its switch is true or any of its
    fields' flags is given, and removed when its switch is false."""
    nested: dict = {}
    for fl in flags(cls):  # a switch comes before its section's fields
        if fl.name not in values:
            continue
        v, head = values[fl.name], fl.path[0]
        if fl.is_switch:
            nested[head] = nested.get(head) or {} if coerce(v, bool, f"--{fl.name}") else None
        elif len(fl.path) == 1:
            nested[head] = coerce(v, fl.type, f"--{fl.name}")
        elif head in nested and nested[head] is None:
            raise ValueError(f"--{fl.name} sets an option of a section that is switched off")
        else:
            nested.setdefault(head, {})[fl.path[1]] = coerce(v, fl.type, f"--{fl.name}")
    return from_dict(cls, nested, "", base)


# -- checks -------------------------------------------------------------------------------------

def _range_text(m: dict, t: type) -> str:
    lo, hi = m.get("low"), m.get("high")
    if t is int and hi is None and lo in (0, 1) and not m.get("low_open"):
        return "a positive integer" if lo == 1 else "a non-negative integer"
    if lo is not None and hi is not None:
        return f"in {'(' if m['low_open'] else '['}{lo:g}, {hi:g}{')' if m['high_open'] else ']'}"
    if lo is not None:
        return f"{'>' if m['low_open'] else '>='} {lo:g}"
    return f"{'<' if m['high_open'] else '<='} {hi:g}"


def check(obj: Any, prefix: str = "") -> None:
    """Types, choices and ranges of every field of ``obj`` (nested sections included); the
    message names the flag (``--name``) and what it must be."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        m = f.metadata
        if "sub" in m:
            if v is not None:
                check(v, f"{prefix}{m['prefix']}_")
            continue
        name = f"--{m.get('flag') or prefix + f.name}"
        t = field_type(type(obj), f)
        if v is None:
            if m.get("nullable", False):
                continue
            raise ValueError(f"{name} must be {_describe(t)}, got None")
        ok = {bool: lambda x: isinstance(x, bool),
              int: lambda x: isinstance(x, int) and not isinstance(x, bool),
              float: lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x),
              str: lambda x: isinstance(x, str)}.get(t, lambda x: True)(v)
        if not ok:
            raise ValueError(f"{name} must be {_describe(t)}{' (finite)' if t is float else ''}, got {v!r}")
        if m.get("choices") and v not in m["choices"]:
            raise ValueError(f"{name} must be one of {', '.join(map(str, m['choices']))}, got {v!r}")
        lo, hi = m.get("low"), m.get("high")
        if lo is not None and (v <= lo if m.get("low_open") else v < lo) or \
                hi is not None and (v >= hi if m.get("high_open") else v > hi):
            raise ValueError(f"{name} must be {_range_text(m, t)}, got {v!r}")
