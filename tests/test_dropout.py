"""The byte-based CPU dropout: rate, scaling, gradient, reproducibility."""

import pytest
import torch

from seqrec.models.layers.dropout import Dropout, dropout


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_drop_rate_and_expectation(p):
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = dropout(x, p, True)
    eff = round(p * 256) / 256
    assert (y == 0).float().mean().item() == pytest.approx(eff, abs=3e-3)
    assert y.mean().item() == pytest.approx(1.0, abs=5e-3)
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - eff)))


def test_identity_in_eval_and_at_zero():
    x = torch.randn(10, 10)
    assert dropout(x, 0.3, False) is x and dropout(x, 0.0, True) is x
    m = Dropout(0.3).eval()
    assert torch.equal(m(x), x)
    with pytest.raises(ValueError):
        Dropout(1.0)


def test_gradient_flows_through_kept_elements_only():
    torch.manual_seed(1)
    x = torch.randn(64, 64, requires_grad=True)
    y = dropout(x, 0.25, True)
    y.sum().backward()
    kept = y.detach() != 0
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 256 / (256 - 64)))
    assert (x.grad[~kept] == 0).all()


def test_reproducible_with_seed_and_masks_not_repeating():
    torch.manual_seed(5)
    a = dropout(torch.ones(1000), 0.2)
    torch.manual_seed(5)
    b = dropout(torch.ones(1000), 0.2)
    c = dropout(torch.ones(1000), 0.2)
    assert torch.equal(a, b) and not torch.equal(a, c)
