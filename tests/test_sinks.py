"""Optional tracking sinks (skipped when the extra is not installed)."""

import pytest

from seqrec.data.datasets import prepare_dataset
from seqrec.track.sinks import JsonlSink, truncate_log
from seqrec.config import resolve_config
from seqrec.train.trainer import train


def test_jsonl_truncate_roundtrip(tmp_path):
    s = JsonlSink(tmp_path / "m.jsonl")
    s.log({"kind": "epoch", "epoch": 1})
    off = s.offset()
    s.log({"kind": "epoch", "epoch": 2})
    s.close()
    truncate_log(tmp_path / "m.jsonl", off)
    assert (tmp_path / "m.jsonl").read_text().count("\n") == 1


def _tiny(tmp_path, **kw):
    ds = prepare_dataset("synthetic", out=tmp_path / "ds", log=None,
                         synthetic_kwargs={"n_users": 120, "n_items": 40, "seed": 0, "max_length": 20})
    return resolve_config({"dataset": str(ds.path), "train_dir": str(tmp_path / "run"), "model": "sasrec",
                           "no_mhc": True, "maxlen": 10, "hidden_units": 16, "num_epochs": 1, "progress": False,
                           "eval_negatives": 5, "device": "cpu", **kw})


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(_tiny(tmp_path, wandb=True), log=lambda *a: None)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert runs and any(p.suffix == ".wandb" for p in runs[0].iterdir())


def test_tensorboard_events(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    pytest.importorskip("tensorboard")
    train(_tiny(tmp_path, tensorboard=True), log=lambda *a: None)
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_tensorboard_drops_the_events_a_resume_replays(tmp_path):
    # A session killed after its checkpoint had logged steps the resumed session logs again:
    # TensorBoard must hold each step once, as metrics.jsonl does.
    pytest.importorskip("torch.utils.tensorboard")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    import shutil

    cfg = _tiny(tmp_path, tensorboard=True, log_every=1, num_epochs=1, batch_size=16)
    train(cfg, log=lambda *a: None)
    run = tmp_path / "run"
    shutil.copy(run / "last.pt", tmp_path / "epoch1.pt")
    train(cfg.replace(train={"num_epochs": 2}), log=lambda *a: None, resume=True)  # epoch 2 logged...
    shutil.copy(tmp_path / "epoch1.pt", run / "last.pt")  # ...then "killed" back to epoch 1's checkpoint
    train(cfg.replace(train={"num_epochs": 2}), log=lambda *a: None, resume=True)  # epoch 2 replayed
    acc = event_accumulator.EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("step/loss")]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > 8  # every step once, in order


def test_wandb_resume_continues_the_same_run(tmp_path, monkeypatch):
    # Our contract: every session of one run folder opens W&B with the folder's run id and
    # resume="allow". (How W&B names its offline folders is W&B's business: a full-suite CI run
    # once showed a second folder not named after the id, so the calls themselves are checked.)
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    calls = []
    real_init = wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kw: calls.append(kw) or real_init(**kw))
    cfg = _tiny(tmp_path, wandb=True, num_epochs=1)
    train(cfg, log=lambda *a: None)
    run_id = (tmp_path / "run" / "wandb_id.txt").read_text().strip()
    train(cfg.replace(train={"num_epochs": 2}), log=lambda *a: None, resume=True)
    assert [(c["id"], c["resume"]) for c in calls] == [(run_id, "allow"), (run_id, "allow")]
    assert (tmp_path / "run" / "wandb_id.txt").read_text().strip() == run_id
