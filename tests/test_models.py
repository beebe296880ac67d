"""Model-layer tests: interface, causality, padding, attention paths, training, registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from chain_task import assert_learns_chain

from seqrec.models import (
    SASRec,
    SASRecConfig,
    SequentialRecommender,
    TiSASRec,
    TiSASRecConfig,
    available_models,
    build_model,
    get_model_class,
)

N_ITEMS = 30
MODELS = ["sasrec", "tisasrec"]
TINY = dict(hidden_units=16, num_blocks=2, num_heads=2, dropout_rate=0.2, maxlen=24)


def make_batch(B=4, L=8, n_items=N_ITEMS, seed=0, min_len=1):
    """Right-aligned random batch with increasing timestamps (some equal); row 0 is full."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, L + 1, (B,), generator=g)
    lengths[0] = L
    pos = torch.arange(L)
    valid = pos[None, :] >= (L - lengths)[:, None]
    items = torch.randint(1, n_items + 1, (B, L), generator=g) * valid
    gaps = torch.randint(0, 3, (B, L), generator=g) * torch.randint(0, 20000, (B, L), generator=g)
    ts = (1_600_000_000 + torch.cumsum(gaps, dim=1)) * valid
    return {"items": items.long(), "timestamps": ts.long()}


def make_model(name, seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model(name, N_ITEMS, **{**TINY, **overrides})


@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_scoring(name):
    model = make_model(name).eval()
    batch = make_batch(B=3, L=7)
    hidden = model(batch)
    assert hidden.shape == (3, 7, 16)
    assert model.item_embedding_weight().shape == (N_ITEMS + 1, 16)
    assert model.predict(batch).shape == (3, N_ITEMS + 1)
    torch.testing.assert_close(model.predict(batch), model.score_all(hidden[:, -1]))
    # padding positions are zero
    assert (hidden[batch["items"] == 0] == 0).all()

    all_scores = model.score_all(hidden)  # (B, L, n+1)
    cand = torch.randint(0, N_ITEMS + 1, (3, 7, 5))
    torch.testing.assert_close(model.score_items(hidden, cand), all_scores.gather(-1, cand))
    cand2 = torch.randint(0, N_ITEMS + 1, (3, 4))
    torch.testing.assert_close(
        model.score_items(hidden[:, -1], cand2), all_scores[:, -1].gather(-1, cand2)
    )
    with pytest.raises(ValueError, match="candidate dim"):
        model.score_items(hidden, cand[..., 0])  # [B, L] without the K dim
    assert isinstance(model, SequentialRecommender)
    assert model.registry_name == name
    assert model.uses_time == (name == "tisasrec")


@pytest.mark.parametrize("attn_impl", ["sdpa", "manual"])
@pytest.mark.parametrize(
    "name,extra",
    [
        ("sasrec", {}),
        ("sasrec", {"embed_norm": True, "norm_first": False, "init_scheme": "normal"}),  # RecBole-like
        ("tisasrec", {"time_personalize": True}),  # causal in-window scale
        ("tisasrec", {"embed_norm": True}),
        ("tisasrec", {"time_personalize": False, "time_unit": "minute"}),
        ("tisasrec", {"mhc": True, "mhc_expansion_rate": 2}),
    ],
)
def test_causality(name, extra, attn_impl):
    model = make_model(name, attn_impl=attn_impl, **extra).eval()
    batch = make_batch(B=3, L=8, min_len=8)
    base = model(batch)
    for j in (2, 5, 7):
        changed = {k: v.clone() for k, v in batch.items()}
        changed["items"][:, j] = changed["items"][:, j] % N_ITEMS + 1
        out = model(changed)
        torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, j], base[:, j])
        if model.uses_time:
            changed = {k: v.clone() for k, v in batch.items()}
            changed["timestamps"][:, j:] += 7 * 86400 + 12345  # shift j and after
            changed["timestamps"][:, j] += 3 * 86400  # and make gap j-1 -> j unusual
            out = model(changed)
            torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=1e-6)
            assert not torch.allclose(out[:, j], base[:, j])


def test_tisasrec_causal_with_given_time_scale():
    model = make_model("tisasrec").eval()
    batch = make_batch(B=3, L=8, min_len=8)
    batch["time_scale"] = torch.tensor([60, 7200, 0])
    base = model(batch)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["timestamps"][:, 5] += 50 * 3600
    out = model(changed)
    torch.testing.assert_close(out[:, :5], base[:, :5], rtol=0, atol=1e-6)
    assert not torch.allclose(out[:, 5], base[:, 5])


@pytest.mark.parametrize("attn_impl", ["sdpa", "manual"])
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("norm_first", [True, False])
def test_left_padding_invariance(name, attn_impl, norm_first):
    model = make_model(name, attn_impl=attn_impl, norm_first=norm_first).eval()
    batch = make_batch(B=4, L=8)
    extra = 5
    padded = {k: F.pad(v, (extra, 0)) for k, v in batch.items()}
    out_short = model(batch)
    out_long = model(padded)
    assert (out_long[:, :extra] == 0).all()
    torch.testing.assert_close(out_long[:, extra:], out_short, rtol=0, atol=1e-5)


