"""Validation helpers shared by the readers.

Every reader follows the same strategy:

1. **fast path** — polars parses the whole file with a fixed schema (multi-threaded, no
   Python per line);
2. **validation** — cheap column-level checks on the result (no nulls where a value is
   required, finite numbers, ...);
3. **diagnosis** — only when 1 or 2 fails, :func:`diagnose` finds the *first* offending
   line and raises :class:`DataFormatError` naming the file, the 1-based line number and
   what was expected. It reads the lines with polars, matches them in bulk against a
   regex of certainly-valid lines and checks only the remaining lines in Python (ML-32M
   size: ~20 s); if the lines cannot be read that way it checks every line in Python.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NoReturn, Sequence

import polars as pl

from seqrec.data.interactions import DataFormatError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_INT_RE = re.compile(r" *[+-]?[0-9]+ *")


@dataclass(frozen=True)
class Field:
    """One field of a line-oriented format, for diagnostics.

    ``kind`` is one of ``"int"`` (64-bit integer), ``"float"`` (finite number),
    ``"float?"`` (finite number or empty), ``"token"`` (any non-empty text) or ``"any"``.
    """

    name: str
    kind: str


@dataclass(frozen=True)
class LineFormat:
    """How one line of a file should look (used by :func:`diagnose`)."""

    separator: str
    fields: tuple[Field, ...]
    header_lines: int = 0
    encoding: str = "utf-8"

    def describe(self) -> str:
        names = ", ".join(f.name for f in self.fields)
        return f"{len(self.fields)} fields separated by {self.separator!r} ({names})"


def check_value(kind: str, text: str) -> str | None:
    """Return ``None`` when ``text`` is a valid value of ``kind``, else what was expected."""
    if kind == "any":
        return None
    if kind == "token":
        return None if text != "" else "a non-empty value"
    if kind == "int":
        if _INT_RE.fullmatch(text) and INT64_MIN <= int(text) <= INT64_MAX:
            return None
        return "an integer"
    if kind in ("float", "float?"):
        if kind == "float?" and text.strip() == "":
            return None
        if "_" not in text:
            try:
                if math.isfinite(float(text)):
                    return None
            except ValueError:
                pass
        return "a number" if kind == "float" else "a number or an empty value"
    raise ValueError(f"unknown field kind {kind!r}")


def check_not_empty(path: Path, fmt_description: str) -> None:
    """Raise when ``path`` is empty (or holds only whitespace)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise DataFormatError(str(path), 1, f"empty file: expected {fmt_description}")
    if size < 4096:
        with open(path, "rb") as f:
            if not f.read().strip():
                raise DataFormatError(str(path), 1, f"empty file: expected {fmt_description}")


def first_line(path: Path, encoding: str = "utf-8") -> str:
    """The first line of ``path`` without its line ending (BOM removed)."""
    with open(path, "rb") as f:
        raw = f.readline(1 << 20)
    text = raw.decode(encoding, errors="replace").rstrip("\r\n")
    return text.lstrip("\ufeff")


