"""Pre-flight checks: all pass on a tiny config; each failure is isolated and explained."""

import shutil

import numpy as np
import pytest
import torch

from seqrec.data.datasets import prepare_dataset
from seqrec.train import verify
from seqrec.config import resolve_config
from seqrec.train.verify import Check, format_checks, preflight

NAMES = ["dependencies", "optional extras", "device", "fused kernels", "config", "dataset", "checksums",
         "sequences", "model", "training step", "memory", "disk"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("verify") / "ds"
    return prepare_dataset("synthetic", out=out, log=None,
                           synthetic_kwargs={"n_users": 100, "n_items": 40, "seed": 2, "mean_length": 12, "max_length": 30})


def _cfg(dataset, tmp_path, **kw):
    torch.set_num_threads(1)
    return resolve_config({"dataset": str(dataset.path), "train_dir": str(tmp_path / "run"), "model": "tisasrec",
                           "no_mhc": True, "maxlen": 20, "hidden_units": 16, "num_heads": 2, "batch_size": 64,
                           "device": "cpu", **kw})


def _by_name(checks: list[Check]) -> dict[str, Check]:
    assert [c.name for c in checks] == NAMES
    return {c.name: c for c in checks}


def test_all_checks_pass_on_a_tiny_config(dataset, tmp_path):
    lines = []
    checks = preflight(_cfg(dataset, tmp_path), batch_sizes=(16, 32, 64), log=lines.append)
    by = _by_name(checks)
    assert all(c.ok for c in checks), format_checks(checks)
    assert len(lines) == len(NAMES)  # one log entry per check, as it completes
    mem = by["memory"].data
    assert [r["batch_size"] for r in mem["table"]] == [16, 32, 64]
    sizes = [r["bytes"] for r in mem["table"]]
    assert sizes == sorted(sizes) and sizes[0] > 0
    assert mem["suggested_batch_size"] == 64  # a tiny model fits easily
    assert "largest batch size that fits: 64" in by["memory"].detail
    assert by["training step"].data["loss"] > 0
    assert by["model"].data["n_items"] == dataset.n_items
    text = format_checks(checks)
    assert "✓" in text and "✗" not in text and "12 of 12 checks passed" in text


def test_mhc_model_and_other_losses(dataset, tmp_path):
    cfg = _cfg(dataset, tmp_path, model="sasrec", no_mhc=None, mhc_expansion_rate=2, loss="sampled_softmax",
               num_negatives=16)
    assert cfg.model.mhc.expansion_rate == 2
    by = _by_name(preflight(cfg, batch_sizes=(32,), log=None))
    assert all(c.ok for c in by.values()), format_checks(list(by.values()))
    assert "sasrec + mHC (n=2)" in by["model"].detail


def test_missing_dataset_fails_alone(tmp_path):
    cfg = resolve_config({"dataset": "no-such-data", "train_dir": str(tmp_path / "run"), "model": "sasrec",
                          "no_mhc": True, "maxlen": 20, "hidden_units": 16, "num_heads": 2, "device": "cpu"})
    by = _by_name(preflight(cfg, log=None))
    assert not by["dataset"].ok and "unknown dataset 'no-such-data'" in by["dataset"].detail
    assert "seqrec prepare no-such-data" in by["dataset"].fix
    for name in ("dependencies", "optional extras", "device", "config", "model", "disk"):
        assert by[name].ok, by[name]
    assert "placeholder" in by["model"].detail
    for name in ("checksums", "sequences", "training step", "memory"):
        assert not by[name].ok and by[name].detail.startswith("not run")


def test_prepared_name_that_is_not_prepared(tmp_path):
    cfg = resolve_config({"dataset": "ml-100k", "train_dir": str(tmp_path / "run"), "no_time": True, "no_mhc": True,
                          "device": "cpu"})
    by = _by_name(preflight(cfg, log=None))
    assert not by["dataset"].ok and "not prepared yet" in by["dataset"].detail
    assert "`seqrec prepare ml-100k`" in by["dataset"].fix


def test_invalid_config_is_reported_and_the_rest_still_runs(dataset, tmp_path):
    by = _by_name(preflight(_cfg(dataset, tmp_path, hidden_units=50, num_heads=3), log=None))
    assert not by["config"].ok and "divisible by num_heads" in by["config"].detail
    assert "change --num_heads or --hidden_units" in by["config"].detail
    assert not by["model"].ok and "does not build" in by["model"].detail
    for name in ("dependencies", "device", "dataset", "checksums", "sequences"):
        assert by[name].ok, by[name]
    assert not by["training step"].ok and "not run" in by["training step"].detail


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(dataset, tmp_path):
    by = _by_name(preflight(_cfg(dataset, tmp_path, device="cuda"), batch_sizes=(32,), log=None))
    assert not by["device"].ok and "CUDA is not available" in by["device"].detail
    assert "--device cpu" in by["device"].fix
    # the other checks still run, on the CPU, and say so
    for name in ("dataset", "model", "training step", "memory", "disk"):
        assert by[name].ok, by[name]
    assert "checks ran on the CPU" in by["training step"].detail


def test_unregistered_model_and_mhc_without_variant(dataset, tmp_path, capsys):
    from seqrec.cli import main

    base = ["--dataset", str(dataset.path), "--train_dir", str(tmp_path / "r"), "--device", "cpu"]
    assert main(["verify", "--model", "nosuchmodel", *base]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'nosuchmodel'" in err and "sasrec" in err
    assert main(["verify", "--model", "ss4rec", "--mhc", *base]) == 2  # no mHC variant: not even a flag
    assert "--mhc" in capsys.readouterr().err


def test_corrupted_dataset_fails_checksums(dataset, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(dataset.path, copy)
    item = np.load(copy / "item.npy")
    item[0] = 1 if item[0] != 1 else 2
    np.save(copy / "item.npy", item)
    cfg = _cfg(dataset, tmp_path).replace(data={"dataset": str(copy)})
    by = _by_name(preflight(cfg, batch_sizes=(32,), log=None))
    assert not by["checksums"].ok and "checksum mismatch" in by["checksums"].detail
    assert "seqrec prepare" in by["checksums"].fix
    assert by["training step"].ok


def test_memory_and_disk_that_do_not_fit(dataset, tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(verify.shutil, "disk_usage", lambda p: usage._replace(free=10))
    checks = preflight(_cfg(dataset, tmp_path), batch_sizes=(32, 64), memory_fraction=1e-9, log=None)
    by = _by_name(checks)
    mem = by["memory"]
    assert not mem.ok and mem.data["suggested_batch_size"] is None
    assert [r["fits"] for r in mem.data["table"]] == [False, False]
    assert "lower --maxlen" in mem.fix and "does NOT fit" in mem.detail
    assert not by["disk"].ok and "another --train_dir" in by["disk"].fix
    text = format_checks(checks)
    assert "✗  memory" in text and "fix: lower --maxlen" in text and "failed: memory, disk" in text


def test_a_crashing_check_becomes_a_failed_check(dataset, tmp_path, monkeypatch):
    def boom(ctx):
        raise RuntimeError("kaput")

    checks = tuple((n, boom if n == "checksums" else f) for n, f in verify.CHECKS)
    monkeypatch.setattr(verify, "CHECKS", checks)
    by = _by_name(preflight(_cfg(dataset, tmp_path), batch_sizes=(32,), log=None))
    assert not by["checksums"].ok and by["checksums"].detail == "RuntimeError: kaput"
    assert by["training step"].ok and by["disk"].ok
