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
from seqrec.train.config import ARGUMENTS, resolve_config, validate_config
from seqrec.train.losses import LOSSES, get_loss
from seqrec.train.trainer import lr_lambda, train

SEED_TABLE = {  # the SASRec.pytorch seed's argument table and defaults
    "batch_size": 128, "lr": 0.001, "lr_decay_step": 1000, "lr_decay_rate": 0.95, "warmup_steps": 100,
    "maxlen": 200, "hidden_units": 50, "num_blocks": 2, "num_heads": 2, "dropout_rate": 0.2, "l2_emb": 0.0,
    "no_time": False, "no_mhc": False, "mhc_expansion_rate": 4, "mhc_sinkhorn_iter": 20, "mhc_init_gate": 0.01,
    "mhc_no_amp": False, "time_span": 100, "time_unit": "hour", "num_epochs": 1000,
}


def test_every_seed_argument_has_its_default():
    defaults = {a.name: a.default for a in ARGUMENTS}
    for k, v in SEED_TABLE.items():
        assert defaults[k] == v, k
    assert "dataset" in defaults and "train_dir" in defaults and "device" in defaults


def test_model_options_are_documented_in_help(capsys):
    from seqrec.train.config import model_arguments

    docs = {k: h for k, (_, h) in model_arguments().items()}
    assert docs["embed_norm"].startswith("sasrec, tisasrec: LayerNorm on the input embeddings")
    assert "; ss4rec: dropout + LayerNorm on the item embeddings" in docs["embed_norm"]  # shared name
    assert docs["embed_norm"].count("LayerNorm on the input embeddings") == 1  # one description, listed once
    assert docs["score_dropout"].startswith("sasrec, ss4rec, tisasrec: dropout on the item table")
    assert docs["s5_state"].startswith("ss4rec: S5 complex state size")
    assert docs["time_scale"].startswith("ss4rec: unit of the S5 time gaps")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "Mamba causal conv width" in capsys.readouterr().out


def test_lr_schedule_warmup_then_step_decay():
    f = lr_lambda(warmup_steps=10, steps_per_epoch=5, decay_step=2, decay_rate=0.5)
    assert f(0) == pytest.approx(0.1)
    assert f(4) == pytest.approx(0.5)
    assert f(9) == pytest.approx(1.0) and f(10) == pytest.approx(0.5)  # epoch 2 -> first decay
    assert f(19) == pytest.approx(0.5) and f(20) == pytest.approx(0.25)
    g = lr_lambda(0, 5, 1000, 0.95)
    assert g(0) == 1.0 and g(4999) == 1.0 and g(5000) == pytest.approx(0.95)


def test_config_precedence_yaml_then_cli(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"lr": 0.01, "maxlen": 77, "no_time": True}))
    cfg = resolve_config({"config": str(cfg_file), "maxlen": 33})
    assert cfg["lr"] == 0.01 and cfg["maxlen"] == 33 and cfg["model"] == "sasrec"
    assert cfg["batch_size"] == 128
    assert resolve_config({})["model"] == "tisasrec"
    assert resolve_config({"no_mhc": True})["mhc"] is False
    cfg_file.write_text(yaml.safe_dump({"hiden_units": 64}))
    with pytest.raises(ValueError, match="did you mean 'hidden_units'"):
        resolve_config({"config": str(cfg_file)})


def test_yaml_numbers_without_a_dot_take_the_argument_type(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-4 as the *string* '1e-4'; a config must still mean a number.
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 1e-4\nweight_decay: 5e-5\nmaxlen: 5e1\ngrad_clip: 1\nmin_gap: 5e-1\n"
                        "norm_first: 'false'\nembed_norm: yes\n")
    assert yaml.safe_load(cfg_file.read_text())["lr"] == "1e-4"  # the YAML quirk itself
    cfg = resolve_config({"config": str(cfg_file), "dataset": "x", "train_dir": "y"})
    assert cfg["lr"] == 1e-4 and isinstance(cfg["lr"], float)
    assert cfg["weight_decay"] == 5e-5 and cfg["maxlen"] == 50 and isinstance(cfg["maxlen"], int)
    assert cfg["grad_clip"] == 1.0 and isinstance(cfg["grad_clip"], float)
    assert cfg["min_gap"] == 0.5  # a model's own option (SS4Rec) is typed too
    assert cfg["norm_first"] is False and cfg["embed_norm"] is True
    validate_config(cfg)
    for text, message in [("lr: fast\n", "lr must be a number"), ("maxlen: 2.5\n", "maxlen must be an integer"),
                          ("norm_first: maybe\n", "norm_first must be true or false")]:
        cfg_file.write_text(text)
        with pytest.raises(ValueError, match=message):
            resolve_config({"config": str(cfg_file)})


@pytest.mark.parametrize("override,message", [
    ({"hidden_units": 50, "num_heads": 3}, "divisible by num_heads"),
    ({"time_unit": "week"}, "--time_unit must be one of"),
    ({"dropout_rate": 1.5}, "dropout_rate"),
    ({"metric": "auc"}, "--metric"),
    ({"metric": "ndcg@50"}, "K in 5, 10, 20"),
    ({"maxlen": 0}, "--maxlen must be a positive integer"),
])
def test_invalid_configs_fail_with_advice(override, message):
    cfg = resolve_config({"dataset": "x", "train_dir": "y", **override})
    with pytest.raises(ValueError, match=message):
        validate_config(cfg)


