"""SS4Rec: interface, time gaps, causality, padding, ablations, training, config errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from chain_task import assert_learns_chain, chain_batch, next_item_loss

from seqrec.data.splits import leave_one_out
from seqrec.models import SS4Rec, SS4RecConfig, SequentialRecommender, build_model, get_model_class
from seqrec.models import TIME_UNITS
from seqrec.models.ss4rec import time_gaps
from seqrec.data.batches import SequenceBatcher
from seqrec.train.losses import get_loss

N_ITEMS = 30
TINY = dict(hidden_units=16, num_blocks=2, dropout_rate=0.2, maxlen=24, s5_state=8, d_state=8)
ABLATIONS = ["full", "s5_only", "mamba_only"]
# model variants checked for causality and padding invariance
VARIANTS = [dict(ablation=a) for a in ABLATIONS] + [dict(embed_norm=True), dict(min_gap=0.5)]


def make_batch(B=4, L=8, n_items=N_ITEMS, seed=0, min_len=1):
    """Right-aligned batch; timestamps increase (a third of the gaps 0, the others up to ~1 h,
    the range where the default S5 steps (seconds) are sensitive); next_timestamps is the
    following timestamp, the target's time at the last position."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, L + 1, (B,), generator=g)
    lengths[0] = L
    valid = torch.arange(L)[None, :] >= (L - lengths)[:, None]
    items = torch.randint(1, n_items + 1, (B, L), generator=g) * valid
    gaps = torch.randint(0, 3, (B, L + 1), generator=g) * torch.randint(0, 4000, (B, L + 1), generator=g)
    t = 1_600_000_000 + torch.cumsum(gaps, dim=1)  # (B, L + 1): the last one is the target's
    return {"items": items.long(), "timestamps": (t[:, :-1] * valid).long(),
            "next_timestamps": (t[:, 1:] * valid).long()}


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model("ss4rec", N_ITEMS, **{**TINY, **overrides})


def test_registry_defaults_and_interface():
    assert get_model_class("SS4Rec") is SS4Rec
    c = SS4RecConfig()
    assert (c.hidden_units, c.num_blocks, c.dropout_rate) == (64, 2, 0.2)
    assert (c.s5_state, c.d_state, c.d_conv, c.expand, c.dt_min, c.dt_max) == (32, 32, 4, 2, 0.001, 0.1)
    assert (c.time_unit, c.ablation, c.use_fast_path) == ("second", "full", True)
    model = make_model().eval()
    assert isinstance(model, SequentialRecommender) and model.uses_time and model.registry_name == "ss4rec"
    batch = make_batch(B=3, L=7)
    hidden = model(batch)
    assert hidden.shape == (3, 7, 16)
    assert (hidden[batch["items"] == 0] == 0).all()
    assert model.item_embedding_weight().shape == (N_ITEMS + 1, 16)
    assert (model.item_embedding_weight()[0] == 0).all()
    torch.testing.assert_close(model.predict(batch), model.score_all(hidden[:, -1]))
    cand = torch.randint(0, N_ITEMS + 1, (3, 7, 5))
    torch.testing.assert_close(model.score_items(hidden, cand), model.score_all(hidden).gather(-1, cand))


def test_official_initialisation():
    model = make_model()
    mamba = model.blocks[0].mamba
    assert mamba.dt_proj.bias.abs().max() == 0  # RecBole init zeroes every Linear bias
    assert 0.01 < mamba.in_proj.weight.std() < 0.03
    assert model.blocks[0].norm.eps == 1e-12
    assert 0.015 < model.item_embedding_weight()[1:].std() < 0.025


def test_time_gaps_exact_int64():
    ts = torch.tensor([[0, 1_700_000_000, 1_700_000_001, 1_700_000_001]])
    nxt = torch.tensor([[0, 1_700_000_001, 1_700_000_001, 1_700_086_401]])
    valid = torch.tensor([[False, True, True, True]])
    gaps = time_gaps(ts, nxt, valid, TIME_UNITS["day"])
    assert gaps.dtype == torch.float64
    assert gaps.tolist() == [[0.0, 1 / 86400, 0.0, 1.0]]
    # the official code subtracts float32 timestamps: a 1-second gap near 1.7e9 s is lost
    assert (nxt.float() - ts.float())[0, 1] in (0.0, 128.0)
    # without next_timestamps: gaps inside the window, 0 at the last position
    assert time_gaps(ts, None, valid, 1).tolist() == [[0.0, 1.0, 0.0, 0.0]]
    # unsorted data: negative gaps become 0
    assert time_gaps(nxt, ts, valid, 1).min() == 0


def test_time_unit_is_a_unit_change():
    torch.manual_seed(0)
    sec = build_model("ss4rec", N_ITEMS, **TINY, time_unit="second").double().eval()
    days = build_model("ss4rec", N_ITEMS, **TINY, time_unit="day").double().eval()
    days.load_state_dict(sec.state_dict())
    batch = make_batch()
    scaled = dict(batch, timestamps=batch["timestamps"] * 86400, next_timestamps=batch["next_timestamps"] * 86400)
    torch.testing.assert_close(days(scaled), sec(batch))
    assert not torch.allclose(days(batch), sec(batch))


