"""Small I/O helpers shared by every package: atomic writes, folder ownership, locks, checksums.

What seqrec writes and removes (the README's "Reliability" paragraph):

- a file is written to a temporary ``.NAME.*.tmp`` beside it and renamed onto ``NAME`` when
  complete (:func:`atomic_path`), so a reader never sees half a file;
- a folder is built as ``.NAME.*.tmp`` and swapped in (:func:`atomic_dir`); an existing folder
  is replaced only when seqrec made it (it holds seqrec's marker file, e.g. a dataset's
  ``manifest.json``) -- any other existing folder is refused, never deleted;
- a swap killed half-way leaves ``.NAME.old``: :func:`recover_dir` puts it back on the next
  start, and removes the temporary leftovers of killed writes;
- "no space left on device" is reported as :class:`DiskFullError` naming the path, and the file
  being replaced is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

try:  # POSIX; on Windows the lock falls back to a pid file
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


class SeqrecIOError(OSError):
    """A file-system problem worth one clear line (the CLI prints it without a traceback)."""


class DiskFullError(SeqrecIOError):
    """No space left on the device while writing ``path``."""


class NotOurFolderError(SeqrecIOError):
    """A write would replace a folder that seqrec did not create."""


class FolderInUseError(SeqrecIOError):
    """Another live process holds the folder's lock."""


def _disk_full(exc: BaseException, path: Path) -> BaseException:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return DiskFullError(errno.ENOSPC, f"no space left on device at {path} (free some space, or write "
                                           "elsewhere); the previous version, if any, is untouched")
    return exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    If the body raises, the temporary file (or folder) is removed and ``path`` is untouched,
    so a reader never sees a half-written file. A full disk raises :class:`DiskFullError`.
    """
    path = Path(path)
    if path.is_dir():
        raise NotOurFolderError(errno.EISDIR, f"{path} is a folder: cannot write a file there")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as exc:
        if tmp_path.is_dir():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()
        err = _disk_full(exc, path)
        if err is exc:
            raise
        raise err from exc


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, flushed to disk before the rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def is_owned(folder: Path, marker: str) -> bool:
    """``folder`` may be replaced by seqrec: it holds ``marker`` (seqrec made it) or is empty."""
    return (folder / marker).is_file() or (folder.is_dir() and not any(folder.iterdir()))


def check_replaceable(path: Path, marker: str, what: str) -> None:
    """Refuse (before any work) when ``path`` exists and is not seqrec's to replace."""
    if path.exists() and not (path.is_dir() and is_owned(path, marker)):
        kind = "a file" if not path.is_dir() else "a folder seqrec did not create (no " + marker + ")"
        raise NotOurFolderError(errno.EEXIST, f"{path} exists and is {kind}; seqrec will not replace it with "
                                              f"{what}: choose another location, or move it away first")


def _old(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover_dir(path: str | os.PathLike) -> list[str]:
    """Repair what a killed :func:`atomic_dir` left around ``path``; returns what was done.

    ``.NAME.old`` without ``NAME`` (killed between the two renames) is renamed back; with ``NAME``
    present (killed before removing it) it is removed; the ``.NAME.*.tmp`` folders of killed
    writes are removed. Call it while holding the folder's lock (:func:`folder_lock`)."""
    path = Path(path)
    done = []
    old = _old(path)
    if old.exists():
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"removed {old} (left by an interrupted replace)")
        else:
            os.replace(old, path)
            done.append(f"restored {path} from {old.name} (an earlier replace was interrupted)")
    for p in temp_leftovers(path):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        done.append(f"removed {p} (left by an interrupted write)")
    return done


def temp_leftovers(path: Path, suffix: str = ".tmp") -> list[Path]:
    """The temporaries ``.NAME.XXXXXXXX<suffix>`` that writes of ``path`` make (``tempfile``'s
    8-character names), and nothing of another name that merely starts alike."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.[a-z0-9_]{{8}}{re.escape(suffix)}$")
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if pattern.match(p.name))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, marker: str) -> Iterator[Path]:
    """Build a folder under a temporary name and move it onto ``path`` when complete.

    ``marker``: the file (written by the body) that makes a folder seqrec's. An existing
    ``path`` is replaced only if it holds that marker (or is empty), and only after the new
    folder is complete; otherwise :class:`NotOurFolderError` is raised before the body runs.
    """
    path = Path(path)
    check_replaceable(path, marker, "a new version")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise _disk_full(exc, path) from exc
    try:
        yield tmp
        if not (tmp / marker).is_file():
            raise RuntimeError(f"internal error: {tmp} was completed without its marker {marker}")
        if path.exists():
            check_replaceable(path, marker, "a new version")  # it may have changed meanwhile
            old = _old(path)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)  # a kill here leaves .NAME.old: recover_dir restores it
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        err = _disk_full(exc, path)
        if err is exc:
            raise
        raise err from exc


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files/folders that :func:`atomic_path`/:func:`atomic_dir` leave
    when a process is killed mid-write (SIGKILL skips their cleanup); returns what was removed."""
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


# -- locks ------------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """An exclusive, non-blocking lock held in ``lock_path`` while a process works on a folder.

    POSIX: an ``flock`` on the file, released by the kernel when the holder exits or is killed,
    so a stale lock is taken over without any guessing. The file records the holder's pid and
    host for the refusal message and is removed on release (a killed holder leaves it: harmless,
    the next process takes it over). Without ``fcntl`` the pid in the file is checked instead.
    """

    def __init__(self, lock_path: str | os.PathLike, what: str):
        self.path = Path(lock_path)
        self.what = what
        self._fd: int | None = None

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            info = {}
        if not info.get("pid"):
            return "another process"
        host = f" on {info['host']}" if info.get("host") and info["host"] != socket.gethostname() else ""
        return f"process {info['pid']}{host}"

    def acquire(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if fcntl is None:  # pragma: no cover
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise FolderInUseError(errno.EBUSY, f"{self.what} is in use by {self._holder()} (lock file "
                                                    f"{self.path}); wait for it to finish or stop it") from None
            # the holder we waited behind may have unlinked the file on release: lock the live one
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        if fcntl is None:  # pragma: no cover
            try:
                pid = int(json.loads(os.read(fd, 4096) or b"{}").get("pid", 0))
            except ValueError:
                pid = 0
            if pid and pid != os.getpid() and _pid_alive(pid):
                os.close(fd)
                raise FolderInUseError(errno.EBUSY, f"{self.what} is in use by process {pid} (lock file {self.path})")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:  # removed while still locked: a process that opened it meanwhile sees the inode change
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def folder_lock(path: str | os.PathLike, what: str | None = None) -> FolderLock:
    """The lock guarding writes of folder ``path``: ``.NAME.lock`` beside it."""
    path = Path(path)
    return FolderLock(path.with_name(f".{path.name}.lock"), what or str(path))


# -- small writers and checksums ----------------------------------------------------------------

def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically (indented, UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")


def read_yaml(path: str | os.PathLike) -> dict:
    """A YAML mapping from ``path``; a syntax error names the file, line and column."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found" if not path.exists() else f"{path} is not a file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{where}: YAML syntax error: {problem}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of name: value, got {type(data).__name__}")
    return data


def torch_save_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save`` into memory, then one atomic, fsynced write: a full disk is a clean
    :class:`DiskFullError` and the previous file stays intact."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def file_md5(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
