"""Where training records go: always a local ``metrics.jsonl``; optionally W&B / TensorBoard.

A record is a flat dict with a ``kind`` (``step``, ``epoch``, ``test``, ``event``). The local
log is the source of truth (reports and ``seqrec compare`` read it); the optional sinks are
imported only when asked for, so neither package is a dependency.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path


class JsonlSink:
    """Appends one JSON line per record, flushed at once; ``offset()`` is the file size so a
    resumed run can truncate records written after its checkpoint."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = open(self.path, "a", encoding="utf-8")

    def log(self, record: dict) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def offset(self) -> int:
        self._f.flush()
        return self._f.tell()

    def close(self) -> None:
        self._f.close()


class WandbSink:
    """Weights & Biases; offline mode unless ``WANDB_MODE`` says otherwise (no network needed).
    The run id is kept in ``run_dir/wandb_id.txt``."""

    def __init__(self, run_dir: Path, config: dict, project: str = "seqrec", online: bool = False):
        try:
            import wandb
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise ValueError("--wandb needs the wandb package: pip install 'seqrec[wandb]'") from exc
        self._wandb = wandb
        # one W&B run per run folder: a resumed session continues it (same id); W&B ignores the
        # steps it already holds, which an exact resume replays with the same values anyway
        id_file = Path(run_dir) / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        self._run = wandb.init(project=project, dir=str(run_dir), config=config, name=Path(run_dir).name,
                               mode=os.environ.get("WANDB_MODE", "online" if online else "offline"), reinit=True,
                               id=run_id,
                               resume="allow")
        id_file.write_text(run_id + "\n")

    def log(self, record: dict) -> None:
        data = {f"{record.get('kind')}/{k}": v for k, v in record.items()
                if isinstance(v, (int, float)) and k not in ("step",)}
        if data:
            self._run.log(data, step=record.get("step"))

    def close(self) -> None:
        self._run.finish()


class TensorboardSink:
    """TensorBoard event files under ``run_dir/tensorboard``. ``purge_step`` (a resumed run's
    first replayed step) drops the events a killed session wrote after its checkpoint, as
    :func:`truncate_log` does for the local log."""

    def __init__(self, run_dir: Path, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise ValueError("--tensorboard needs the tensorboard package: pip install 'seqrec[tensorboard]'") from exc
        self._w = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=purge_step)

    def log(self, record: dict) -> None:
        step = record.get("step", 0)
        for k, v in record.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                self._w.add_scalar(f"{record.get('kind')}/{k}", v, step)

    def close(self) -> None:
        self._w.close()


class Tracker:
    """Fans records out to the local log and the optional sinks (rank 0 only)."""

    def __init__(self, metrics_path: Path, config: dict, *, wandb: bool = False, wandb_online: bool = False,
                 tensorboard: bool = False, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        run_dir = Path(metrics_path).parent
        self.local = JsonlSink(Path(metrics_path)) if enabled else None
        self.extra = []
        if enabled and wandb:
            self.extra.append(WandbSink(run_dir, config, online=wandb_online))
        if enabled and tensorboard:
            self.extra.append(TensorboardSink(run_dir, None if resume_step is None else resume_step + 1))

    def log(self, **record) -> None:
        if not self.enabled:
            return
        self.local.log(record)
        for s in self.extra:
            s.log(record)

    def offset(self) -> int:
        return self.local.offset() if self.enabled else 0

    def close(self) -> None:
        if not self.enabled:
            return
        self.local.close()
        for s in self.extra:
            s.close()


def truncate_log(path: Path, offset: int) -> None:
    """Drop records written after ``offset`` bytes (a resumed run replays them)."""
    path = Path(path)
    if path.exists() and path.stat().st_size > offset:
        with open(path, "r+b") as f:
            f.truncate(offset)