def test_min_gap_floors_real_gaps_only():
    """min_gap raises gaps below it (time_unit units) at real positions: the same as
    feeding timestamps whose short gaps were stretched to min_gap; padding keeps dt = 0."""
    torch.manual_seed(0)
    plain = build_model("ss4rec", N_ITEMS, **TINY, time_unit="minute").double().eval()
    floored = build_model("ss4rec", N_ITEMS, **TINY, time_unit="minute", min_gap=2.5).double().eval()
    floored.load_state_dict(plain.state_dict())
    batch = make_batch(B=4, L=8)
    valid = batch["items"] != 0
    gap = batch["next_timestamps"] - batch["timestamps"]
    assert ((gap == 0) & valid).sum() >= 2  # the floor has zero gaps to act on
    stretched = dict(batch, next_timestamps=torch.where(valid & (gap < 150), batch["timestamps"] + 150,
                                                         batch["next_timestamps"]))
    out = floored(batch)
    torch.testing.assert_close(out, plain(stretched))
    assert not torch.allclose(out, plain(batch))
    assert (out[~valid] == 0).all()
    padded = {k: F.pad(v, (3, 0)) for k, v in batch.items()}  # padding stays inert
    torch.testing.assert_close(floored(padded)[:, 3:], out)
    # a floor only changes S5's input: without S5 the option has no effect
    torch.manual_seed(0)
    m0 = build_model("ss4rec", N_ITEMS, **TINY, ablation="mamba_only").eval()
    torch.manual_seed(0)
    m1 = build_model("ss4rec", N_ITEMS, **TINY, ablation="mamba_only", min_gap=3.0).eval()
    torch.testing.assert_close(m1(batch), m0(batch), rtol=0, atol=0)


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_causality(variant):
    model = make_model(**variant).eval()
    batch = make_batch(B=3, L=8, min_len=8)
    base = model(batch)
    for j in (2, 5, 7):
        changed = {k: v.clone() for k, v in batch.items()}
        changed["items"][:, j] = changed["items"][:, j] % N_ITEMS + 1
        out = model(changed)
        torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=0)
        assert not torch.allclose(out[:, j], base[:, j])
    if variant.get("ablation") == "mamba_only":
        return
    for j in (1, 4, 7):  # move t_j and every later time: only the gap j-1 -> j changes
        changed = {k: v.clone() for k, v in batch.items()}
        changed["timestamps"][:, j:] += 3 * 3600 + 17
        changed["next_timestamps"][:, j - 1 :] += 3 * 3600 + 17
        out = model(changed)
        torch.testing.assert_close(out[:, : j - 1], base[:, : j - 1], rtol=0, atol=0)
        assert not torch.allclose(out[:, j - 1], base[:, j - 1])
    # the target's time only reaches the last position
    changed = {k: v.clone() for k, v in batch.items()}
    changed["next_timestamps"][:, -1] += 5 * 86400
    out = model(changed)
    torch.testing.assert_close(out[:, :-1], base[:, :-1], rtol=0, atol=0)
    assert not torch.allclose(out[:, -1], base[:, -1])


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_left_padding_invariance(variant):
    model = make_model(**variant).eval()
    batch = make_batch(B=4, L=8)
    extra = 5
    padded = {k: F.pad(v, (extra, 0)) for k, v in batch.items()}
    out_short, out_long = model(batch), model(padded)
    assert (out_long[:, :extra] == 0).all()
    torch.testing.assert_close(out_long[:, extra:], out_short, rtol=0, atol=1e-5)


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_ablations_train_step_finite(ablation):
    model = make_model(ablation=ablation).train()
    names = {n.split(".")[2] for n, _ in model.named_parameters() if n.startswith("blocks.0.")}
    assert names == {"full": {"s5", "mamba", "norm"}, "s5_only": {"s5", "norm"},
                     "mamba_only": {"mamba", "norm"}}[ablation]
    batch = make_batch(B=3, L=6)
    batch["items"][1] = 0
    batch["timestamps"][1] = 0
    batch["next_timestamps"][1] = 0
    batch["timestamps"][2, -1] = batch["next_timestamps"][2, -2] = 4_000_000_000  # a gap of decades
    hidden = model(batch)
    assert torch.isfinite(hidden).all()
    assert (hidden[1] == 0).all()
    hidden.square().sum().backward()
    for n, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), n


def test_timestamps_required_unless_mamba_only():
    batch = make_batch()
    with pytest.raises(ValueError, match="timestamps"):
        make_model()({"items": batch["items"]})
    make_model(ablation="mamba_only")({"items": batch["items"]})
    # next_timestamps is optional (gaps within the window, 0 at the last position)
    make_model()({"items": batch["items"], "timestamps": batch["timestamps"]})


