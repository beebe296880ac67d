"""Checkpoint files: written atomically, read without running any code from them.

A seqrec checkpoint holds only tensors and plain containers (dicts, lists, numbers, strings:
the RNG and data-order state included), so it loads with ``torch.load(weights_only=True)``,
PyTorch's restricted unpickler. A file that needs anything else was not written by seqrec
and is refused; a crafted ``best.pt`` can therefore not run code on ``evaluate``,
``recommend`` or ``--resume``.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

from .io import torch_save_atomic


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded (unsafe, truncated, or not a checkpoint)."""


def save_checkpoint_file(payload: dict, path: str | Path) -> None:
    """Write ``payload`` (tensors and plain containers only) to ``path`` atomically."""
    torch_save_atomic(payload, path)


def load_checkpoint_file(path: str | Path, map_location=None) -> dict:
    """Load a checkpoint with the restricted unpickler; one clear error for any bad file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (the run has not written this checkpoint yet?)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (a write was interrupted?); use the run's other checkpoint "
                              "or train again")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is truncated or not a seqrec checkpoint (not a PyTorch zip file)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"(?:GLOBAL|global)\s+([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused to load -- it holds objects other than tensors and plain containers{what}, which "
            "seqrec checkpoints never do; loading it could run code from the file") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, KeyError, OSError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(f"{path} is not a seqrec checkpoint (no model state in it)")
    return obj