@pytest.mark.parametrize("attn_impl", ["sdpa", "manual"])
@pytest.mark.parametrize("name", MODELS)
def test_all_padding_row_is_finite(name, attn_impl):
    model = make_model(name, attn_impl=attn_impl).train()
    batch = make_batch(B=3, L=6)
    batch["items"][1] = 0
    batch["timestamps"][1] = 0
    hidden = model(batch)
    assert torch.isfinite(hidden).all()
    assert (hidden[1] == 0).all()
    hidden.square().sum().backward()
    for n, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), n


@pytest.mark.parametrize("name", MODELS)
def test_sdpa_and_manual_agree(name):
    sd = make_model(name, attn_impl="sdpa").eval()
    man = make_model(name, attn_impl="manual").eval()
    man.load_state_dict(sd.state_dict())
    batch = make_batch(B=4, L=10)
    batch["items"][2] = 0
    torch.testing.assert_close(sd(batch), man(batch), rtol=0, atol=1e-5)


def test_tisasrec_paths_agree_in_training_mode():
    # Both TiSASRec paths consume the RNG identically, so they agree under dropout too.
    sd = make_model("tisasrec", attn_impl="sdpa").train()
    man = make_model("tisasrec", attn_impl="manual").train()
    man.load_state_dict(sd.state_dict())
    batch = make_batch(B=4, L=10)
    torch.manual_seed(123)
    a = sd(batch)
    torch.manual_seed(123)
    b = man(batch)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    a.sum().backward()
    b.sum().backward()
    for (n, p), (_, q) in zip(sd.named_parameters(), man.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=n)


def _next_item_loss(model, batch):
    """Full-softmax CE of predicting items[:, 1:] from positions [:, :-1]."""
    inp = {k: v[:, :-1] for k, v in batch.items()}
    target = batch["items"][:, 1:]
    logits = model.score_all(model(inp))
    logits[..., 0] = float("-inf")  # never predict padding
    keep = (inp["items"] != 0) & (target != 0)
    return F.cross_entropy(logits[keep], target[keep]), logits, keep


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("name", MODELS)
def test_one_training_step_pre_and_post_ln(name, norm_first):
    model = make_model(name, norm_first=norm_first).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = make_batch(B=4, L=9)
    batch["items"][3] = 0
    batch["timestamps"][3] = 0
    loss, _, _ = _next_item_loss(model, batch)
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), n
    opt.step()
    for n, p in model.named_parameters():
        assert torch.isfinite(p).all(), n
    loss2, _, _ = _next_item_loss(model, batch)
    assert torch.isfinite(loss2)


@pytest.mark.parametrize("name", MODELS)
def test_overfits_item_chain(name):
    n_items, L = 20, 8
    torch.manual_seed(0)
    model = build_model(
        name, n_items, hidden_units=32, num_blocks=1, num_heads=2, dropout_rate=0.0, maxlen=L
    )
    assert_learns_chain(model, n_items, L)  # loss ~4.4 -> ~0.01 (checked on 3 seeds)


# --- registry ---------------------------------------------------------------------------
def test_registry_lists_models():
    assert {"sasrec", "tisasrec"} <= set(available_models())
    assert get_model_class("SASRec") is SASRec
    assert get_model_class("tisasrec") is TiSASRec


def test_build_model_takes_the_models_own_options_only():
    model = build_model("tisasrec", N_ITEMS, maxlen=30, hidden_units=12, num_heads=3, time_unit="day",
                        mhc_expansion_rate=2)
    assert isinstance(model.config, TiSASRecConfig) and model.maxlen == 30
    assert model.config.hidden_units == 12 and model.config.time_unit == "day"
    assert model.config.mhc.expansion_rate == 2  # an mhc_* option switches the section on
    assert build_model("tisasrec", N_ITEMS).config.mhc is None  # a model's default: no mHC
    for wrong in (dict(lr=0.1), dict(batch_size=7), dict(dataset="ml-1m")):  # the trainer's, not the model's
        with pytest.raises(ValueError, match="has no option"):
            build_model("sasrec", N_ITEMS, **wrong)
    with pytest.raises(ValueError, match="has no option 'time_unit'"):
        build_model("sasrec", N_ITEMS, time_unit="day")


def test_unknown_model_lists_available():
    with pytest.raises(ValueError, match="available models: .*sasrec.*tisasrec"):
        build_model("bert4rec", N_ITEMS)


