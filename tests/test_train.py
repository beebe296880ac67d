"""Trainer: LR schedule, config precedence and errors, losses, reproducibility, end to end."""

import json
import math

import numpy as np
import pytest
import torch
import yaml

from seqrec.cli import main
from seqrec.data.datasets import prepare_dataset
from seqrec.models import build_model
from seqrec.config import resolve_config, validate_config
from seqrec.train.losses import LOSSES, get_loss
from seqrec.train.step import lr_lambda
from seqrec.train.trainer import train

def test_lr_schedule_warmup_then_step_decay():
    f = lr_lambda(warmup_steps=10, steps_per_epoch=5, decay_step=2, decay_rate=0.5)
    assert f(0) == pytest.approx(0.1)
    assert f(4) == pytest.approx(0.5)
    assert f(9) == pytest.approx(1.0) and f(10) == pytest.approx(0.5)  # epoch 2 -> first decay
    assert f(19) == pytest.approx(0.5) and f(20) == pytest.approx(0.25)
    g = lr_lambda(0, 5, 1000, 0.95)
    assert g(0) == 1.0 and g(4999) == 1.0 and g(5000) == pytest.approx(0.95)


def test_cli_errors_before_training(tmp_path, capsys):
    rc = main(["train", "--dataset", "no-such-data", "--train_dir", str(tmp_path / "r"), "--no_time", "--no_mhc"])
    assert rc == 2 and "unknown dataset" in capsys.readouterr().err
    rc = main(["train", "--dataset", "x", "--train_dir", str(tmp_path / "r"), "--hidden_units", "50",
               "--num_heads", "3"])
    assert rc == 2 and "change --num_heads" in capsys.readouterr().err
    rc = main(["train", "--model", "sasrec", "--dataset", "x", "--train_dir", str(tmp_path / "r"), "--s5_state", "8"])
    assert rc == 2 and "--s5_state is not an option of sasrec" in capsys.readouterr().err


def _tiny_model(n_items=20):
    torch.manual_seed(0)
    return build_model("sasrec", n_items=n_items, hidden_units=16, num_heads=1, maxlen=6, dropout_rate=0.0)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_losses_ignore_padding_positions(loss):
    m = _tiny_model()
    items = torch.tensor([[0, 0, 1, 2, 3, 4], [0, 5, 6, 7, 8, 9]])
    targets = torch.tensor([[0, 0, 2, 3, 4, 5], [0, 6, 7, 8, 9, 10]])
    negs = torch.randint(11, 21, (2, 6))
    shared = torch.arange(11, 21)
    fn = get_loss(loss)
    kw = {"negatives": shared if loss == "sampled_softmax" else negs}
    h = m({"items": items})
    base = fn(m, h, targets, **kw)
    assert torch.isfinite(base)
    h2 = h.clone()
    h2[targets == 0] = 1e3  # garbage where there is no target: must not matter
    assert torch.allclose(fn(m, h2, targets, **kw), base)


def test_draw_negatives_shapes():
    from seqrec.data.batches import draw_negatives

    rng = np.random.default_rng(0)
    targets = torch.zeros(4, 7, dtype=torch.long)
    users = np.arange(1, 5)
    shared = draw_negatives("shared", users, targets, rng, None, 50, 9)
    assert shared.shape == (9,) and int(shared.min()) >= 1 and int(shared.max()) <= 50
    assert draw_negatives("none", users, targets, rng, None, 50, 9) is None


def test_ce_loss_matches_manual_softmax():
    m = _tiny_model()
    h = torch.randn(2, 3, 16)
    targets = torch.tensor([[1, 2, 0], [4, 0, 6]])
    logits = h @ m.item_embedding_weight().T
    mask = targets > 0
    lg = logits[mask][:, 1:]
    expected = torch.nn.functional.cross_entropy(lg, targets[mask] - 1)
    assert torch.allclose(get_loss("ce")(m, h, targets), expected, atol=1e-6)


@pytest.fixture(scope="module")
def synthetic_ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "ds"
    return prepare_dataset("synthetic", out=out, log=None,
                           synthetic_kwargs={"n_users": 300, "n_items": 80, "seed": 1, "mean_length": 20, "max_length": 40})


