"""--compile: torch.compile agrees with eager, the scans stay eager inside it, and a model that
cannot compile falls back with one line instead of failing the run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrec import api
from seqrec.assemble import assemble
from seqrec.config import resolve_config
from seqrec.data.datasets import prepare_dataset
from seqrec.train.step import TrainStep
from seqrec.utils import compile as compile_mod
from seqrec.utils.compile import compile_model


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile") / "ds"
    prepare_dataset("synthetic", out=out, log=None,
                    synthetic_kwargs={"n_users": 150, "n_items": 40, "seed": 0, "max_length": 20})
    return out


def _steps(ds, model: str, compile: bool, n: int = 4, log=None):
    """Losses of ``n`` training steps and the scores of one evaluation batch afterwards."""
    torch.manual_seed(0)
    cfg = resolve_config({"dataset": str(ds), "model": model, "maxlen": 20, "hidden_units": 16, "loss": "ce",
                          "dropout_rate": 0.0, "compile": compile})
    parts = assemble(cfg, prepare_if_missing=False, log=None)
    step = TrainStep(cfg, parts, torch.device("cpu"), log=log)
    rng = np.random.default_rng(0)
    b = parts.batcher
    losses = []
    for users in b.epoch_batches(b.train_users(), 32, rng, bucket=2)[:n]:
        loss, _ = step.forward_backward(step.batch(users, rng))
        step.apply()
        losses.append(float(loss))
    step.model.eval()
    with torch.no_grad():
        users = b.train_users()[:16]
        scores = step.model.predict(b.eval_batch(users, parts.split.train_end[users - 1]))
    return losses, scores, step.model


def test_compiled_training_and_scores_equal_eager(ds):
    """Inductor on the CPU (a C++ compiler is on the test machines): the same losses to 1e-5
    after four optimizer steps of windows of several lengths, and the same scores after."""
    eager, s_eager, _ = _steps(ds, "sasrec", compile=False)
    said = []
    compiled, s_comp, model = _steps(ds, "sasrec", compile=True, log=said.append)
    assert said == []  # it compiled: no fallback line
    assert compile_mod.is_compiled(model)
    np.testing.assert_allclose(compiled, eager, rtol=0, atol=1e-5)
    torch.testing.assert_close(s_comp, s_eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", ["tisasrec", "ss4rec"])
def test_the_other_models_run_compiled_with_the_scans_left_eager(ds, model, monkeypatch):
    """Dynamo's own tracing (backend 'eager', no code generation, so fast): TiSASRec traces
    whole; SS4Rec breaks the graph at the S5 and selective scans (custom backward, complex
    numbers), which run eagerly; both give eager's losses."""
    real = compile_model
    monkeypatch.setattr("seqrec.train.step.compile_model", lambda m, log: real(m, log, backend="eager"))
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    eager, s_eager, _ = _steps(ds, model, compile=False, n=3)
    compiled, s_comp, _ = _steps(ds, model, compile=True, n=3)
    np.testing.assert_allclose(compiled, eager, rtol=0, atol=1e-5)
    torch.testing.assert_close(s_comp, s_eager, rtol=1e-5, atol=1e-5)
    breaks = " ".join(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] >= 1
    if model == "ss4rec":
        assert "_forward_complex" in breaks and "_unfused_selective_scan" in breaks
    else:
        assert not breaks


def test_a_model_that_cannot_compile_falls_back_with_one_line(ds, monkeypatch):
    def broken(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")
        return call

    monkeypatch.setattr(compile_mod.torch, "compile", broken)
    eager, s_eager, _ = _steps(ds, "sasrec", compile=False, n=2)
    said = []
    losses, scores, model = _steps(ds, "sasrec", compile=True, n=2, log=said.append)
    assert said == ["--compile: torch.compile could not compile SASRec (RuntimeError: InvalidCxxCompiler: No working "
                    "C++ compiler found); running eagerly from here (the same model, without the speed-up)"]
    assert not compile_mod.is_compiled(model)
    assert losses == eager
    torch.testing.assert_close(scores, s_eager)


def test_the_calls_own_errors_are_raised_as_they_are(ds):
    cfg = resolve_config({"dataset": str(ds), "model": "ss4rec", "maxlen": 20, "hidden_units": 16})
    model = assemble(cfg, prepare_if_missing=False, log=None).model
    said = []
    compile_model(model, said.append, backend="eager")
    with pytest.raises(ValueError, match=r"SS4Rec needs batch\['timestamps'\]"):
        model({"items": torch.ones(2, 5, dtype=torch.long)})
    assert said == [] and compile_mod.is_compiled(model)  # a bad batch is not a compile failure


def test_compile_is_for_the_torch_backend():
    with pytest.raises(ValueError, match="--compile is for the torch backend"):
        api.load("no-such-run", backend="onnx", compile=True)
