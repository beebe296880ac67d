"""The memory-bounded full-softmax CE (issue 21): the chunked path equals the plain one.

The reference is written out here (log-softmax over ``h @ table.T`` with column 0 = -inf,
mean over positions with a target) rather than taken from ``ce_loss`` itself.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from seqrec.models import build_model
from seqrec.train import losses
from seqrec.train.losses import ChunkedLinearCrossEntropy, ce_loss, chunked_cross_entropy, get_loss

N_ITEMS, L, B, D = 37, 9, 5, 16


def naive_ce(h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``h [..., D]``, ``table [N + 1, D]``, ``targets [...]`` (0 = no loss)."""
    mask = targets > 0
    logits = (h[mask] @ table.T).float()  # (M, N + 1)
    logits = torch.cat([torch.full_like(logits[:, :1], float("-inf")), logits[:, 1:]], dim=1)
    logp = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -logp.gather(1, targets[mask].unsqueeze(1)).mean()


class TableModel(torch.nn.Module):
    """The scoring interface ``ce_loss`` uses, over a bare table ``[n_items + 1, D]``."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def output_embedding(self):
        return self.table

    def score_all(self, hidden):
        return hidden @ self.table.T


def raw_case(seed: int = 0, n_items: int = N_ITEMS, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, L, D, generator=g, dtype=dtype).requires_grad_()
    table = torch.randn(n_items + 1, D, generator=g, dtype=dtype)
    targets = torch.randint(1, n_items + 1, (B, L), generator=g)
    targets[:, :3] = 0  # left padding
    targets[1, 5] = 0  # and a hole
    return h, TableModel(table), targets


def loss_and_grads(loss_fn, h, model, targets, **kw):
    loss = loss_fn(model, h, targets, **kw)
    gh, gt = torch.autograd.grad(loss, (h, model.table))
    return loss.detach(), gh, gt


def assert_close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def reference(h, model, targets):
    return loss_and_grads(lambda m, hh, t: naive_ce(hh, m.table, t), h, model, targets)


@pytest.mark.parametrize("chunk_size", [1, 7, N_ITEMS, N_ITEMS + 1, 1000])
def test_chunked_equals_naive_on_raw_tensors(chunk_size):
    h, model, targets = raw_case()
    ref = reference(h, model, targets)
    got = loss_and_grads(ce_loss, h, model, targets, impl="chunked", chunk_size=chunk_size)
    for a, b in zip(got, ref):
        assert_close(a, b)
    assert got[0].dtype == torch.float32
    assert got[2][0].abs().max() == 0  # the padding row gets no gradient, as in the naive CE


def test_plain_path_unchanged():
    h, model, targets = raw_case(1)
    ref = reference(h, model, targets)
    for a, b in zip(loss_and_grads(ce_loss, h, model, targets, impl="plain"), ref):
        assert_close(a, b)
    assert get_loss("ce") is ce_loss


def sasrec_case(seed: int, history_targets: bool):
    torch.manual_seed(seed)
    model = build_model("sasrec", n_items=N_ITEMS, maxlen=L, hidden_units=16, num_heads=1,
                        dropout_rate=0.0)
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, N_ITEMS + 1, (B, L + 1), generator=g)
    lengths = torch.tensor([L + 1, 6, 3, 8, 2])
    items = items * (torch.arange(L + 1) >= (L + 1 - lengths)[:, None])  # right-aligned, padded
    batch = {"items": items[:, :-1]}
    if history_targets:
        targets = items[:, 1:]  # the next item
    else:  # anything, unrelated to the history; zeros where the history is padding and elsewhere
        targets = torch.randint(0, N_ITEMS + 1, (B, L), generator=g) * (batch["items"] > 0)
    return model, batch, targets


def model_loss_and_grads(model, batch, targets, **kw):
    model.zero_grad(set_to_none=True)
    loss = ce_loss(model, model(batch), targets, **kw)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("history_targets", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 7, N_ITEMS + 1, 100])
def test_chunked_equals_naive_on_sasrec(history_targets, chunk_size):
    model, batch, targets = sasrec_case(3, history_targets)
    assert (targets == 0).any() and (targets > 0).any()
    # reference: the naive CE through the model's own table
    model.zero_grad(set_to_none=True)
    ref_loss = naive_ce(model(batch), model.output_embedding(), targets)
    ref_loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    loss, grads = model_loss_and_grads(model, batch, targets, impl="chunked", chunk_size=chunk_size)
    assert_close(loss, ref_loss.detach())
    assert grads.keys() == ref.keys() and any("item_emb" in n for n in grads)
    for name in ref:
        assert_close(grads[name], ref[name])


def test_automatic_switch(monkeypatch):
    calls = []
    real = losses.chunked_cross_entropy

    def spy(*args, **kw):
        calls.append(args[0].shape)
        return real(*args, **kw)

    monkeypatch.setattr(losses, "chunked_cross_entropy", spy)
    h, model, targets = raw_case(2)
    ref = reference(h, model, targets)
    rows = int((targets > 0).sum())
    # below (or at) the threshold: the plain path
    monkeypatch.setattr(losses, "CE_CHUNKED_MIN_ELEMENTS", rows * (N_ITEMS + 1))
    for a, b in zip(loss_and_grads(ce_loss, h, model, targets), ref):
        assert_close(a, b)
    assert calls == []
    # above it: the chunked path, with the module's chunk width
    monkeypatch.setattr(losses, "CE_CHUNKED_MIN_ELEMENTS", rows * (N_ITEMS + 1) - 1)
    monkeypatch.setattr(losses, "CE_CHUNK_SIZE", 5)
    for a, b in zip(loss_and_grads(ce_loss, h, model, targets), ref):
        assert_close(a, b)
    assert calls == [(rows, D)]
    assert "cut_cross_entropy" not in sys.modules  # the fused path is looked up on CUDA only


def test_chunked_saves_no_logit_matrix():
    """What the chunked forward keeps for backward is O(M D + N D), nothing of M x N."""
    h, model, targets = raw_case(4, n_items=300)
    rows = int((targets > 0).sum())
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = ce_loss(model, h, targets, impl="chunked", chunk_size=16)
    loss.backward()
    assert saved and max(saved) <= 301 * D < rows * 301
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ce_loss(model, h, targets, impl="plain")
    assert max(saved) >= rows * 301  # the plain path does keep it


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(5)
    h = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    table = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1, 8, 3, 3, 5, 2])
    for cs in (1, 4, 9):
        assert torch.autograd.gradcheck(lambda a, b: chunked_cross_entropy(a, b, t, cs), (h, table))
    assert chunked_cross_entropy(h, table, t, 4).dtype == torch.float64
    logits = h @ table.T  # float64, column 0 excluded
    ref = F.cross_entropy(logits[:, 1:], t - 1)
    assert_close(chunked_cross_entropy(h, table, t, 4), ref, tol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_reduce_in_float32(dtype):
    h, model, targets = raw_case(6, dtype=dtype)
    plain = loss_and_grads(ce_loss, h, model, targets, impl="plain")
    got = loss_and_grads(ce_loss, h, model, targets, impl="chunked", chunk_size=7)
    assert got[0].dtype == torch.float32 and got[1].dtype == dtype and got[2].dtype == dtype
    # same low-precision logits, float32 softmax: the loss agrees to float32 rounding
    assert_close(got[0], plain[0], tol=1e-5)
    for a, b in zip(got[1:], plain[1:]):  # gradients rounded to the input dtype
        assert_close(a.float(), b.float(), tol=2e-2)


def test_cpu_autocast_matches_plain_under_autocast():
    h, model, targets = raw_case(7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = loss_and_grads(ce_loss, h, model, targets, impl="plain")
        got = loss_and_grads(ce_loss, h, model, targets, impl="chunked", chunk_size=7)
    exact = reference(h, model, targets)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    assert_close(got[0], plain[0], tol=1e-5)  # bf16 logits in both
    assert (got[0] - exact[0]).abs() > 0  # ... which are not the float32 ones
    for a, b in zip(got[1:], plain[1:]):
        assert_close(a, b, tol=2e-2)


def test_fused_target_mapping():
    """The fused path hands ``table[1:]`` and ``targets - 1`` to cut_cross_entropy; checked
    here with a stand-in that follows its documented definition
    (``F.cross_entropy((e @ c.T).float(), targets)``), the package itself being CUDA-only."""

    def fake_linear_cross_entropy(e, c, targets, reduction="mean"):
        assert c.shape[0] == N_ITEMS and targets.min() >= 0 and targets.max() < N_ITEMS
        return F.cross_entropy((e @ c.T).float(), targets, reduction=reduction)

    h, model, targets = raw_case(8)
    ref = reference(h, model, targets)
    got = loss_and_grads(
        lambda m, hh, t: losses.fused_cross_entropy(hh[t > 0], m.table, t[t > 0], fake_linear_cross_entropy),
        h, model, targets)
    for a, b in zip(got, ref):
        assert_close(a, b)


def test_fused_on_cpu_and_bad_arguments_raise():
    h, model, targets = raw_case(9)
    with pytest.raises(RuntimeError, match="cut-cross-entropy"):
        ce_loss(model, h, targets, impl="fused")
    with pytest.raises(ValueError, match="impl"):
        ce_loss(model, h, targets, impl="fast")
    with pytest.raises(ValueError, match="chunk_size"):
        ce_loss(model, h, targets, impl="chunked", chunk_size=-1)


def test_chunked_function_without_table_grad():
    h, model, targets = raw_case(10)
    table = model.table.detach()
    mask = targets > 0
    (gh,) = torch.autograd.grad(ChunkedLinearCrossEntropy.apply(h[mask], table, targets[mask], 4,
                                                                torch.float32), (h,))
    (ref,) = torch.autograd.grad(naive_ce(h, table, targets), (h,))
    assert_close(gh, ref)
