"""Download and cache the MovieLens releases from GroupLens.

``fetch(name)`` returns a folder holding the extracted files of ``<name>.zip``:

1. ``raw=PATH`` given: use the local ``PATH`` and **never** touch the network. ``PATH``
   may be the extracted folder (or a parent of it), the ratings file itself, or the
   ``.zip`` downloaded by hand (checked against the known md5, then extracted into the
   cache);
2. else, if ``<home>/<name>/`` already holds the ratings file, return it (no network);
3. else stream the zip (urllib, chunked, tqdm progress bar) to a temporary file next to the
   cache, verify its md5, extract it into a temporary folder and rename that onto
   ``<home>/<name>/``. On any failure the temporary files are removed: a half-downloaded
   or unverified archive never reaches the cache.

The cache root ``home`` defaults to ``seqrec_home() / "raw"``; the single top folder of
the archive (``ml-1m/``) is removed, so ``<home>/ml-1m/ratings.dat``.

Checksums: the md5 of each official zip is pinned in :data:`SOURCES` where it is known
(the values GroupLens publishes in ``<name>.zip.md5``). ``ml-latest-small`` is a
"development" data set GroupLens may re-issue, so its md5 is not pinned: it is read from
the ``<url>.md5`` companion file at download time (a warning is issued when that cannot be
fetched and the download is then unverified).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from seqrec.data.interactions import Interactions
from seqrec.utils.io import atomic_dir, file_md5, folder_lock, recover_dir, temp_leftovers

GROUPLENS = "https://files.grouplens.org/datasets/movielens"
MARKER = ".seqrec-fetch.json"
CHUNK = 1 << 20
TIMEOUT_S = 60


@dataclass(frozen=True)
class Source:
    """Where a data set comes from and what to read in it."""

    name: str
    url: str
    md5: str | None  # md5 of the zip; None: read ``url + ".md5"`` at download time
    ratings: str  # member path of the ratings file inside the zip
    reader: str  # key of seqrec.data.readers.READERS
    items: str | None = None  # member path of the item metadata (titles)


def _ml(name: str, md5: str | None, ratings: str, reader: str, items: str) -> Source:
    return Source(name, f"{GROUPLENS}/{name}.zip", md5, f"{name}/{ratings}", reader, f"{name}/{items}")


SOURCES: dict[str, Source] = {
    "ml-100k": _ml("ml-100k", "0e33842e24a9c977be4e0107933c0723", "u.data", "ml100k", "u.item"),
    "ml-1m": _ml("ml-1m", "c4d9eecfca2ab87c1945afe126590906", "ratings.dat", "ml1m", "movies.dat"),
    "ml-20m": _ml("ml-20m", "cd245b17a1ae2cc31bb14903e1204af3", "ratings.csv", "ml_csv", "movies.csv"),
    "ml-25m": _ml("ml-25m", "6b51fb2759a8657d3bfcbfc42b592ada", "ratings.csv", "ml_csv", "movies.csv"),
    "ml-32m": _ml("ml-32m", "d472be332d4daa821edc399621853b57", "ratings.csv", "ml_csv", "movies.csv"),
    "ml-latest-small": _ml("ml-latest-small", None, "ratings.csv", "ml_csv", "movies.csv"),
}


class DownloadError(RuntimeError):
    """A download could not be completed (network, checksum or archive problem)."""


class ChecksumError(DownloadError):
    """The downloaded (or given) archive does not have the expected md5."""


def seqrec_home() -> Path:
    """``$SEQREC_HOME`` when set, else ``~/.cache/seqrec``."""
    env = os.environ.get("SEQREC_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "seqrec"


def source(name: str) -> Source:
    """The :class:`Source` called ``name`` (a helpful error for unknown names)."""
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(SOURCES)}") from None


def _candidates(folder: Path, member: str) -> list[Path]:
    base = PurePosixPath(member).name
    found = [folder / base, folder / member]
    found += sorted(folder.glob(f"*/{base}")) + sorted(folder.glob(f"*/*/{base}"))
    seen, out = set(), []
    for p in found:
        if p not in seen and p.is_file():
            seen.add(p)
            out.append(p)
    return out


def locate_ratings(name: str, folder: str | os.PathLike) -> Path:
    """The ratings file of data set ``name`` in ``folder`` (or up to two levels below)."""
    src = source(name)
    folder = Path(folder)
    base = PurePosixPath(src.ratings).name
    if folder.is_file() and folder.name == base:
        return folder
    found = _candidates(folder, src.ratings) if folder.is_dir() else []
    if not found:
        raise FileNotFoundError(
            f"{folder}: no {base} found for {name} (looked for {folder / base}, "
            f"{folder / src.ratings} and two levels below). Expected the folder extracted "
            f"from {src.url}, or that zip itself."
        )
    return found[0]


def locate_items(name: str, folder: str | os.PathLike) -> Path | None:
    """The item-metadata file (``u.item``, ``movies.dat``, ``movies.csv``) or None."""
    src = source(name)
    folder = Path(folder)
    if src.items is None:
        return None
    if folder.is_file():
        folder = folder.parent
    found = _candidates(folder, src.items) if folder.is_dir() else []
    return found[0] if found else None


def fetch(
    name: str,
    *,
    raw: str | os.PathLike | None = None,
    url: str | None = None,
    home: str | os.PathLike | None = None,
    progress: bool = True,
    md5: str | None = None,
) -> Path:
    """Return a folder holding the extracted files of data set ``name``.

    ``raw``: local zip, folder or ratings file to use instead of downloading (the network
    is never used). ``url``: download from here instead of the official URL (a mirror, a
    ``file://`` URL). ``home``: cache root (default ``seqrec_home()/"raw"``; prepared datasets live in ``seqrec_home()/"datasets"``).
    ``md5``: expected md5 of the zip, overriding the pinned one (by default the pinned
    md5, else the one in ``<url>.md5``).
    """
    src = source(name)
    cache_root = Path(home) if home is not None else seqrec_home() / "raw"
    target = cache_root / name
    if raw is not None and not (Path(raw).is_file() and zipfile.is_zipfile(raw)):
        return _from_raw(src, Path(raw), cache_root, md5)  # reads in place, writes nothing
    # one process at a time fetches into the cache; it first clears what killed ones left
    with folder_lock(target, f"the download cache of {name} ({target})"):
        recover_dir(target)
        for part in temp_leftovers(target, ".zip.part"):
            part.unlink(missing_ok=True)
        if raw is not None:
            return _from_raw(src, Path(raw), cache_root, md5)
        return _fetch_url(src, target, cache_root, url, md5, progress)


def _fetch_url(src: Source, target: Path, cache_root: Path, url: str | None, md5: str | None,
               progress: bool) -> Path:
    name = src.name
    if target.is_dir() and _holds_ratings(src, target):
        return target
    url = url or src.url
    expected = md5 or src.md5
    if expected is None:
        expected = _companion_md5(url)
        if expected is None:
            warnings.warn(
                f"no checksum known for {name} and {url}.md5 could not be read: "
                "the download is not verified",
                stacklevel=2,
            )
    cache_root.mkdir(parents=True, exist_ok=True)
    part = _download(src, url, cache_root, progress, expected)
    try:
        _extract(src, part, target, url=url, md5=file_md5(part))
    finally:
        part.unlink(missing_ok=True)
    return target


def load(name: str, **fetch_kwargs) -> Interactions:
    """``fetch`` data set ``name`` and read its ratings with the matching reader."""
    from seqrec.data.readers import READERS

    folder = fetch(name, **fetch_kwargs)
    return READERS[source(name).reader](locate_ratings(name, folder))


# --------------------------------------------------------------------------- internals


def _holds_ratings(src: Source, folder: Path) -> bool:
    try:
        locate_ratings(src.name, folder)
        return True
    except FileNotFoundError:
        return False


def _from_raw(src: Source, raw: Path, cache_root: Path, md5: str | None) -> Path:
    if not raw.exists():
        raise FileNotFoundError(
            f"--raw {raw}: no such file or folder (expected {src.name}.zip from {src.url}, "
            "or the folder it extracts to)"
        )
    if raw.is_dir():
        return locate_ratings(src.name, raw).parent
    if zipfile.is_zipfile(raw):
        expected = md5 or src.md5
        actual = file_md5(raw)
        if expected is not None and actual != expected.lower():
            raise ChecksumError(
                f"{raw}: md5 {actual} does not match the expected {expected} for {src.name} "
                f"({src.url})"
            )
        target = cache_root / src.name
        if not (target.is_dir() and _marker_md5(target) == actual and _holds_ratings(src, target)):
            _extract(src, raw, target, url=raw.resolve().as_uri(), md5=actual)
        return target
    base = PurePosixPath(src.ratings).name
    if raw.name == base:
        return raw.parent
    raise FileNotFoundError(
        f"--raw {raw}: expected {src.name}.zip, the folder it extracts to, or its {base}"
    )


def _marker_md5(folder: Path) -> str | None:
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8")).get("md5")
    except (OSError, ValueError):
        return None


def _offline_hint(src: Source, url: str) -> str:
    check = f" (md5 {src.md5})" if src.md5 else ""
    return (
        f"If this machine is offline, download {url}{check} by hand and pass it with "
        f"--raw PATH (the zip, or the folder it extracts to)."
    )


def _open(url: str):
    request = urllib.request.Request(url, headers={"User-Agent": "seqrec"})
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)


def _companion_md5(url: str) -> str | None:
    """The md5 in ``<url>.md5`` (``<md5>  file`` or ``MD5 (file) = <md5>``), or None."""
    try:
        with _open(url + ".md5") as response:
            text = response.read(4096).decode("utf-8", errors="replace")
    except (OSError, ValueError):
        return None
    found = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    return found.group(0).lower() if found else None


def _download(src: Source, url: str, folder: Path, progress: bool, expected: str | None) -> Path:
    """Stream ``url`` into a temporary file in ``folder``; verify; return its path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{src.name}.", suffix=".zip.part", dir=folder)  # see temp_leftovers
    part = Path(tmp)
    digest = hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = _open(url)
            except (OSError, ValueError) as exc:
                raise DownloadError(
                    f"could not download {src.name} from {url}: {_reason(exc)}. "
                    + _offline_hint(src, url)
                ) from exc
            with response:
                total = response.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                done = 0
                with tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=f"{src.name}.zip",
                    disable=not progress,
                ) as bar:
                    while True:
                        try:
                            block = response.read(CHUNK)
                        except OSError as exc:
                            raise DownloadError(
                                f"download of {src.name} from {url} failed after {done} bytes: "
                                f"{_reason(exc)}. " + _offline_hint(src, url)
                            ) from exc
                        if not block:
                            break
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        bar.update(len(block))
            if total is not None and done != total:
                raise DownloadError(
                    f"download of {src.name} from {url} is truncated: {done} of {total} bytes. "
                    + _offline_hint(src, url)
                )
        actual = digest.hexdigest()
        if expected is not None and actual != expected.lower():
            raise ChecksumError(
                f"{src.name}: the file downloaded from {url} has md5 {actual}, expected "
                f"{expected}; it was deleted. Retry, or download it by hand and pass --raw PATH."
            )
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return part


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _safe_members(archive: zipfile.ZipFile, where: str) -> None:
    for info in archive.infolist():
        p = PurePosixPath(info.filename.replace("\\", "/"))
        if p.is_absolute() or ".." in p.parts:
            raise DownloadError(f"{where}: refusing unsafe path {info.filename!r} in the archive")