def test_defaults_match_seed():
    c = TiSASRecConfig()
    assert (c.hidden_units, c.num_blocks, c.num_heads) == (50, 2, 2)
    assert c.dropout_rate == 0.2 and c.mhc is None
    assert (c.time_span, c.time_unit, c.time_personalize, c.norm_first) == (100, "hour", True, True)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            dict(hidden_units=50, num_heads=3),
            r"hidden_units \(50\) must be divisible by num_heads \(3\): "
            r"change --num_heads or --hidden_units",
        ),
        (dict(dropout_rate=1.0), "--dropout_rate must be in"),
        (dict(attn_impl="flash"), "--attn_impl must be one of"),
        (dict(num_blocks=0), "--num_blocks must be a positive integer"),
        (dict(time_unit="week"), "--time_unit must be one of"),
        (dict(time_span=0), "--time_span must be a positive integer"),
        (dict(init_scheme="kaiming"), "--init_scheme must be one of xavier, normal"),
        (dict(hiden_units=8), "has no option 'hiden_units' \\(did you mean 'hidden_units'\\?\\)"),
        (dict(s5_state=8), "has no option 's5_state'"),
    ],
)
def test_invalid_config_messages(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model("tisasrec", N_ITEMS, **kwargs)
    if "time_unit" not in kwargs and "time_span" not in kwargs and "s5_state" not in kwargs:
        with pytest.raises(ValueError, match=match):
            build_model("sasrec", N_ITEMS, **kwargs)


def test_sequence_longer_than_maxlen_is_rejected():
    model = make_model("sasrec", maxlen=4).eval()
    with pytest.raises(ValueError, match="maxlen"):
        model(make_batch(B=2, L=5))


def test_tisasrec_requires_timestamps():
    model = make_model("tisasrec").eval()
    with pytest.raises(ValueError, match="timestamps"):
        model({"items": make_batch()["items"]})


def test_one_pass_additive_mask_equals_boolean_construction():
    from seqrec.models.layers.attention import causal_padding_additive_mask, causal_padding_mask

    valid = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)
    expected = torch.zeros(4, 1, 5, 5).masked_fill(~causal_padding_mask(valid), float("-inf"))
    got = causal_padding_additive_mask(valid)
    assert got.shape == expected.shape == (4, 1, 5, 5)
    assert torch.equal(got, expected)
    assert torch.isfinite(got.diagonal(dim1=-2, dim2=-1)).all()  # every query may attend itself


def test_fused_qkv_projection_equals_separate_linears():
    from seqrec.models.layers.attention import CausalSelfAttention

    torch.manual_seed(0)
    attn = CausalSelfAttention(16, 2, 0.0)
    x = torch.randn(3, 7, 16)
    q, k, v = attn.project_qkv(x)
    torch.testing.assert_close(q, attn.q_proj(x))
    torch.testing.assert_close(k, attn.k_proj(x))
    torch.testing.assert_close(v, attn.v_proj(x))
    q1, k1, v1 = attn.project_qkv(x, last_only=True)
    torch.testing.assert_close(q1, attn.q_proj(x[:, -1:]))
    torch.testing.assert_close(k1, k)
    torch.testing.assert_close(v1, v)


@pytest.mark.parametrize("name", MODELS)
def test_xavier_init_scheme(name):
    """init_scheme="xavier" (the default): every embedding table Xavier-normal (std
    sqrt(2 / (rows + D))), padding row zero; linear layers keep their Xavier init."""
    torch.manual_seed(0)
    model = make_model(name, hidden_units=32, maxlen=200)
    assert model.config.init_scheme == "xavier"
    table = model.item_embedding_weight()
    assert (table[0] == 0).all()
    expected = (2 / (N_ITEMS + 1 + 32)) ** 0.5
    assert abs(table[1:].std().item() - expected) < 0.1 * expected
    pos = model.pos_emb.weight if name == "sasrec" else model.pos_k_emb.weight
    assert abs(pos.std().item() - (2 / (200 + 32)) ** 0.5) < 0.01
    # the other scheme: Normal(0, D ** -0.5)
    torch.manual_seed(0)
    normal = make_model(name, init_scheme="normal", hidden_units=32, maxlen=200)
    assert abs(normal.item_embedding_weight()[1:].std().item() - 32 ** -0.5) < 0.02


@pytest.mark.parametrize("name", MODELS)
def test_embed_norm_adds_one_layernorm(name):
    torch.manual_seed(0)
    plain = make_model(name)
    torch.manual_seed(0)
    normed = make_model(name, embed_norm=True)
    assert sum(p.numel() for p in normed.parameters()) == sum(p.numel() for p in plain.parameters()) + 2 * 16
    batch = make_batch(B=2, L=6)
    assert not torch.allclose(plain.eval()(batch), normed.eval()(batch))


@pytest.mark.parametrize("name", MODELS + ["ss4rec"])
def test_no_weight_decay_is_declared_by_the_model(name):
    """Vectors and scalars (biases, norms, gates) and mHC's declared static biases are exempt;
    every weight matrix decays."""
    if name == "ss4rec":
        torch.manual_seed(0)
        model = build_model("ss4rec", N_ITEMS, hidden_units=16, s5_state=4, d_state=4)
    else:
        model = make_model(name, mhc=True, mhc_expansion_rate=2)
    exempt = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert exempt <= set(params)
    assert {n for n, p in params.items() if p.ndim < 2} <= exempt
    if name != "ss4rec":
        assert any(n.endswith("bias_res") for n in exempt) and params[next(n for n in exempt if n.endswith("bias_res"))].ndim == 2
        assert not any(n.endswith(".phi") for n in exempt)  # mHC's projection is a weight
    assert "item_emb.weight" not in exempt
