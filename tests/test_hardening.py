"""Users' data is never lost: folders seqrec did not make are never replaced, checkpoints run no
code, run folders are locked and protected, swaps survive kills, bad input is one clear line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from seqrec.cli import main
from seqrec.data.datasets import default_dataset_dir, prepare_dataset, resolve_dataset
from seqrec.data.download import seqrec_home
from seqrec.config import resolve_config, validate_config
from seqrec.train.trainer import train
from seqrec.utils.checkpoint import CheckpointError, load_checkpoint_file
from seqrec.utils.io import FolderInUseError, FolderLock, NotOurFolderError, atomic_dir

SRC = str(Path(__file__).resolve().parents[1] / "src")
QUIET = lambda *a, **k: None  # noqa: E731


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "SEQREC_DEBUG"}
    env.update(OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_inter(path: Path, rows, header="user_id:token\titem_id:token\ttimestamp:float") -> Path:
    path.write_text(header + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return path


def _rows(n_users=30, per_user=8, t0=1_600_000_000, step=3600, scale=1):
    rng = np.random.default_rng(0)
    return [(u, int(rng.integers(1, 25)), (t0 + k * step) * scale) for u in range(1, n_users + 1)
            for k in range(per_user)]


@pytest.fixture()
def inter_file(tmp_path):
    return _write_inter(tmp_path / "shop.inter", _rows())


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    return err


# -- 1. names stay inside the datasets folder; foreign folders are never replaced -------------------

@pytest.mark.parametrize("name", [".", "..", "../../victim", "/abs/victim", "a/b", ".hidden", ""])
def test_dataset_names_must_be_plain(name, inter_file, capsys):
    other = prepare_dataset("keepme", raw=inter_file, log=None)
    before = _md5(other.path / "item.npy")
    assert main(["prepare", name, "--raw", str(inter_file)]) == 2
    assert "is not a dataset name" in _err(capsys)
    assert _md5(default_dataset_dir("keepme") / "item.npy") == before  # `prepare .` used to wipe them all


def test_absolute_or_parent_names_write_nothing_outside(tmp_path, inter_file, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    rel = os.path.relpath(victim, seqrec_home() / "datasets")
    for name in (str(victim), rel):
        assert main(["prepare", name, "--raw", str(inter_file)]) == 2
        _err(capsys)
    assert (victim / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in victim.iterdir()) == ["thesis.tex"]


def test_out_never_replaces_a_folder_seqrec_did_not_make(tmp_path, inter_file, capsys):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "cat.jpg").write_bytes(b"\xff\xd8")
    assert main(["prepare", "shop", "--raw", str(inter_file), "--out", str(mine)]) == 2
    assert "seqrec did not create" in _err(capsys)
    assert sorted(p.name for p in mine.iterdir()) == ["cat.jpg"]
    # its own folder (a manifest) is replaced, an empty folder is used
    out = tmp_path / "prepared"
    out.mkdir()
    assert main(["prepare", "shop", "--raw", str(inter_file), "--out", str(out)]) == 0
    assert main(["prepare", "shop", "--raw", str(inter_file), "--out", str(out), "--min_user", "8"]) == 0
    assert json.loads((out / "manifest.json").read_text())["recipe"]["min_user"] == 8
    with pytest.raises(NotOurFolderError):
        with atomic_dir(mine, "manifest.json") as tmp:
            (tmp / "manifest.json").write_text("{}")
    assert sorted(p.name for p in mine.iterdir()) == ["cat.jpg"]


def test_resolve_refuses_paths_that_are_not_datasets(tmp_path):
    with pytest.raises(ValueError, match="neither a prepared dataset folder"):
        resolve_dataset(str(tmp_path / "nothing" / "here"))


def test_export_refuses_foreign_files_and_path_names(tmp_path, inter_file, capsys):
    prepare_dataset("shop", raw=inter_file, log=None)
    out = tmp_path / "rb"
    (out / "shop").mkdir(parents=True)
    (out / "shop" / "shop.inter").write_text("my own file\n")
    assert main(["export", "shop", "--out", str(out)]) == 2
    assert "not written by `seqrec export`" in _err(capsys)
    assert (out / "shop" / "shop.inter").read_text() == "my own file\n"
    assert main(["export", "shop", "--out", str(out), "--name", "../escape"]) == 2
    _err(capsys)
    assert not (tmp_path / "escape").exists()
    assert main(["export", "shop", "--out", str(tmp_path / "rb2")]) == 0
    assert main(["export", "shop", "--out", str(tmp_path / "rb2")]) == 0  # its own export: replaced


# -- 2. checkpoints never run code ---------------------------------------------------------------

class _Payload:
    """Pickles to a call that writes a file: what a crafted checkpoint would do."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "code ran"))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hard_run")
    ds = prepare_dataset("synthetic", out=root / "ds", log=None,
                         synthetic_kwargs={"n_users": 120, "n_items": 40, "seed": 3, "max_length": 20})
    cfg = _train_args(ds.path, root / "run")
    train(resolve_config(cfg), log=QUIET)
    return ds.path, root / "run"


