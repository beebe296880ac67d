"""--production: the pre-flight check first (a failed check stops the run before anything is
trained), last.pt on a wall-clock interval, W&B online when WANDB_API_KEY is set."""

import shutil

import numpy as np
import pytest

from seqrec.cli import main
from seqrec.config import apply_profile, resolve_config
from seqrec.data.datasets import prepare_dataset
from seqrec.train import trainer as trainer_mod
from seqrec.train.trainer import train

QUIET = lambda *a, **k: None  # noqa: E731


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return prepare_dataset("synthetic", out=tmp_path_factory.mktemp("prod") / "ds", log=None,
                           synthetic_kwargs={"n_users": 150, "n_items": 40, "seed": 0, "max_length": 20})


def _argv(ds_path, run):
    return ["--model", "sasrec", "--dataset", str(ds_path), "--train_dir", str(run), "--maxlen", "10",
            "--hidden_units", "16", "--num_epochs", "1", "--eval_negatives", "5", "--num_threads", "1",
            "--progress", "false", "--device", "cpu"]


def test_a_failed_preflight_check_stops_the_run_before_training(ds, tmp_path, capsys):
    bad = tmp_path / "ds"
    shutil.copytree(ds.path, bad)
    item = np.load(bad / "item.npy")
    item[0] = 1 if item[0] != 1 else 2
    np.save(bad / "item.npy", item)  # the manifest's checksum no longer matches
    run = tmp_path / "run"
    assert main(["train", *_argv(bad, run), "--production"]) == 2
    captured = capsys.readouterr()
    assert "✗  checksums" in captured.out  # the checks are printed
    assert "the pre-flight check failed (checksums); nothing was trained" in captured.err
    assert not (run / "config.yaml").exists() and not (run / "last.pt").exists()
    assert main(["train", *_argv(ds.path, run), "--production"]) == 0  # the same folder, a good dataset
    assert "12 of 12 checks passed" in capsys.readouterr().out


def test_production_profile_values():
    cfg = apply_profile(resolve_config({"production": True}))
    assert cfg.train.profile == "production" and cfg.train.checkpoint_minutes == 10
    assert apply_profile(resolve_config({})).train.checkpoint_minutes == 0


def test_checkpoint_minutes_writes_last_pt_during_an_epoch(ds, tmp_path, monkeypatch):
    saves = []
    real = trainer_mod.save_checkpoint
    monkeypatch.setattr(trainer_mod, "save_checkpoint", lambda path, *a: saves.append(path.name) or real(path, *a))
    args = {"model": "sasrec", "dataset": str(ds.path), "maxlen": 10, "hidden_units": 16, "num_epochs": 1,
            "batch_size": 16, "eval_negatives": 5, "progress": False, "device": "cpu"}
    train(resolve_config({**args, "train_dir": str(tmp_path / "a")}), log=QUIET)
    assert saves == ["best.pt", "last.pt"]  # per epoch only
    saves.clear()
    train(resolve_config({**args, "train_dir": str(tmp_path / "b"), "checkpoint_minutes": 1e-9}), log=QUIET)
    steps = -(-150 // 16)
    assert saves.count("last.pt") == steps + 1  # the clock is always due: after every step, and the epoch


def test_production_turns_wandb_online_with_an_api_key(ds, tmp_path, monkeypatch):
    from seqrec.track import sinks

    opened = []

    class FakeWandb:
        def __init__(self, run_dir, config, project="seqrec", online=False):
            opened.append(online)

        def log(self, record):
            pass

        def close(self):
            pass

    monkeypatch.setattr(sinks, "WandbSink", FakeWandb)
    monkeypatch.setattr(trainer_mod, "_preflight_or_stop", lambda cfg, log: None)
    args = {"model": "sasrec", "dataset": str(ds.path), "maxlen": 10, "hidden_units": 16, "num_epochs": 1,
            "eval_negatives": 5, "progress": False, "device": "cpu", "production": True}
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    train(resolve_config({**args, "train_dir": str(tmp_path / "a")}), log=QUIET)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    train(resolve_config({**args, "train_dir": str(tmp_path / "b")}), log=QUIET)
    assert opened == [True]  # no key: no W&B; a key: W&B, online
