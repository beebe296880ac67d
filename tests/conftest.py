"""Shared test fixtures.

``shared_data``: the folder of real public data sets (``/work/shared/data`` next to the
repository, or ``$SEQREC_SHARED_DATA``); tests using it are skipped when it is absent.
``shared_file("ml-100k/u.data")``: a file under it, or skip when that file is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Test tensors are tiny: one thread avoids OpenMP spin overhead (and oversubscription when
# the two cores are shared with other work).
torch.set_num_threads(1)


def shared_data_root() -> Path:
    env = os.environ.get("SEQREC_SHARED_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (set SEQREC_SHARED_DATA)")
    return root


@pytest.fixture(scope="session")
def shared_file(shared_data):
    def get(relative: str) -> Path:
        path = shared_data / relative
        if not path.exists():
            pytest.skip(f"{path} not available")
        return path

    return get


@pytest.fixture(autouse=True)
def _isolated_seqrec_home(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's ~/.cache/seqrec."""
    monkeypatch.setenv("SEQREC_HOME", str(tmp_path_factory.getbasetemp() / "seqrec_home"))