def _train_args(ds_path, run_dir, **kw) -> dict:
    base = {"dataset": str(ds_path), "train_dir": str(run_dir), "model": "sasrec", "no_mhc": True, "maxlen": 12,
            "hidden_units": 16, "num_heads": 1, "num_blocks": 1, "batch_size": 32, "num_epochs": 2,
            "eval_negatives": 10, "device": "cpu", "num_threads": 1, "progress": False}
    base.update(kw)
    return base


def _argv(args: dict) -> list[str]:
    out = []
    for k, v in args.items():
        if isinstance(v, bool):
            if k == "no_mhc":
                out += ["--no_mhc"] if v else []
                continue
            v = str(v).lower()
        out += [f"--{k}", str(v)]
    return out


def test_checkpoint_with_code_is_refused(small_run, tmp_path, capsys):
    _, run = small_run
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    marker = tmp_path / "pwned.txt"
    state = torch.load(run / "best.pt", weights_only=True)
    state["extra"] = _Payload(marker)
    for name in ("best.pt", "last.pt"):
        torch.save(state, bad / name)
    for argv in (["evaluate", str(bad)], ["recommend", str(bad), "--user", "1"], ["train", "--resume", str(bad)]):
        assert main(argv) == 2
        err = _err(capsys)
        assert "refused to load" in err and "could run code" in err, err
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint_file(bad / "best.pt")


