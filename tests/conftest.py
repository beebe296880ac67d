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


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def serve_process():
    """``start(run, *flags) -> url``: a real ``seqrec serve`` process on 127.0.0.1, waited for
    until ``/health`` answers; every one started is terminated when the module ends."""
    import subprocess
    import sys
    import time

    httpx = pytest.importorskip("httpx")
    src = str(Path(__file__).resolve().parents[1] / "src")
    procs = []

    def start(run, *flags: str) -> str:
        port = free_port()
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen([sys.executable, "-m", "seqrec", "serve", str(run), "--port", str(port), *flags],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.2)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=20)