def test_embed_norm_and_fast_path_flags():
    torch.manual_seed(0)
    a = build_model("ss4rec", N_ITEMS, **TINY, use_fast_path=True).eval()
    b = build_model("ss4rec", N_ITEMS, **TINY, use_fast_path=False).eval()
    b.load_state_dict(a.state_dict())
    batch = make_batch()
    torch.testing.assert_close(a(batch), b(batch))  # no fused kernel on CPU: same pure path
    e = make_model(embed_norm=True).eval()
    assert {"emb_norm.weight", "emb_norm.bias"} <= {n for n, _ in e.named_parameters()}
    assert (e(batch)[batch["items"] == 0] == 0).all()


def test_losses_work_through_scoring_interface():
    model = make_model().train()
    batch = make_batch(B=3, L=6)
    targets = torch.roll(batch["items"], -1, dims=1)
    targets[:, -1] = 5
    targets[batch["items"] == 0] = 0
    h = model(batch)
    per_position = torch.randint(1, N_ITEMS + 1, targets.shape)
    shared = torch.randint(1, N_ITEMS + 1, (7,))
    for name, negatives in (("bce", per_position), ("bpr", per_position), ("ce", None),
                            ("sampled_softmax", shared)):
        loss = get_loss(name)(model, h, targets, negatives=negatives)
        assert torch.isfinite(loss), name


def test_runs_on_batcher_windows():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 12, size=15)
    offsets = np.zeros(len(lengths) + 2, dtype=np.int64)
    np.cumsum(lengths, out=offsets[2:])
    item = rng.integers(1, N_ITEMS + 1, size=offsets[-1])
    ts = np.concatenate([1_600_000_000 + np.cumsum(rng.integers(0, 90_000, size=n)) for n in lengths])
    loo = leave_one_out(offsets)
    batcher = SequenceBatcher(item, ts.astype(np.int64), offsets, loo.train_end, maxlen=6)
    model = make_model().eval()
    users = batcher.train_users()
    batch = batcher.train_batch(users)
    h = model(batch)
    assert torch.isfinite(h).all() and (h[batch["items"] == 0] == 0).all()
    ev = batcher.eval_batch(users, loo.test_pos[users - 1])
    assert model.predict(ev).shape == (len(users), N_ITEMS + 1)


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_overfits_item_chain(ablation):
    n_items, L = 20, 8
    torch.manual_seed(0)
    model = build_model("ss4rec", n_items, hidden_units=32, num_blocks=1, dropout_rate=0.0, maxlen=L,
                        s5_state=16, d_state=16, ablation=ablation)
    assert_learns_chain(model, n_items, L)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(hidden_units=0), "--hidden_units must be a positive integer"),
        (dict(num_blocks=1.5), "--num_blocks must be an integer"),
        (dict(s5_state=0), "--s5_state must be a positive integer"),
        (dict(d_state=-1), "--d_state must be a positive integer"),
        (dict(d_conv=0), "--d_conv must be a positive integer"),
        (dict(expand=True), "--expand must be an integer"),
        (dict(dropout_rate=1.0), "--dropout_rate must be in"),
        (dict(dt_min=0.0), "--dt_min must be > 0"),
        (dict(dt_min=0.5, dt_max=0.1), "change --dt_min or --dt_max"),
        (dict(time_unit="week"), "--time_unit must be one of second, minute, hour, day"),
        (dict(ablation="s6_only"), "--ablation must be one of"),
        (dict(use_fast_path="maybe"), "--use_fast_path must be true or false"),
        (dict(min_gap=-1.0), "--min_gap must be >= 0"),
        (dict(time_scale="days"), "has no option 'time_scale'"),
        (dict(min_gap=float("inf")), "--min_gap must be a number"),
    ],
)
def test_invalid_config_messages(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model("ss4rec", N_ITEMS, **kwargs)


def test_trainer_end_to_end(tmp_path):
    """A few epochs with the real trainer (CE loss) on synthetic chains learn far above chance."""
    from seqrec.data.datasets import prepare_dataset
    from seqrec.config import resolve_config
    from seqrec.train.trainer import train

    ds = prepare_dataset("synthetic", out=tmp_path / "ds", log=None,
                         synthetic_kwargs={"n_users": 300, "n_items": 80, "seed": 1, "mean_length": 20,
                                           "max_length": 40})
    cli = {"dataset": str(ds.path), "train_dir": str(tmp_path / "run"), "model": "ss4rec", "loss": "ce",
           "maxlen": 20, "hidden_units": 32, "batch_size": 64, "num_epochs": 4,
           "warmup_steps": 0, "lr": 0.005, "progress": False, "eval_negatives": 20, "patience": 0,
           "device": "cpu", "num_threads": 1}
    res = train(resolve_config(cli), log=lambda *_: None)
    assert res["test_full"]["hr@10"] > 0.35  # random ranking: 10/80
