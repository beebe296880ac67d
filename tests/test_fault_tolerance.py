"""Kill-and-resume gives the same final metrics; the stability guard; debug profile; DDP."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seqrec.data.datasets import prepare_dataset
from seqrec.config import resolve_config
from seqrec.train.trainer import TrainingStopped, train, worst_gradient

QUIET = lambda *a, **k: None  # noqa: E731


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "ds"
    return prepare_dataset("synthetic", out=out, log=None,
                           synthetic_kwargs={"n_users": 400, "n_items": 80, "seed": 2, "mean_length": 20, "max_length": 40})


def _args(ds, run_dir, **kw):
    base = {"dataset": str(ds.path), "train_dir": str(run_dir), "model": "sasrec", "no_mhc": True, "maxlen": 20,
            "hidden_units": 32, "num_heads": 2, "batch_size": 32, "num_epochs": 6, "warmup_steps": 5, "lr": 0.005,
            "dropout_rate": 0.3, "loss": "bce", "eval_negatives": 20, "patience": 0, "device": "cpu",
            "num_threads": 1, "progress": False, "checkpoint_every": 4}
    base.update(kw)
    return base


def _cli(args: dict) -> list[str]:
    out = [sys.executable, "-m", "seqrec", "train"]
    for k, v in args.items():
        if isinstance(v, bool):
            if k in ("no_mhc", "debug", "no_time"):
                if v:
                    out.append(f"--{k}")
                continue
            v = str(v).lower()
        out += [f"--{k}", str(v)]
    return out


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.slow
def test_killed_run_resumes_to_identical_metrics(ds, tmp_path):
    ref = train(resolve_config(_args(ds, tmp_path / "ref")), log=QUIET)
    run = tmp_path / "killed"
    proc = subprocess.Popen(_cli(_args(ds, run)), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # kill -9 once a mid-run checkpoint exists (step >= 9: inside epoch 2 of 6)
    deadline = time.time() + 300
    killed = False
    while time.time() < deadline and proc.poll() is None:
        if (run / "last.pt").exists():
            try:
                state = torch.load(run / "last.pt", weights_only=False)["state"]
            except Exception:  # being replaced right now
                state = {"step": 0}
            if state["step"] >= 9:
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
        time.sleep(0.02)
    proc.wait()
    assert killed, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    assert not (run / "test_metrics.json").exists()
    res = subprocess.run([sys.executable, "-m", "seqrec", "train", "--resume", str(run)], env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed from" in res.stdout
    got = json.loads((run / "test_metrics.json").read_text())
    for key in ("valid_full", "test_full", "test_sampled"):
        assert got[key] == pytest.approx(ref[key], abs=1e-9), key
    assert got["best_epoch"] == ref["best_epoch"] and got["steps"] == ref["steps"]
    # the log has each epoch exactly once (records after the checkpoint were truncated)
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["kind"] == "epoch"]
    assert epochs == list(range(1, 7))
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temp files left


def test_resume_refuses_changed_settings(ds, tmp_path, capsys):
    from seqrec.cli import main

    train(resolve_config(_args(ds, tmp_path / "r", num_epochs=1)), log=QUIET)
    assert main(["train", "--resume", str(tmp_path / "r"), "--lr", "0.1"]) == 2
    assert "cannot be changed: --lr" in capsys.readouterr().err


@pytest.mark.parametrize("how", [{"num_epochs": 2}, {"num_epochs": 50, "patience": 1, "lr": 0.2}])
def test_resuming_a_finished_run_only_evaluates_again(ds, tmp_path, how):
    # Out of epochs, or early-stopped: no further epoch is trained and best.pt stays as it was.
    run = tmp_path / "r"
    first = train(resolve_config(_args(ds, run, checkpoint_every=0, **how)), log=QUIET)
    assert first["epochs_run"] == (2 if "patience" not in how else first["best_epoch"] + 1)
    epochs = lambda: [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()  # noqa: E731
                      if json.loads(x).get("kind") == "epoch"]
    before, best_bytes, lines = epochs(), (run / "best.pt").read_bytes(), []
    again = train(resolve_config(_args(ds, run, checkpoint_every=0, **how)), log=lines.append, resume=True)
    assert epochs() == before and (run / "best.pt").read_bytes() == best_bytes
    assert any("had finished training" in str(x) for x in lines)
    for key in ("epochs_run", "best_epoch"):
        assert again[key] == first[key]
    assert again["test_full"] == first["test_full"]


def test_stability_guard_skips_then_stops_with_checkpoint(ds, tmp_path):
    cfg = resolve_config(_args(ds, tmp_path / "s", max_grad_norm=1e-12, max_bad_steps=3))
    with pytest.raises(TrainingStopped, match="lower the learning rate"):
        train(cfg, log=QUIET)
    events = [json.loads(x) for x in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    expl = [e for e in events if e.get("event") == "gradient_explosion"]
    assert [e["step"] for e in expl] == [1, 2, 3]
    assert all(e["layer"] for e in expl)
    assert events[-1]["event"] == "stopped"
    assert (tmp_path / "s" / "last.pt").exists()


def test_fp16_scaler_overflows_are_not_gradient_explosions(ds, tmp_path, monkeypatch):
    # The fp16 GradScaler probes its scale by overflowing now and then (inf gradients, finite
    # loss); those steps are its own to skip, and must not count towards --max_bad_steps.
    # Simulated on CPU: a CPU scaler whose first 6 scaled losses overflow to inf.
    from seqrec.train import step as step_mod

    class OverflowingScaler(torch.amp.GradScaler):
        calls = 0

        def scale(self, outputs):
            OverflowingScaler.calls += 1
            out = super().scale(outputs)
            return out * float("inf") if OverflowingScaler.calls <= 6 else out

    monkeypatch.setattr(step_mod, "autocast_for", lambda device, amp: (None, True))
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device="cuda", **kw: OverflowingScaler("cpu"))
    res = train(resolve_config(_args(ds, tmp_path / "f", num_epochs=2, max_bad_steps=3, checkpoint_every=0)),
                log=QUIET)
    events = [json.loads(x) for x in (tmp_path / "f" / "metrics.jsonl").read_text().splitlines()]
    overflows = [e for e in events if e.get("event") == "amp_overflow"]
    assert [e["step"] for e in overflows] == [1, 2, 3, 4, 5, 6]  # more than max_bad_steps: not stopped
    assert not [e for e in events if e.get("event") == "gradient_explosion"]
    assert overflows[-1]["scale"] < overflows[0]["scale"]  # the scaler backed off
    assert res["epochs_run"] == 2 and math.isfinite(res["test_full"]["hr@10"])


def test_worst_gradient_names_the_nan_layer():
    m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    m(torch.randn(2, 3)).sum().backward()
    m[1].weight.grad[0, 0] = float("nan")
    name, norm = worst_gradient(m)
    assert name == "1.weight" and norm != norm


def test_debug_profile_is_small_and_complete(ds, tmp_path):
    res = train(resolve_config(_args(ds, tmp_path / "d", debug=True, num_epochs=50, debug_users=100)), log=QUIET)
    assert res["epochs_run"] == 2 and res["test_full"]["n_users"] <= 100
    assert (tmp_path / "d" / "test_metrics.json").exists()


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(ds, tmp_path):
    """torchrun with the gloo backend on CPU: same global batch -> same training (dropout 0).
    Batch 57 leaves a last batch of one user (400 = 7 x 57 + 1): rank 1 then has no rows and
    must still join the gradient all-reduce, with no weight in the loss."""
    args = _args(ds, tmp_path / "single", dropout_rate=0.0, num_epochs=3, checkpoint_every=0, batch_size=57)
    assert len(ds.eval_split("loo", 0.8).train_end) == 400 and 400 % 57 == 1
    single = train(resolve_config(args), log=QUIET)
    ddp_args = {**args, "train_dir": str(tmp_path / "ddp")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] + _cli(ddp_args)[1:]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads((tmp_path / "ddp" / "test_metrics.json").read_text())
    assert got["world_size"] == 2
    assert got["test_full"]["n_users"] == single["test_full"]["n_users"]
    for m in ("hr@10", "ndcg@10"):
        assert got["test_full"][m] == pytest.approx(single["test_full"][m], abs=0.02)
        assert got["valid_full"][m] == pytest.approx(single["valid_full"][m], abs=0.02)


@pytest.mark.parametrize("negatives", [None, "shared", "per_position", "position"])
@pytest.mark.parametrize("n,world", [(7, 2), (3, 4), (1, 2), (8, 4)])
def test_shard_batch_splits_rows_and_loss_weights(n, world, negatives):
    from seqrec.train.trainer import shard_batch

    g = torch.Generator().manual_seed(n * 10 + world)
    targets = torch.randint(0, 5, (n, 6), generator=g)
    targets[:, -1] = 1 + targets[:, -1] % 4  # every row has a target
    batch = {"items": torch.randint(0, 9, (n, 6), generator=g), "targets": targets, "users": torch.arange(1, n + 1)}
    if negatives == "shared":
        batch["negatives"] = torch.randint(1, 9, (n + 3,), generator=g)  # [N], even when N happens to be B
    elif negatives == "per_position":
        batch["negatives"] = torch.randint(1, 9, (n, 6), generator=g)
    elif negatives == "position":
        batch["negatives"] = torch.randint(1, 9, (n, 6, 5), generator=g)
    per_row = torch.rand(n, generator=g)  # a per-row loss; a rank's loss is the mean over its targets
    weights = (targets > 0).sum(1).double()
    global_mean = float((per_row * weights).sum() / weights.sum())
    total, seen = 0.0, []
    for rank in range(world):
        mine, factor = shard_batch(batch, rank, world)
        rows = (mine["users"] - 1).long()
        if rank >= n:  # no rows of its own: a stand-in row that weighs nothing
            assert factor == 0 and len(rows) == 1
        else:
            assert rows.tolist() == list(range(rank, n, world))
            seen += rows.tolist()
        for k, v in mine.items():
            want = batch[k] if (k == "negatives" and negatives == "shared") else batch[k][rows]
            assert torch.equal(v, want)
        w = weights[rows]
        total += factor * float((per_row[rows] * w).sum() / w.sum())
    assert sorted(seen) == list(range(n))
    assert total / world == pytest.approx(global_mean)  # DDP averages the ranks' gradients


def test_stale_temp_files_of_a_killed_write_are_removed(tmp_path):
    from seqrec.utils.io import remove_stale_temps

    (tmp_path / ".best.pt.abc123.tmp").write_bytes(b"half")
    (tmp_path / ".ds.x1.tmp").mkdir()
    (tmp_path / "best.pt").write_bytes(b"whole")
    removed = remove_stale_temps(tmp_path)
    assert len(removed) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]
