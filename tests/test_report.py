"""Run reports: numbers from test_metrics.json, valid PNG plots, runs in progress, no matplotlib."""

import json
import shutil
import sys

import pytest
import torch

from seqrec.data.datasets import prepare_dataset
from seqrec.runs import RunFolder
from seqrec.track.report import split_attempts, write_report
from seqrec.config import resolve_config
from seqrec.train.trainer import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("report")
    ds = prepare_dataset("synthetic", out=base / "ds", log=None,
                         synthetic_kwargs={"n_users": 120, "n_items": 40, "seed": 3, "mean_length": 12, "max_length": 25})
    cfg = resolve_config({"dataset": str(ds.path), "train_dir": str(base / "run"), "model": "sasrec", "no_mhc": True,
                          "maxlen": 20, "hidden_units": 32, "num_heads": 2, "batch_size": 32, "num_epochs": 2,
                          "warmup_steps": 0, "lr": 0.005, "progress": False, "eval_negatives": 20, "patience": 0,
                          "device": "cpu", "log_every": 1})
    train(cfg, log=lambda *_: None)
    return base / "run"


def _copy_run(src, dst, drop_test=True):
    dst.mkdir()
    shutil.copy(src / "config.yaml", dst / "config.yaml")
    lines = (src / "metrics.jsonl").read_text().splitlines()
    if drop_test:
        lines = [x for x in lines if json.loads(x)["kind"] != "test"]
    (dst / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return dst


def test_report_of_a_finished_run(run_dir):
    path = write_report(run_dir)
    assert path == run_dir / "report.md"
    text = path.read_text()
    res = json.loads((run_dir / "test_metrics.json").read_text())
    assert text.startswith("# sasrec on synthetic")
    for split in ("valid_full", "test_full", "test_sampled"):
        for key in ("hr@5", "hr@10", "hr@20", "ndcg@10", "mrr@20"):
            assert f"{res[split][key]:.4f}" in text, (split, key)
    assert res["protocol_full"] in text and res["protocol_sampled"] in text
    assert f"Best epoch: **{res['best_epoch']}**" in text
    assert "sequences/s" in text and "not finished" not in text
    assert "| maxlen | 20 |" in text and "| loss | ce |" not in text  # the run's loss is bce
    for name in ("loss.png", "valid.png"):
        assert f"]({name})" in text  # relative links
        data = (run_dir / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert not list(run_dir.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_report_of_a_run_in_progress(run_dir, tmp_path):
    d = _copy_run(run_dir, tmp_path / "partial")
    text = write_report(d).read_text()
    assert "not finished" in text
    epochs = [r for r in RunFolder(d).metrics() if r["kind"] == "epoch"]
    best = max(epochs, key=lambda r: r["valid_ndcg@10"])
    assert f"Best epoch: **{best['epoch']}**" in text and "so far" in text
    assert (d / "loss.png").read_bytes()[:8] == PNG_MAGIC
    assert (d / "valid.png").read_bytes()[:8] == PNG_MAGIC


def test_report_before_the_first_epoch(run_dir, tmp_path):
    d = tmp_path / "fresh"
    d.mkdir()
    shutil.copy(run_dir / "config.yaml", d / "config.yaml")
    text = write_report(d).read_text()
    assert "not finished" in text and "no epoch has finished" in text.lower()
    assert not (d / "loss.png").exists()


def test_report_without_matplotlib(run_dir, tmp_path, monkeypatch):
    d = _copy_run(run_dir, tmp_path / "noplot", drop_test=False)
    shutil.copy(run_dir / "test_metrics.json", d / "test_metrics.json")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    text = write_report(d).read_text()
    assert "matplotlib is not installed" in text
    assert not (d / "loss.png").exists() and "](loss.png)" not in text
    res = json.loads((d / "test_metrics.json").read_text())
    assert f"{res['test_full']['ndcg@10']:.4f}" in text


def test_appended_attempts_use_the_last(run_dir, tmp_path):
    d = _copy_run(run_dir, tmp_path / "twice", drop_test=False)
    lines = (d / "metrics.jsonl").read_text()
    (d / "metrics.jsonl").write_text(lines + lines)  # trained twice into the same folder
    records = RunFolder(d).metrics()
    attempts = split_attempts(records)
    assert len(attempts) == 2 and attempts[0] == attempts[1]
    assert "2 training attempts" in write_report(d, plots=False).read_text()


def test_not_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        write_report(tmp_path)
