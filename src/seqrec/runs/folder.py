"""The run folder: its layout, reading and writing it, and claiming it for a training session.

Layout (the only module that names these files)::

    config.yaml          the run's configuration (seqrec.config.RunConfig, nested sections)
    metrics.jsonl        one JSON line per logged step / epoch / event / final test
    best.pt, last.pt     checkpoints (model, optimizer, scheduler, RNG and data-order state)
    test_metrics.json    final test metrics, both protocols, with the best epoch
    report.md            the run's report, with loss.png and valid.png beside it
    .lock                held while a session trains into the folder

A run folder is seqrec's once it holds ``config.yaml``. Claiming rules:

- one process at a time: ``DIR/.lock`` is held (an ``flock``) for the whole session; a second
  process refuses with the holder's pid; a lock left by a killed process is taken over;
- a new run (no ``--resume``) needs an empty or missing folder; a folder holding a run is
  refused unless ``overwrite`` is given, and a non-empty folder that is *not* a run is always
  refused (seqrec does not delete what it did not write);
- ``overwrite``: the old run's files are moved into ``DIR/.replaced/`` and deleted only after the
  new run's ``config.yaml`` is written (:meth:`RunClaim.config_written`); a session killed in
  between gets the old run back on the next start.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import json

from ..config import RunConfig, load_config, save_config
from ..utils.io import FolderLock, NotOurFolderError, write_json

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
BEST = "best.pt"
LAST = "last.pt"
TEST_METRICS = "test_metrics.json"
REPORT = "report.md"
LOSS_PNG = "loss.png"
VALID_PNG = "valid.png"
LOCK = ".lock"
REPLACED = ".replaced"


class RunFolder:
    """A run folder: where its files are and how they are read and written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def name(self) -> str:
        return self.path.name

    def is_run(self) -> bool:
        return (self.path / CONFIG).is_file()

    def require(self) -> "RunFolder":
        if not self.is_run():
            raise FileNotFoundError(f"{self.path} is not a seqrec run folder (no {CONFIG})")
        return self

    def config(self) -> RunConfig:
        """The run's configuration (a folder of the earlier flat layout is read too)."""
        return load_config(self.require().path / CONFIG)

    def write_config(self, cfg: RunConfig) -> None:
        save_config(cfg, self.path / CONFIG)

    def metrics(self) -> list[dict]:
        """The records of ``metrics.jsonl`` (an unreadable line, e.g. one being written, is skipped)."""
        path = self.path / METRICS
        if not path.exists():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out

    def test_metrics(self) -> dict | None:
        path = self.path / TEST_METRICS
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def write_test_metrics(self, result: dict) -> None:
        write_json(self.path / TEST_METRICS, result)

    def checkpoint(self, name: str = BEST) -> Path:
        path = self.path / name
        if not path.exists():
            raise FileNotFoundError(f"{path} not found (the run has not finished an evaluation yet?)")
        return path


def _entries(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.iterdir() if p.name not in (LOCK, REPLACED))


class RunClaim:
    """Held while a session trains into ``run_dir`` (see the module docstring)."""

    def __init__(self, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False, log=print,
                 enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.resume, self.overwrite, self.log, self.enabled = resume, overwrite, log, enabled
        self._lock: FolderLock | None = None

    # -- entering ------------------------------------------------------------------------
    def __enter__(self) -> "RunClaim":
        if not self.enabled:
            return self
        d = self.run_dir
        if d.exists() and not d.is_dir():
            raise NotOurFolderError(errno.ENOTDIR, f"--train_dir {d} is a file, not a folder: choose another path")
        d.mkdir(parents=True, exist_ok=True)
        self._lock = FolderLock(d / LOCK, f"run folder {d}").acquire()
        try:
            self._recover()
            self._check()
        except BaseException:
            self._release()
            raise
        return self

    def _recover(self) -> None:
        """A previous ``overwrite`` killed half-way: finish it or undo it."""
        old = self.run_dir / REPLACED
        if not old.exists():
            return
        if (self.run_dir / CONFIG).exists():  # the new run had started: the old one was to go
            shutil.rmtree(old, ignore_errors=True)
            return
        for p in sorted(old.iterdir()):  # killed before the new config: put the old run back
            os.replace(p, self.run_dir / p.name)
        old.rmdir()
        self._say(f"{self.run_dir}: restored the previous run that an interrupted --overwrite had moved aside")

    def _check(self) -> None:
        d = self.run_dir
        entries = _entries(d)
        is_run = (d / CONFIG).exists()
        if self.resume:
            if not (is_run and (d / "last.pt").exists()):
                raise FileNotFoundError(f"{d} has no last.pt/config.yaml to resume from")
            return
        if not entries:
            return
        if not is_run:
            raise NotOurFolderError(
                errno.EEXIST, f"--train_dir {d} is not empty and holds no seqrec run ({entries[0].name}, ...): "
                "seqrec will not write or delete there; choose an empty or new folder")
        if not self.overwrite:
            hint = "--resume it, " if (d / "last.pt").exists() else ""
            raise NotOurFolderError(
                errno.EEXIST, f"--train_dir {d} already holds a run: {hint}choose another --train_dir, or pass "
                "--overwrite to replace it (the old run is deleted once the new one has started)")
        old = d / REPLACED
        old.mkdir()
        for p in entries:
            os.replace(p, old / p.name)
        self._say(f"{d}: the previous run is set aside and deleted once the new run's config is written")

    # -- during and after ------------------------------------------------------------------
    def config_written(self) -> None:
        """The new run's config.yaml is on disk: the replaced run may go now."""
        if self.enabled:
            shutil.rmtree(self.run_dir / REPLACED, ignore_errors=True)

    def _say(self, msg: str) -> None:
        if self.log:
            self.log(msg)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __exit__(self, *exc) -> None:
        self._release()
