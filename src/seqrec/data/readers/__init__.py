"""Readers turning raw interaction files into :class:`~seqrec.data.interactions.Interactions`.

========== ============================ =================================================
key        reader                       input
========== ============================ =================================================
ml1m       :func:`read_ml1m`            ML-1M/10M ``ratings.dat`` (``u::i::r::t``)
ml100k     :func:`read_ml100k`          ML-100K ``u.data`` (tab separated)
ml_csv     :func:`read_ml_csv`          ML-20M/25M/32M/latest ``ratings.csv``
recbole    :func:`read_recbole_inter`   RecBole atomic ``*.inter`` file
sasrec     :func:`read_sasrec_text`     SASRec ``user item`` text file
amazon     :func:`read_amazon`          ``<Name>_item_org_rank.txt`` (+ ``_time_`` twin)
========== ============================ =================================================

Every reader takes the path as first argument (``READERS[key](path)``) and raises
:class:`~seqrec.data.interactions.DataFormatError` (file, 1-based line, expectation) on
malformed input. :func:`read_any` picks the reader from the file name or first line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from seqrec.data.interactions import DataFormatError, Interactions
from seqrec.data.readers._check import first_line
from seqrec.data.readers.amazon import ITEM_SUFFIX, TIME_SUFFIX, amazon_pair, read_amazon
from seqrec.data.readers.movielens import read_ml100k, read_ml1m, read_ml_csv
from seqrec.data.readers.recbole import read_recbole_inter, write_recbole_inter
from seqrec.data.readers.sasrec_text import read_sasrec_text

READERS: dict[str, Callable[..., Interactions]] = {
    "ml1m": read_ml1m,
    "ml100k": read_ml100k,
    "ml_csv": read_ml_csv,
    "recbole": read_recbole_inter,
    "sasrec": read_sasrec_text,
    "amazon": read_amazon,
}

_BY_NAME = {"ratings.dat": "ml1m", "u.data": "ml100k", "ratings.csv": "ml_csv"}


def detect_format(path: str | os.PathLike) -> tuple[str, Path]:
    """Return ``(reader key, file to read)`` for ``path`` (a file or a folder).

    Rules, first match wins:

    * a folder: it must hold exactly one of ``ratings.dat``, ``u.data``, ``ratings.csv``,
      one ``*.inter`` file, or one ``*_item_org_rank.txt`` (Amazon pair); it is searched
      without recursion;
    * a file named ``ratings.dat`` / ``u.data`` / ``*.csv`` / ``*.inter`` /
      ``*_item_org_rank.txt`` / ``*_time_org_rank.txt``: by name;
    * otherwise by its first line: ``::`` → ml1m; ``userId,`` → ml_csv; ``:token`` →
      recbole; four tab-separated fields → ml100k; two space-separated fields → sasrec.
    """
    path = Path(path)
    if path.is_dir():
        found: list[tuple[str, Path]] = []
        for name, key in _BY_NAME.items():
            if (path / name).is_file():
                found.append((key, path / name))
        found += [("recbole", p) for p in sorted(path.glob("*.inter"))]
        found += [("amazon", p) for p in sorted(path.glob(f"*{ITEM_SUFFIX}"))]
        if len(found) != 1:
            what = ", ".join(p.name for _, p in found) or "no known file"
            raise ValueError(
                f"{path}: expected exactly one of ratings.dat, u.data, ratings.csv, *.inter or "
                f"*{ITEM_SUFFIX}; found {what}. Pass the file itself (and fmt=...)."
            )
        return found[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder")
    name = path.name
    if name in _BY_NAME:
        return _BY_NAME[name], path
    if name.endswith(".csv"):
        return "ml_csv", path
    if name.endswith(".inter"):
        return "recbole", path
    if name.endswith(ITEM_SUFFIX) or name.endswith(TIME_SUFFIX):
        return "amazon", amazon_pair(path)[0]
    line = first_line(path)
    if "::" in line:
        return "ml1m", path
    if line.startswith("userId,"):
        return "ml_csv", path
    if ":token" in line:
        return "recbole", path
    if len(line.split("\t")) == 4:
        return "ml100k", path
    if len(line.split(" ")) == 2:
        return "sasrec", path
    raise DataFormatError(
        str(path), 1, f"could not detect the format (one of {sorted(READERS)}); pass fmt=..."
    )


def read_any(path: str | os.PathLike, fmt: str | None = None) -> Interactions:
    """Read ``path`` with ``READERS[fmt]``, detecting ``fmt`` when None (:func:`detect_format`)."""
    if fmt is None:
        fmt, path = detect_format(path)
    elif fmt not in READERS:
        raise ValueError(f"unknown format {fmt!r}; known: {sorted(READERS)}")
    elif Path(path).is_dir():
        key, found = detect_format(path)
        if key != fmt:
            raise ValueError(f"{path}: holds a {key} file ({found.name}), not {fmt}")
        path = found
    return READERS[fmt](path)


__all__ = [
    "READERS",
    "DataFormatError",
    "Interactions",
    "amazon_pair",
    "detect_format",
    "read_amazon",
    "read_any",
    "read_ml100k",
    "read_ml1m",
    "read_ml_csv",
    "read_recbole_inter",
    "read_sasrec_text",
    "write_recbole_inter",
]