def _cfg(ds, run_dir, **kw):
    cli = {"dataset": str(ds.path), "train_dir": str(run_dir), "maxlen": 20, "hidden_units": 32,
           "num_heads": 2, "batch_size": 64, "num_epochs": 4, "warmup_steps": 0, "lr": 0.005, "progress": False,
           "eval_negatives": 20, "patience": 0, "device": "cpu", **kw}
    return resolve_config(cli)


def test_train_end_to_end_learns_and_writes_run_folder(synthetic_ds, tmp_path):
    torch.set_num_threads(1)
    res = train(_cfg(synthetic_ds, tmp_path / "run", model="sasrec", loss="ce"), log=lambda *_: None)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.yaml", "metrics.jsonl", "best.pt", "last.pt", "test_metrics.json"} <= files
    saved = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert saved["test_full"]["hr@10"] == pytest.approx(res["test_full"]["hr@10"])
    # chains make the next item predictable: far above a random ranking (10/80)
    assert res["test_full"]["hr@10"] > 0.35
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [x for x in lines if x["kind"] == "epoch"]
    assert len(epochs) == 4 and epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert lines[-1]["kind"] == "test"
    # the test set is evaluated once, with the best validation epoch's weights
    best = max(epochs, key=lambda e: e["valid_ndcg@10"])
    assert res["best_epoch"] == best["epoch"]
    assert res["valid_full"]["ndcg@10"] == pytest.approx(best["valid_ndcg@10"], abs=1e-9)


def test_training_is_reproducible_with_a_seed(synthetic_ds, tmp_path):
    torch.set_num_threads(1)
    kw = dict(model="tisasrec", loss="bce", num_epochs=2)
    a = train(_cfg(synthetic_ds, tmp_path / "a", **kw), log=lambda *_: None)
    b = train(_cfg(synthetic_ds, tmp_path / "b", **kw), log=lambda *_: None)
    c = train(_cfg(synthetic_ds, tmp_path / "c", seed=7, **kw), log=lambda *_: None)
    assert a["test_full"] == b["test_full"] and a["test_sampled"] == b["test_sampled"]
    assert a["test_full"] != c["test_full"]