def iter_lines(path: Path, encoding: str):
    """Yield ``(line_number, text)`` for every line, line endings stripped."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError:
                raise DataFormatError(
                    str(path), number, f"expected {encoding} text, got undecodable bytes"
                ) from None
            yield number, text.rstrip("\r\n")


_FAST_VALUE = {
    # regexes (Rust syntax) accepting only values check_value() accepts (a strict subset)
    "int": r" *[+-]?[0-9]{1,18} *",
    "float": r" *[+-]?(?:[0-9]{1,20}(?:\.[0-9]{0,20})?|\.[0-9]{1,20})(?:[eE][+-]?[0-9]{1,2})? *",
}


def _good_line_regex(fmt: LineFormat) -> str | None:
    """A regex matching lines that are certainly valid (None if it cannot be expressed)."""
    if len(fmt.separator) != 1 and any(f.kind in ("token", "any") for f in fmt.fields):
        return None
    sep = re.escape(fmt.separator)
    parts = []
    for field in fmt.fields:
        if field.kind in _FAST_VALUE:
            parts.append(_FAST_VALUE[field.kind])
        elif field.kind == "float?":
            parts.append(f"(?:{_FAST_VALUE['float']}| *)")
        elif field.kind in ("token", "any"):
            parts.append(f"[^{sep}]{'+' if field.kind == 'token' else '*'}")
        else:
            return None
    return "^" + sep.join(parts) + "$"


class _Scan:
    """State of a diagnostic scan: blank lines are allowed only at the end of the file."""

    def __init__(self, path: Path, fmt: LineFormat):
        self.path, self.fmt = path, fmt
        self.blank_at: int | None = None
        self.n_data = 0

    def good(self, number: int) -> None:
        if self.blank_at is not None:
            raise DataFormatError(str(self.path), self.blank_at, f"blank line: expected {self.fmt.describe()}")
        self.n_data += 1

    def check(self, number: int, text: str) -> None:
        """Raise if line ``number`` (``text``, line ending stripped) is not valid."""
        fmt = self.fmt
        if text.strip() == "":
            if self.blank_at is None:
                self.blank_at = number
            return
        self.good(number)
        parts = text.split(fmt.separator)
        if len(parts) != len(fmt.fields):
            raise DataFormatError(
                str(self.path),
                number,
                f"expected {fmt.describe()}, got {len(parts)} field(s): {_clip(text)!r}",
            )
        for field, value in zip(fmt.fields, parts):
            expected = check_value(field.kind, value)
            if expected is not None:
                raise DataFormatError(
                    str(self.path), number, f"expected {expected} for {field.name}, got {_clip(value)!r}"
                )


def _scan_python(scan: _Scan) -> None:
    """Check every line in Python (slow: several seconds per million lines)."""
    for number, text in iter_lines(scan.path, scan.fmt.encoding):
        if number > scan.fmt.header_lines:
            scan.check(number, text)


def _scan_polars(scan: _Scan) -> bool:
    """Read the lines with polars, match them against a 'certainly valid' regex in bulk,
    and check only the other lines in Python. False if the lines cannot be read this way
    (odd bytes, a 0x1f character): the caller then scans in Python."""
    pattern = _good_line_regex(scan.fmt)
    if pattern is None:
        return False
    utf8 = scan.fmt.encoding.replace("-", "").lower() == "utf8"
    try:
        lines = pl.read_csv(
            scan.path,
            has_header=False,
            skip_lines=scan.fmt.header_lines,
            separator="\x1f",
            quote_char=None,
            schema={"line": pl.String},
            encoding="utf8" if utf8 else "utf8-lossy",
        ).to_series()
    except (pl.exceptions.PolarsError, ValueError):
        return False
    if not utf8 and lines.str.contains("\ufffd", literal=True).any():
        return False  # undecodable bytes: let the Python scan decode them properly
    first = scan.fmt.header_lines + 1
    suspects = (~lines.str.contains(pattern).fill_null(False)).arg_true()
    done = 0  # rows before this index are known good
    for idx in suspects:
        idx = int(idx)
        if idx > done:
            scan.good(first + idx - 1)  # a run of good lines (only the blank rule matters)
            scan.n_data += idx - done - 1
        text = lines[idx]
        scan.check(first + idx, (text or "").rstrip("\r"))
        done = idx + 1
    if lines.len() > done:
        scan.good(first + lines.len() - 1)
        scan.n_data += lines.len() - done - 1
    return True


def diagnose(path: Path, fmt: LineFormat, cause: object = None) -> NoReturn:
    """Find the first bad line of ``path`` and raise :class:`DataFormatError` for it.

    Blank lines are allowed only at the very end of the file. If no line is found to be
    wrong (the fast reader failed for a reason the scan does not model), the error names
    the file and the underlying ``cause``. Lines are read by polars and matched against a
    regex in bulk where possible (seconds for tens of millions of lines); only lines the
    regex does not vouch for are checked in Python.
    """
    path = Path(path)
    check_not_empty(path, f"lines of {fmt.describe()}")
    scan = _Scan(path, fmt)
    if not _scan_polars(scan):
        scan = _Scan(path, fmt)
        _scan_python(scan)
    if scan.n_data == 0:
        raise DataFormatError(
            str(path), fmt.header_lines + 1, f"no data lines: expected lines of {fmt.describe()}"
        )
    detail = f": {_first_line_of(cause)}" if cause is not None else ""
    raise DataFormatError(str(path), None, f"could not be read as lines of {fmt.describe()}{detail}")


def read_checked(
    path: Path,
    fmt: LineFormat,
    read: Callable[[], pl.DataFrame],
    required: Sequence[str],
    finite: Sequence[str] = (),
    extra_check: Callable[[pl.DataFrame], bool] | None = None,
) -> pl.DataFrame:
    """Run the polars fast path ``read`` and validate it; diagnose on any failure.

    ``required`` columns must have no nulls (rows that are entirely null at the end of the
    file, i.e. trailing blank lines, are dropped first); ``finite`` float columns must have
    no NaN/inf; ``extra_check(df)`` returns False when the frame is not valid.
    """
    path = Path(path)
    check_not_empty(path, f"lines of {fmt.describe()}")
    try:
        df = read()
    except (pl.exceptions.PolarsError, UnicodeDecodeError, ValueError) as exc:
        diagnose(path, fmt, exc)
    if df.height == 0:
        diagnose(path, fmt, "no rows")
    if any(df[c].null_count() for c in required):
        df = drop_trailing_null_rows(df)
        if df.height == 0 or any(df[c].null_count() for c in required):
            diagnose(path, fmt, "missing values")
    for c in finite:
        col = df[c]
        if col.dtype.is_float() and not col.drop_nulls().is_finite().all():
            diagnose(path, fmt, f"non-finite value in {c}")
    if extra_check is not None and not extra_check(df):
        diagnose(path, fmt, "validation failed")
    return df


def drop_trailing_null_rows(df: pl.DataFrame) -> pl.DataFrame:
    """Drop the rows at the end of ``df`` where every column is null (trailing blank lines)."""
    all_null = df.select(pl.all_horizontal(pl.all().is_null())).to_series()
    not_null_idx = (~all_null).arg_true()
    if not_null_idx.len() == 0:
        return df.head(0)
    return df.head(int(not_null_idx[-1]) + 1)


def ids_maybe_int(s: pl.Series) -> pl.Series:
    """Return ``s`` (String) as Int64 when *every* value is a canonical integer
    (``0``, ``-3``, ``42``; no leading zeros, signs ``+`` or spaces), else unchanged.

    Keeping ``"007"`` as a string preserves ids such as all-digit Amazon ASINs exactly.
    """
    if s.dtype != pl.String or s.len() == 0:
        return s
    as_int = s.str.to_integer(strict=False)  # accepts "+5", "05", "-0" too: excluded below
    if as_int.null_count() != s.null_count():
        return s
    non_canonical = (
        s.str.starts_with("+")
        | s.str.starts_with("-0")
        | (s.str.starts_with("0") & (s.str.len_bytes() > 1))
    )
    if non_canonical.any():
        return s
    return as_int


def float_to_seconds(s: pl.Series) -> pl.Series:
    """Float seconds → Int64 seconds, rounding *down* (``978300760.9`` → ``978300760``)."""
    return s.floor().cast(pl.Int64)


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _first_line_of(obj: object) -> str:
    text = str(obj).strip()
    return text.splitlines()[0] if text else type(obj).__name__