def test_truncated_and_empty_checkpoints_are_one_line(small_run, tmp_path, capsys):
    _, run = small_run
    bad = tmp_path / "trunc"
    shutil.copytree(run, bad)
    data = (run / "best.pt").read_bytes()
    (bad / "best.pt").write_bytes(data[: len(data) // 2])
    assert main(["evaluate", str(bad)]) == 2
    assert "truncated" in _err(capsys)
    (bad / "best.pt").write_bytes(b"")
    assert main(["evaluate", str(bad)]) == 2
    assert "is empty" in _err(capsys)


def test_checkpoints_hold_only_plain_data(small_run):
    _, run = small_run
    last = load_checkpoint_file(run / "last.pt")  # weights_only=True inside
    assert last["state"]["rng_now"]["bit_generator"] == "PCG64"


# -- 3. run folders: refused unless --resume/--overwrite; locked while in use --------------------------

def test_a_finished_run_is_not_replaced_silently(small_run, tmp_path, capsys):
    ds_path, run = small_run
    copy = tmp_path / "done"
    shutil.copytree(run, copy)
    before = {p.name: _md5(p) for p in copy.iterdir() if p.is_file()}
    assert main(["train", *_argv(_train_args(ds_path, copy, num_epochs=1, lr=0.01))]) == 2
    err = _err(capsys)
    assert "already holds a run" in err and "--overwrite" in err and "--resume" in err
    assert {p.name: _md5(p) for p in copy.iterdir() if p.is_file()} == before
    # --overwrite: a clean new run, nothing of the old one left beside it
    assert main(["train", *_argv(_train_args(ds_path, copy, num_epochs=1, lr=0.01)), "--overwrite"]) == 0
    assert yaml.safe_load((copy / "config.yaml").read_text())["train"]["lr"] == 0.01
    assert json.loads((copy / "test_metrics.json").read_text())["epochs_run"] == 1
    assert not (copy / ".replaced").exists() and not (copy / ".lock").exists()


def test_foreign_folder_is_refused_even_with_overwrite(small_run, tmp_path, capsys):
    ds_path, _ = small_run
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("x")
    assert main(["train", *_argv(_train_args(ds_path, mine)), "--overwrite"]) == 2
    assert "holds no seqrec run" in _err(capsys)
    assert [p.name for p in mine.iterdir()] == ["todo.txt"]
    (tmp_path / "afile").write_text("x")
    assert main(["train", *_argv(_train_args(ds_path, tmp_path / "afile"))]) == 2
    assert "is a file" in _err(capsys)


def test_an_overwrite_killed_before_the_new_config_restores_the_old_run(small_run, tmp_path, capsys):
    ds_path, run = small_run
    copy = tmp_path / "half"
    copy.mkdir()
    shutil.copytree(run, copy / ".replaced")  # what --overwrite leaves when killed before config.yaml
    best = _md5(copy / ".replaced" / "best.pt")
    assert main(["train", *_argv(_train_args(ds_path, copy))]) == 2  # restored, so: holds a run
    assert "already holds a run" in _err(capsys)
    assert _md5(copy / "best.pt") == best and not (copy / ".replaced").exists()
    assert main(["evaluate", str(copy)]) == 0


@pytest.mark.slow
def test_second_process_is_refused_and_a_killed_holder_lock_is_taken_over(small_run, tmp_path):
    ds_path, _ = small_run
    run = tmp_path / "busy"
    args = _train_args(ds_path, run, num_epochs=100000, checkpoint_every=2, patience=0, eval_every=50)
    first = subprocess.Popen([sys.executable, "-m", "seqrec", "train", *_argv(args)], env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "last.pt").exists():
            assert first.poll() is None, first.stderr.read()
            assert time.time() < deadline, "the first training wrote no checkpoint"
            time.sleep(0.2)
        for extra in (["--overwrite"], ["--resume", str(run)]):
            argv = ["--resume", str(run)] if extra[0] == "--resume" else [*_argv(args), *extra]
            second = subprocess.run([sys.executable, "-m", "seqrec", "train", *argv], env=_env(),
                                    capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stderr
            assert f"in use by process {first.pid}" in second.stderr, second.stderr
        with pytest.raises(FolderInUseError):
            FolderLock(run / ".lock", "run").acquire()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (run / ".lock").exists()  # left by the killed holder: stale
    resumed = subprocess.Popen([sys.executable, "-m", "seqrec", "train", "--resume", str(run), "--num_threads", "1"],
                               env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in resumed.stdout:  # it takes the stale lock over and continues
            lines.append(line)
            if "resumed from" in line:
                break
        assert any("resumed from" in ln for ln in lines), "".join(lines)
    finally:
        resumed.kill()
        resumed.wait()


# -- 4. re-prepare is safe against kills; leftovers are cleaned -------------------------------------

KILL_AT_SECOND_RENAME = textwrap.dedent("""
    import os, signal, sys
    import seqrec.utils.io as sio
    real, calls = os.replace, []
    def replace(a, b):
        calls.append((a, b))
        if len(calls) == 2:  # the old folder moved aside, the new one not yet in: killed here
            os.kill(os.getpid(), signal.SIGKILL)
        return real(a, b)
    sio.os.replace = replace
    from seqrec.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_reprepare_killed_between_the_renames_keeps_the_dataset(inter_file, tmp_path):
    ds = prepare_dataset("shop", raw=inter_file, log=None)
    before = _md5(ds.path / "item.npy")
    folder = default_dataset_dir("shop")
    killed = subprocess.run([sys.executable, "-c", KILL_AT_SECOND_RENAME, "prepare", "shop", "--raw", str(inter_file),
                             "--min_user", "8"], env=_env(), capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert not folder.exists() and (folder.parent / ".shop.old").exists()  # the state the kill leaves
    info = subprocess.run([sys.executable, "-m", "seqrec", "info", "shop"], env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert info.returncode == 0, info.stderr
    assert "restored" in info.stdout
    assert _md5(folder / "item.npy") == before and not (folder.parent / ".shop.old").exists()


def test_leftovers_of_killed_writes_are_removed(inter_file):
    prepare_dataset("shop", raw=inter_file, log=None)
    root = default_dataset_dir("shop").parent
    (root / ".shop.abcd1234.tmp").mkdir()
    (root / ".shop.abcd1234.tmp" / "item.npy").write_bytes(b"half")
    (root / ".shopping.abcd1234.tmp").mkdir()  # another dataset's: not ours to remove
    prepare_dataset("shop", raw=inter_file, log=None)
    assert not (root / ".shop.abcd1234.tmp").exists() and (root / ".shopping.abcd1234.tmp").exists()


def test_partial_downloads_are_removed(tmp_path):
    import zipfile

    from seqrec.data.download import fetch

    zpath = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("ml-100k/u.data", "1\t1\t5\t881250949\n")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ".ml-100k.x1y2z3w4.zip.part").write_bytes(b"partial")
    fetch("ml-100k", raw=zpath, home=cache, md5=_md5(zpath))
    assert not list(cache.glob("*.part"))


# -- 5. timestamps: milliseconds detected before anything is written; warnings ------------------------

def test_millisecond_timestamps_are_refused_before_writing(tmp_path, capsys):
    path = _write_inter(tmp_path / "ms.inter", _rows(scale=1000))
    assert main(["prepare", "msdata", "--raw", str(path)]) == 2
    err = _err(capsys)
    assert "look like milliseconds" in err and "--time_unit_in ms" in err and str(path) in err
    assert not default_dataset_dir("msdata").exists()
    assert main(["prepare", "msdata", "--raw", str(path), "--time_unit_in", "ms"]) == 0
    assert "converted from ms to seconds" in capsys.readouterr().out
    ds = resolve_dataset("msdata")
    assert ds.timestamp.min() == 1_600_000_000 and ds.manifest["source"]["time_unit_in"] == "ms"


def test_negative_timestamps_and_duplicates_are_counted(tmp_path, capsys):
    rows = _rows(n_users=10, per_user=6)
    rows[0] = (1, rows[0][1], -5)
    rows += [rows[3], rows[3], rows[10]]  # three exact repeats
    path = _write_inter(tmp_path / "d.inter", rows)
    assert main(["prepare", "dupes", "--raw", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 rows have negative timestamps" in out
    assert "3 rows repeat another row's user, item and timestamp" in out and "--dedup" in out
    assert main(["prepare", "dupes", "--raw", str(path), "--dedup", "first"]) == 0
    ds = resolve_dataset("dupes")
    pairs = {(int(u), int(i)) for u, i in zip(ds.user, ds.item)}
    assert len(pairs) == len(ds)


# -- 6. one-line errors naming the file ------------------------------------------------------------

def test_yaml_errors_name_the_file_and_line(tmp_path, small_run, capsys):
    ds_path, _ = small_run
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 0.001\nbatch_size: [oops\n")
    assert main(["train", "--config", str(bad), "--dataset", str(ds_path), "--train_dir", str(tmp_path / "r")]) == 2
    err = _err(capsys)
    assert str(bad) in err and "line" in err and "YAML syntax error" in err
    bad.write_text("batch_size: [64, 128]\n")
    assert main(["train", "--config", str(bad), "--dataset", str(ds_path), "--train_dir", str(tmp_path / "r")]) == 2
    err = _err(capsys)
    assert str(bad) in err and "batch_size must be an integer, got a list" in err


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    cmd = [sys.executable, "-m", "seqrec", "evaluate", str(tmp_path)]
    (tmp_path / "config.yaml").write_text("dataset: [\n")
    plain = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=60)
    assert plain.returncode == 2 and len(plain.stderr.strip().splitlines()) == 1, plain.stderr
    debug = subprocess.run(cmd, env=_env(SEQREC_DEBUG="1"), capture_output=True, text=True, timeout=60)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def _tmpfs_run(script: str, size_kb: int, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``script`` (bash) with a private tmpfs of ``size_kb`` mounted at ``cwd/disk``."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare: cannot make a size-limited file system here")
    (cwd / "disk").mkdir()
    inner = f"mount -t tmpfs -o size={size_kb}k tmpfs {cwd / 'disk'} || exit 77\n{script}"
    for prefix in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
        probe = subprocess.run([*prefix, "true"], capture_output=True)
        if probe.returncode == 0:
            res = subprocess.run([*prefix, "bash", "-c", inner], env=_env(), capture_output=True, text=True,
                                 timeout=300, cwd=cwd)
            if res.returncode != 77:
                return res
    pytest.skip("cannot mount a tmpfs here (no privileges): the disk-full case is not testable")


@pytest.mark.slow
def test_disk_full_is_one_line_and_keeps_the_previous_checkpoints(small_run, tmp_path):
    ds_path, run = small_run
    ckpt = (run / "best.pt").stat().st_size
    # room for the first epoch's best.pt and last.pt, not for a third copy: epoch 2 hits a full disk
    pages = -(-ckpt // 4096)
    size_kb = 2 * 4 * pages + 32  # + config.yaml, metrics.jsonl, the lock: a page each, some spare
    args = _train_args(ds_path, "disk/run", num_epochs=5, lr=0.01)
    res = _tmpfs_run(f"{sys.executable} -m seqrec train {' '.join(_argv(args))}\necho rc=$?\n"
                     f"{sys.executable} -c \"import torch; s = torch.load('disk/run/last.pt', weights_only=True); "
                     f"torch.load('disk/run/best.pt', weights_only=True); print('epoch', s['state']['epoch'])\"",
                     size_kb, tmp_path)
    assert "rc=2" in res.stdout, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and "no space left on device at disk/run/" in lines[0], res.stderr
    assert "epoch 2" in res.stdout  # last.pt of epoch 1, intact and loadable; best.pt too
    assert "Traceback" not in res.stderr


# -- 7. every setting checked before the first step -------------------------------------------------

@pytest.mark.parametrize("bad, message", [
    ({"eval_negatives": -5}, "--eval_negatives must be a non-negative integer"),
    ({"loss": "sampled_softmax", "num_negatives": 0}, "needs --num_negatives > 0"),
    ({"num_threads": -1}, "--num_threads must be a non-negative integer"),
    ({"lr_decay_rate": 0.0}, "--lr_decay_rate must be > 0"),
    ({"max_bad_steps": 0}, "--max_bad_steps must be a positive integer"),
    ({"split_fraction": 1.5}, "--split_fraction must be in (0, 1)"),
])
def test_bad_settings_fail_before_anything_runs(bad, message, small_run, tmp_path, capsys):
    ds_path, _ = small_run
    run = tmp_path / "never"
    assert main(["train", *_argv(_train_args(ds_path, run, **bad))]) == 2
    assert message in _err(capsys)
    assert not run.exists()
    with pytest.raises(ValueError, match="must|needs"):
        validate_config(resolve_config(_train_args(ds_path, run, **bad)))


def test_evaluate_defaults_to_the_runs_own_negatives(small_run, capsys):
    _, run = small_run
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1])["sampled"]["n_users"] > 0
    assert main(["evaluate", str(run), "--negatives", "-1"]) == 2
    assert "--negatives must be a non-negative integer" in _err(capsys)