def test_evaluate_command_reproduces_final_metrics(synthetic_ds, tmp_path, capsys):
    torch.set_num_threads(1)
    res = train(_cfg(synthetic_ds, tmp_path / "run", model="sasrec", loss="bce", num_epochs=1), log=lambda *_: None)
    assert main(["evaluate", str(tmp_path / "run"), "--negatives", "20", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    payload = json.loads(out.strip().splitlines()[-1])
    assert payload["full"]["hr@10"] == pytest.approx(res["test_full"]["hr@10"])
    assert payload["sampled"]["ndcg@10"] == pytest.approx(res["test_sampled"]["ndcg@10"])
    assert math.isfinite(payload["full"]["mrr@10"])


def test_train_on_the_temporal_split(synthetic_ds, tmp_path):
    torch.set_num_threads(1)
    res = train(_cfg(synthetic_ds, tmp_path / "t", model="sasrec", loss="bpr", split="temporal", num_epochs=2),
                log=lambda *_: None)
    sp = synthetic_ds.eval_split("temporal", 0.8)
    assert res["split"] == "temporal"
    assert res["test_full"]["n_users"] == len(sp.test_users) and res["valid_full"]["n_users"] == len(sp.valid_users)
    assert res["test_full"]["hr@10"] > 10 / 80  # better than chance


def test_plateau_decay_scales_the_lr_after_stale_evaluations(synthetic_ds, tmp_path):
    """With an lr too small to move the model, validation never improves after epoch 1:
    patience 2 halves the lr after epochs 3 and 5, and the scale is kept in the checkpoint."""
    torch.set_num_threads(1)
    logs = []
    cfg = _cfg(synthetic_ds, tmp_path / "p", model="sasrec", loss="ce", num_epochs=6, lr=1e-9,
               lr_plateau_patience=2, lr_plateau_factor=0.5)
    train(cfg, log=logs.append)
    lines = [json.loads(x) for x in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()]
    epochs = [x for x in lines if x["kind"] == "epoch"]
    assert len({e["valid_ndcg@10"] for e in epochs}) == 1  # the model did not move
    lrs = [e["lr"] for e in epochs]
    assert lrs == pytest.approx([1e-9, 1e-9, 1e-9, 5e-10, 5e-10, 2.5e-10], rel=1e-9)
    epoch_lines = [m for m in logs if str(m).startswith("epoch ")]
    assert [i + 1 for i, m in enumerate(epoch_lines) if "lr x0.5 (plateau)" in m] == [3, 5]
    state = torch.load(tmp_path / "p" / "last.pt", weights_only=True)["state"]
    assert state["lr_scale"] == pytest.approx(0.25) and state["plateau_evals"] == 1
    # stopped after epoch 4 and resumed to 6: the plateau state comes back with the checkpoint
    cut = _cfg(synthetic_ds, tmp_path / "r", model="sasrec", loss="ce", num_epochs=4, lr=1e-9,
               lr_plateau_patience=2, lr_plateau_factor=0.5)
    train(cut, log=lambda *_: None)
    train(cut.replace(train={"num_epochs": 6}), log=lambda *_: None, resume=True)
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [e["lr"] for e in lines if e["kind"] == "epoch"] == pytest.approx(lrs, rel=1e-9)


def test_plateau_options_are_checked():
    for bad in ({"lr_plateau_patience": -1}, {"lr_plateau_factor": 1.5}, {"lr_plateau_factor": 0}):
        cli = {"dataset": "x", "train_dir": "y", **bad}
        with pytest.raises(ValueError, match="lr_plateau"):
            validate_config(resolve_config(cli))


def test_sampled_protocol_infeasibility_fails_before_training(synthetic_ds, tmp_path):
    from seqrec.data.batches import SequenceBatcher
    from seqrec.eval.evaluate import evaluate
    from seqrec.train.trainer import check_sampled_negatives

    ds = synthetic_ds
    split = ds.eval_split("loo", 0.8)
    b = SequenceBatcher(ds.item, ds.timestamp, ds.offsets, split.train_end, 20)
    users, pos = split.test_users, split.test_pos
    fewest = min(ds.n_items - len(set(b.item[b.start[u - 1]: t + 1].tolist())) for u, t in zip(users, pos))
    assert fewest < ds.n_items - 1  # the boundary below is a real one
    model = build_model("sasrec", n_items=ds.n_items, hidden_units=16, num_heads=1, maxlen=20)
    check_sampled_negatives(b, users, pos, ds.n_items, fewest)  # feasible: the evaluation itself agrees
    evaluate(model, b, users, pos, protocol="sampled", n_negatives=fewest, ks=(10,))
    with pytest.raises(ValueError, match=f"--eval_negatives {fewest + 1}: test user .* leaves only {fewest} of"):
        check_sampled_negatives(b, users, pos, ds.n_items, fewest + 1)
    with pytest.raises(ValueError):
        evaluate(model, b, users, pos, protocol="sampled", n_negatives=fewest + 1, ks=(10,))
    with pytest.raises(ValueError, match="set it to 0"):  # and training refuses before its first step
        train(_cfg(ds, tmp_path / "r", eval_negatives=fewest + 1), log=lambda *a, **k: None)
    assert not (tmp_path / "r" / "last.pt").exists()


def test_metrics_of_a_rank_without_users_do_not_poison_the_reduction(tmp_path):
    import torch.distributed as dist

    from seqrec.train.trainer import _reduce_metrics

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        out = _reduce_metrics({"hr@10": float("nan"), "ndcg@10": float("nan"), "n_users": 0}, torch.device("cpu"))
        assert out == {"hr@10": 0.0, "ndcg@10": 0.0, "n_users": 0}
        out = _reduce_metrics({"hr@10": 0.25, "ndcg@10": 0.1, "n_users": 8}, torch.device("cpu"))
        assert out == pytest.approx({"hr@10": 0.25, "ndcg@10": 0.1, "n_users": 8})
    finally:
        dist.destroy_process_group()