def test_cli_errors_before_training(tmp_path, capsys):
    rc = main(["train", "--dataset", "no-such-data", "--train_dir", str(tmp_path / "r"), "--no_time", "--no_mhc"])
    assert rc == 2 and "unknown dataset" in capsys.readouterr().err
    rc = main(["train", "--dataset", "x", "--train_dir", str(tmp_path / "r"), "--hidden_units", "50",
               "--num_heads", "3"])
    assert rc == 2 and "change --num_heads" in capsys.readouterr().err


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


def test_sampled_softmax_with_negatives_per_position():
    """negatives [B, L, N] (RecTools/eSASRec): softmax over the target and that position's own
    negatives, a negative equal to the target masked; shared negatives [N] are the special
    case of every position drawing the same ones."""
    m = _tiny_model().eval()
    h = torch.randn(2, 3, 16)
    targets = torch.tensor([[1, 2, 0], [4, 0, 6]])
    negs = torch.randint(1, 21, (2, 3, 5))
    negs[0, 0, 0] = 1  # equals that position's target: masked
    E = m.item_embedding_weight()
    terms = []
    for b, i in zip(*torch.nonzero(targets > 0, as_tuple=True)):
        cand = [int(targets[b, i])] + [int(n) for n in negs[b, i] if n != targets[b, i]]
        logits = E[cand] @ h[b, i]
        terms.append(-torch.log_softmax(logits, 0)[0])
    fn = get_loss("sampled_softmax")
    torch.testing.assert_close(fn(m, h, targets, negatives=negs), torch.stack(terms).mean())
    shared = torch.arange(11, 16)
    torch.testing.assert_close(fn(m, h, targets, negatives=shared),
                               fn(m, h, targets, negatives=shared.expand(2, 3, 5)))


def test_draw_negatives_shapes():
    from seqrec.train.batches import draw_negatives

    rng = np.random.default_rng(0)
    targets = torch.zeros(4, 7, dtype=torch.long)
    users = np.arange(1, 5)
    assert draw_negatives("shared", users, targets, rng, None, 50, 9).shape == (9,)
    per_pos = draw_negatives("shared", users, targets, rng, None, 50, 9, sharing="position")
    assert per_pos.shape == (4, 7, 9) and int(per_pos.min()) >= 1 and int(per_pos.max()) <= 50
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
    cli = {"dataset": str(ds.path), "train_dir": str(run_dir), "no_mhc": True, "maxlen": 20, "hidden_units": 32,
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


def test_sampled_softmax_per_position_trains_the_reference_code_setup(synthetic_ds, tmp_path):
    """The RecTools/eSASRec "SASRec+SS" recipe end to end: reference-code blocks, Xavier
    tables without the sqrt(d) scale, score dropout, 64 negatives drawn per position."""
    torch.set_num_threads(1)
    cfg = _cfg(synthetic_ds, tmp_path / "ss", model="sasrec", loss="sampled_softmax", num_negatives=64,
               negative_sharing="position", block_form="sasrec", init_scheme="xavier", embed_scale=False,
               score_dropout=0.1, num_heads=1, num_blocks=1, num_epochs=6, lr=0.01)
    res = train(cfg, log=lambda *_: None)
    assert res["test_full"]["hr@10"] > 0.3  # chance: 10/80
    saved = yaml.safe_load((tmp_path / "ss" / "config.yaml").read_text())
    assert (saved["negative_sharing"], saved["block_form"], saved["embed_scale"]) == ("position", "sasrec", False)


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
    state = torch.load(tmp_path / "p" / "last.pt", weights_only=False)["state"]
    assert state["lr_scale"] == pytest.approx(0.25) and state["plateau_evals"] == 1
    # stopped after epoch 4 and resumed to 6: the plateau state comes back with the checkpoint
    cut = _cfg(synthetic_ds, tmp_path / "r", model="sasrec", loss="ce", num_epochs=4, lr=1e-9,
               lr_plateau_patience=2, lr_plateau_factor=0.5)
    train(cut, log=lambda *_: None)
    train({**cut, "num_epochs": 6}, log=lambda *_: None, resume=True)
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [e["lr"] for e in lines if e["kind"] == "epoch"] == pytest.approx(lrs, rel=1e-9)


def test_plateau_options_are_checked():
    for bad in ({"lr_plateau_patience": -1}, {"lr_plateau_factor": 1.5}, {"lr_plateau_factor": 0}):
        cli = {"dataset": "x", "train_dir": "y", **bad}
        with pytest.raises(ValueError, match="lr_plateau"):
            validate_config(resolve_config(cli))


def test_sampled_protocol_infeasibility_fails_before_training(synthetic_ds, tmp_path):
    from seqrec.train.batches import SequenceBatcher
    from seqrec.train.evaluation import evaluate
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
