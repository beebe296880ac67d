"""RecBole atomic interaction files (``*.inter``).

Format: tab-separated, UTF-8, one header line whose fields are ``name:type`` with ``type``
one of ``token``, ``token_seq``, ``float``, ``float_seq``; e.g.::

    user_id:token	item_id:token	rating:float	timestamp:float
    1	1193	5.0	978300760

Decisions (reader, :func:`read_recbole_inter`):

* fields are found **by name** (``user_id``, ``item_id``, ``timestamp``, ``rating`` by
  default, overridable); other fields (``token_seq`` features, ...) are ignored;
* a ``timestamp`` field is **required** (sequential data needs an order); ``rating`` is
  optional (null when absent, or where a row leaves it empty);
* token ids stay **strings** unless every value of the column is a canonical integer
  (``0``, ``42``, ``-7``: no leading zeros, no ``+``), then the column is Int64. So
  ``"0000031852"``-style ids keep their zeros, and ML ids come back as Int64;
* float timestamps are converted to Int64 seconds by rounding **down**
  (``978300760.0`` → ``978300760``; ``5.9`` → ``5``); NaN/inf are errors;
* fields may be quoted with ``"`` (as pandas, which RecBole uses, accepts).

Decisions (writer, :func:`write_recbole_inter`):

* the header is exactly ``user_id:token<TAB>item_id:token<TAB>rating:float<TAB>timestamp:float``
  (with the default names), also when every rating is null;
* timestamps are written as **integers** (``978300760``) even though the field type is
  ``float``: RecBole parses them as floats, and the round trip stays exact;
* ratings are written in polars' shortest round-trip float form (``5.0``, ``3.5``); a
  null rating is an empty field;
* the file is written atomically (temporary file + rename).

``write_recbole_inter`` then ``read_recbole_inter`` gives a table equal to the input
(:meth:`Interactions.equals`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import polars as pl

from seqrec.data.interactions import DataFormatError, Interactions
from seqrec.data.readers._check import (
    Field,
    LineFormat,
    check_not_empty,
    first_line,
    float_to_seconds,
    ids_maybe_int,
    read_checked,
)
from seqrec.utils.io import atomic_path

RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
DEFAULT_FIELDS = {"user": "user_id", "item": "item_id", "rating": "rating", "timestamp": "timestamp"}


def parse_header(path: Path, line: str) -> list[tuple[str, str]]:
    """Split a RecBole header into ``[(name, type), ...]``; raise on a malformed one."""
    fields = []
    for raw in line.split("\t"):
        name, sep, ftype = raw.strip().rpartition(":")
        if not sep or not name or ftype not in RECBOLE_TYPES:
            raise DataFormatError(
                str(path),
                1,
                "expected a RecBole header of tab-separated 'name:type' fields with type in "
                f"{'/'.join(RECBOLE_TYPES)}, got field {raw!r}",
            )
        fields.append((name, ftype))
    names = [n for n, _ in fields]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataFormatError(str(path), 1, f"expected unique field names, {dup} repeated")
    return fields


def read_recbole_inter(
    path: str | os.PathLike,
    *,
    user_field: str = "user_id",
    item_field: str = "item_id",
    timestamp_field: str = "timestamp",
    rating_field: str = "rating",
) -> Interactions:
    """Read a RecBole ``.inter`` file (see the module docstring for the decisions)."""
    path = Path(path)
    check_not_empty(path, "a RecBole header such as 'user_id:token\\titem_id:token\\ttimestamp:float'")
    header_text = first_line(path)
    fields = parse_header(path, header_text)
    types = dict(fields)
    for role, name in (("user", user_field), ("item", item_field)):
        if name not in types:
            raise DataFormatError(
                str(path), 1, f"expected a {role} field {name!r} in the header, got {header_text!r}"
            )
        if types[name] != "token":
            raise DataFormatError(
                str(path), 1, f"expected field {name!r} to be of type token, got {types[name]}"
            )
    if timestamp_field not in types:
        raise DataFormatError(
            str(path),
            1,
            f"a timestamp field ({timestamp_field!r}) is required for sequential data; "
            f"header has {[n for n, _ in fields]}",
        )
    has_rating = rating_field in types
    for name in (timestamp_field,) + ((rating_field,) if has_rating else ()):
        if types[name] not in ("float", "token"):
            raise DataFormatError(
                str(path), 1, f"expected field {name!r} to be of type float, got {types[name]}"
            )

    col = {name: f"{name}:{ftype}" for name, ftype in fields}
    # the raw header may carry spaces around fields: use positions, not names, with polars
    position = {name: i for i, (name, _) in enumerate(fields)}
    wanted = [user_field, item_field, timestamp_field] + ([rating_field] if has_rating else [])
    dtypes = {f"f{i}": pl.String for i in range(len(fields))}
    dtypes[f"f{position[timestamp_field]}"] = pl.Float64
    if has_rating:
        dtypes[f"f{position[rating_field]}"] = pl.Float64

    diag_fields = []
    for name, _ in fields:
        if name in (user_field, item_field):
            diag_fields.append(Field(col[name], "token"))
        elif name == timestamp_field:
            diag_fields.append(Field(col[name], "float"))
        elif name == rating_field:
            diag_fields.append(Field(col[name], "float?"))
        else:
            diag_fields.append(Field(col[name], "any"))
    fmt = LineFormat("\t", tuple(diag_fields), header_lines=1)

    def read() -> pl.DataFrame:
        return pl.read_csv(
            path,
            has_header=False,
            skip_lines=1,
            separator="\t",
            schema=dtypes,
            columns=sorted(position[n] for n in wanted),
            quote_char='"',
        )

    ts_name = f"f{position[timestamp_field]}"

    def in_range(df: pl.DataFrame) -> bool:
        ts = df[ts_name]
        return bool(ts.min() >= -(2.0**62) and ts.max() <= 2.0**62)

    df = read_checked(
        path,
        fmt,
        read,
        required=[f"f{position[n]}" for n in (user_field, item_field, timestamp_field)],
        finite=[f"f{position[n]}" for n in wanted[2:]],
        extra_check=in_range,
    )
    user = ids_maybe_int(df[f"f{position[user_field]}"])
    item = ids_maybe_int(df[f"f{position[item_field]}"])
    frame = pl.DataFrame(
        {
            "user": user,
            "item": item,
            "rating": df[f"f{position[rating_field]}"]
            if has_rating
            else pl.Series("rating", [None] * df.height, dtype=pl.Float64),
            "timestamp": float_to_seconds(df[ts_name]),
        }
    )
    return Interactions(frame, source=str(path))


def write_recbole_inter(
    interactions: Interactions,
    path: str | os.PathLike,
    *,
    name_fields: Mapping[str, str] | None = None,
) -> Path:
    """Write ``interactions`` as a RecBole ``.inter`` file, atomically; return the path.

    ``name_fields`` maps our columns (``user``, ``item``, ``rating``, ``timestamp``) to
    RecBole field names; defaults are ``user_id``, ``item_id``, ``rating``, ``timestamp``.
    The header is ``<user>:token\\t<item>:token\\t<rating>:float\\t<timestamp>:float``.
    Null or empty ids are rejected (RecBole would read them as missing).
    """
    path = Path(path)
    names = dict(DEFAULT_FIELDS)
    if name_fields:
        unknown = set(name_fields) - set(names)
        if unknown:
            raise ValueError(f"name_fields: unknown columns {sorted(unknown)}; use {sorted(names)}")
        names.update(name_fields)
    frame = interactions.frame
    for c in ("user", "item"):
        s = frame[c]
        bad = s.null_count() > 0 or (s.dtype == pl.String and (s.str.len_bytes() == 0).any())
        if bad:
            raise ValueError(f"cannot write a RecBole file with null or empty {c} ids")
    types = {"user": "token", "item": "token", "rating": "float", "timestamp": "float"}
    out = frame.select(
        pl.col(c).alias(f"{names[c]}:{types[c]}") for c in ("user", "item", "rating", "timestamp")
    )
    with atomic_path(path) as tmp:
        out.write_csv(tmp, separator="\t", include_header=True, null_value="", line_terminator="\n")
    return path