def _extract(src: Source, zip_path: Path, target: Path, *, url: str, md5: str) -> None:
    """Extract ``zip_path`` into ``target`` atomically (temporary folder, then rename)."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{url}: not a valid zip archive ({exc})") from exc
    with archive, atomic_dir(target, MARKER) as tmp:
        _safe_members(archive, url)
        archive.extractall(tmp)
        entries = [p for p in tmp.iterdir() if p.name != "__MACOSX"]
        if len(entries) == 1 and entries[0].is_dir():  # drop the single top folder
            top = entries[0].rename(tmp / ".seqrec-top")
            for child in list(top.iterdir()):
                shutil.move(str(child), str(tmp / child.name))
            top.rmdir()
        shutil.rmtree(tmp / "__MACOSX", ignore_errors=True)
        if not _holds_ratings(src, tmp):
            raise DownloadError(f"{url}: the archive has no {src.ratings}")
        info = {"name": src.name, "url": url, "md5": md5, "fetched": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def download_resumable(url: str, dest: str | os.PathLike, *, progress: bool = True, md5: str | None = None) -> Path:
    """Download ``url`` to ``dest``, continuing a partial ``dest.part`` left by an interrupted
    run (an HTTP Range request; a server without ranges starts over). The file appears at
    ``dest`` only when complete (and, with ``md5``, verified); ``file://`` URLs work too."""
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "seqrec"}
    if have and not url.startswith("file:"):
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except (OSError, ValueError) as exc:
        raise DownloadError(f"could not download {url}: {_reason(exc)}") from exc
    with response:
        status = getattr(response, "status", 200)
        resumed = have and status == 206
        if not resumed:
            have = 0
        total = response.headers.get("Content-Length")
        total = int(total) + have if total and total.isdigit() else None
        with open(part, "ab" if resumed else "wb") as out, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                               unit_divisor=1024, desc=dest.name,
                                                               disable=not progress) as bar:
            while True:
                try:
                    block = response.read(CHUNK)
                except OSError as exc:
                    raise DownloadError(f"download of {url} failed after {part.stat().st_size} bytes: "
                                        f"{_reason(exc)}; run again to continue it") from exc
                if not block:
                    break
                out.write(block)
                bar.update(len(block))
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f"download of {url} is truncated: {size} of {total} bytes; run again to continue it")
    if md5 is not None:
        actual = file_md5(part)
        if actual != md5.lower():
            part.unlink()
            raise ChecksumError(f"{url}: md5 {actual} is not the expected {md5}; the download was deleted")
    os.replace(part, dest)
    return dest
