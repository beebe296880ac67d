"""seqrec pipeline: the whole flow on CPU, a SIGKILL during production resumed to identical
metrics, clear stops (wrong data, failed verify, changed config), resumed downloads."""

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from seqrec.cli import main
from seqrec.data.download import download_resumable

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = ["--maxlen", "20", "--hidden_units", "16", "--num_heads", "1", "--eval_negatives", "10", "--num_threads", "1",
        "--progress", "false", "--device", "cpu"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _data(shared_data_root):
    path = shared_data_root / "ml-100k"
    return (["--dataset", "ml-100k", "--data", str(path)] if (path / "u.data").exists()
            else ["--dataset", "synthetic"])


@pytest.fixture(scope="module")
def data_args():
    from conftest import shared_data_root

    return _data(shared_data_root())


def test_debug_then_production_on_cpu(data_args, tmp_path, capsys):
    out = tmp_path / "p"
    argv = ["pipeline", "--model", "sasrec", *data_args, *TINY, "--num_epochs", "2", "--out", str(out)]
    assert main([*argv, "--debug"]) == 0
    state = json.loads((out / "pipeline.json").read_text())
    assert [s for s, v in state["stages"].items() if v["state"] == "done"] == ["fetch", "prepare", "verify", "debug",
                                                                             "report"]
    assert "production" not in state["stages"] and (out / "runs" / "debug" / "test_metrics.json").exists()
    capsys.readouterr()
    assert main(argv) == 0  # the same folder, now through production: the finished stages are skipped
    text = capsys.readouterr().out
    assert "fetch: done earlier, skipped" in text and "estimate on this device" in text
    state = json.loads((out / "pipeline.json").read_text())
    assert all(state["stages"][s]["state"] == "done" for s in ("production", "report"))
    report = (out / "report.md").read_text()
    assert "Test (full ranking, history excluded)" in report and "| sasrec |" in report
    assert "verify: done" in (out / "pipeline.log").read_text()
    assert (out / "home" / "datasets").is_dir()  # the data lives under DIR


@pytest.mark.slow
def test_a_pipeline_killed_in_production_resumes_to_identical_metrics(tmp_path):
    args = ["pipeline", "--model", "sasrec", "--dataset", "synthetic", *TINY, "--num_epochs", "6", "--patience", "0",
            "--checkpoint_every", "5"]
    ref = subprocess.run([sys.executable, "-m", "seqrec", *args, "--out", str(tmp_path / "ref")], env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "seqrec", *args, "--out", str(out)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        last = out / "runs" / "production" / "last.pt"
        while not last.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert json.loads((out / "pipeline.json").read_text())["stages"]["production"]["state"] == "running"
    again = subprocess.run([sys.executable, "-m", "seqrec", *args, "--out", str(out)], env=_env(), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stdout
    a = json.loads((tmp_path / "ref" / "runs" / "production" / "test_metrics.json").read_text())
    b = json.loads((out / "runs" / "production" / "test_metrics.json").read_text())
    assert a["test_full"] == b["test_full"] and a["test_sampled"] == b["test_sampled"]


def test_clear_stops_leave_the_folder_usable(tmp_path, capsys):
    out = tmp_path / "s"
    base = ["pipeline", "--model", "sasrec", "--dataset", "mine", *TINY, "--num_epochs", "1", "--out", str(out)]
    assert main([*base, "--data", str(tmp_path / "missing.csv"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "stage 'fetch' failed" in err and "no such file" in err
    # a failing pre-flight check: CUDA asked for on this CPU machine; nothing is trained
    syn = ["pipeline", "--model", "sasrec", "--dataset", "synthetic", *TINY, "--num_epochs", "1", "--out", str(out / "v")]
    assert main([*syn[:-2], "--out", str(out / "v"), "--device", "cuda", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "stage 'verify' failed" in err and "device" in err
    assert not (out / "v" / "runs").exists()
    assert main([*syn, "--debug"]) == 0  # the runtime setting fixed: the failed stage is retried
    # a changed configuration on rerun
    assert main([*syn[:-2], "--out", str(out / "v"), "--lr", "0.01", "--debug"]) == 2
    assert "another configuration" in capsys.readouterr().err
    assert main([*syn[:-2], "--out", str(out / "v"), "--lr", "0.01", "--debug", "--restart"]) == 0


def test_max_hours_pauses_production_and_the_next_run_continues(tmp_path, capsys):
    argv = ["pipeline", "--model", "sasrec", "--dataset", "synthetic", *TINY, "--num_epochs", "2", "--out",
            str(tmp_path / "h")]
    assert main([*argv, "--max_hours", "1e-9"]) == 3
    assert "time budget of --max_hours" in capsys.readouterr().err
    state = json.loads((tmp_path / "h" / "pipeline.json").read_text())
    assert state["stages"]["debug"]["state"] == "done" and state["stages"]["production"]["state"] == "paused"
    assert (tmp_path / "h" / "runs" / "production" / "last.pt").exists()
    assert main(argv) == 0  # the budget is a runtime setting: the run continues from its checkpoint
    assert "resuming" in capsys.readouterr().out


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    ranges: list = []

    def do_GET(self):  # noqa: N802 - the stdlib's name
        data = Path(self.translate_path(self.path)).read_bytes()
        rng = self.headers.get("Range")
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        _RangeHandler.ranges.append(rng)
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *a):
        pass


def test_partial_downloads_resume(tmp_path):
    srv_dir = tmp_path / "srv"
    srv_dir.mkdir()
    blob = os.urandom(300_000)
    (srv_dir / "ratings.csv").write_bytes(blob)
    handler = lambda *a, **k: _RangeHandler(*a, directory=str(srv_dir), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_port}/ratings.csv"
        dest = tmp_path / "dl" / "ratings.csv"
        dest.parent.mkdir()
        (dest.parent / "ratings.csv.part").write_bytes(blob[:123_456])  # what an interrupted run left
        assert download_resumable(url, dest, progress=False).read_bytes() == blob
        assert _RangeHandler.ranges[-1] == "bytes=123456-" and not (dest.parent / "ratings.csv.part").exists()
    finally:
        httpd.shutdown()
