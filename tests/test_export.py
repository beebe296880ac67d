"""seqrec export-model and the graph backends: every model (SASRec, TiSASRec, their mHC forms,
SS4Rec) exported to ONNX and TorchScript gives PyTorch's recommendations for every user of its
data set (same top 10, scores within 1e-4); top-k graphs; clear errors; a real server process on
the onnx backend."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

import seqrec.api  # noqa: E402
from seqrec.cli import main  # noqa: E402
from seqrec.config import resolve_config  # noqa: E402
from seqrec.data.datasets import prepare_dataset  # noqa: E402
from seqrec.export import ExportError, export_model, graph_feeds  # noqa: E402
from seqrec.train.trainer import train  # noqa: E402

MODELS = {
    "sasrec": {"model": "sasrec", "num_heads": 2},
    "tisasrec": {"model": "tisasrec", "num_heads": 2},
    "sasrec-mhc": {"model": "sasrec", "num_heads": 2, "mhc": True, "mhc_expansion_rate": 2},
    "tisasrec-mhc": {"model": "tisasrec", "num_heads": 2, "mhc": True, "mhc_expansion_rate": 2},
    "ss4rec": {"model": "ss4rec", "s5_state": 8, "d_state": 8},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    ds = prepare_dataset("synthetic", out=base / "ds", log=None,
                         synthetic_kwargs={"n_users": 70, "n_items": 45, "seed": 5, "max_length": 24})
    out = {}
    for name, opts in MODELS.items():
        cfg = resolve_config({"dataset": str(ds.path), "train_dir": str(base / name), "maxlen": 12,
                              "hidden_units": 16, "num_epochs": 2, "eval_negatives": 5, "progress": False,
                              "device": "cpu", "seed": 1, **opts})
        train(cfg, log=None)
        out[name] = base / name
    return out


def _same(a: list[list[dict]], b: list[list[dict]]) -> None:
    assert [[r["item"] for r in row] for row in a] == [[r["item"] for r in row] for row in b]
    diff = max(abs(x["score"] - y["score"]) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    assert diff <= 1e-4


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", list(MODELS))
def test_graph_backend_gives_pytorchs_recommendations(runs, name, fmt):
    run = runs[name]
    torch_rec = seqrec.api.load(run)
    graph_rec = seqrec.api.load(run, backend=fmt)  # exported to RUN/model.onnx|.pt and checked on first use
    path = run / ("model.onnx" if fmt == "onnx" else "model.pt")
    assert path.is_file()
    users = torch_rec.dataset.user_map()["raw"].to_list()  # every user of the data set
    _same(graph_rec.recommend_batch(users, k=10), torch_rec.recommend_batch(users, k=10))
    _same(graph_rec.recommend_batch(users[:9], k=10, exclude_seen=False),
          torch_rec.recommend_batch(users[:9], k=10, exclude_seen=False))
    # a raw history, shorter than maxlen, with its own times (and the next event's)
    items = torch_rec.dataset.item_map()["raw"].to_list()[:5]
    ts = [1.7e9, 1.7e9 + 60, 1.7e9 + 7200, 1.7e9 + 86400, 1.7e9 + 90000]
    for nxt in (None, 1.7e9 + 10 * 86400):
        kw = dict(history=items, timestamps=ts, next_time=nxt, k=7)
        _same(graph_rec.answer([graph_rec.query(**kw)]), torch_rec.answer([torch_rec.query(**kw)]))
    if fmt == "onnx":
        meta = json.loads(ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map["seqrec"])
        assert meta["inputs"] == list(torch_rec.model.graph_inputs())
        assert (meta["maxlen"], meta["n_items"], meta["top_k"]) == (12, torch_rec.n_items, None)


def test_cli_top_k_graph_runs_without_seqrec(runs, tmp_path, capsys):
    run = runs["tisasrec"]
    out = tmp_path / "top5.onnx"
    assert main(["export-model", str(run), "--format", "onnx", "--top_k", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "same top-10" in printed and f"wrote {out}" in printed
    rec = seqrec.api.load(run)
    sess = ort.InferenceSession(str(out))
    assert [i.name for i in sess.get_inputs()] == ["items", "timestamps", "time_scale"]
    assert [o.name for o in sess.get_outputs()] == ["top_scores", "top_items"]
    users = rec.dataset.user_map()["raw"].to_list()[:20]
    # the graph's inputs are plain int64 arrays, built here the way seqrec builds them for users
    from seqrec.api import sequence_batch

    uid = rec.user_ids(users)
    start, end = rec._offsets[uid], rec._offsets[uid + 1]
    batch = sequence_batch(rec._item, rec._timestamp, start, end, rec.maxlen, uid, True)
    feeds = {k: t.numpy() for k, t in zip(["items", "timestamps", "time_scale"],
                                          graph_feeds(batch, ("items", "timestamps", "time_scale"), rec.maxlen))}
    top_scores, top_items = sess.run(None, feeds)
    with torch.no_grad():
        scores = rec.model.predict(batch).float()
    scores[:, 0] = float("-inf")
    scores.scatter_(1, batch["items"], float("-inf"))  # the window's items are excluded
    want = torch.topk(scores, 5, dim=1)
    assert np.array_equal(top_items, want.indices.numpy())
    np.testing.assert_allclose(top_scores, want.values.numpy(), atol=1e-4)


def test_export_errors_are_one_line_and_write_nothing(runs, tmp_path, capsys, monkeypatch):
    run = runs["sasrec"]
    for argv, msg in [
        (["--top_k", "0"], "--top_k must be between 1 and the number of items (45)"),
        (["--top_k", "46"], "--top_k must be between 1 and the number of items (45)"),
        (["--out", str(tmp_path)], "is a folder"),
        (["--checkpoint", "nope.pt"], "nope.pt not found"),
    ]:
        assert main(["export-model", str(run), "--format", "onnx", *argv]) != 0
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the export extra were not installed
    target = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match=r"pip install 'seqrec\[export\]', or use --format torchscript"):
        export_model(run, "onnx", target, log=None)
    assert not target.exists() and not list(tmp_path.glob(".m.onnx*"))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="--format must be one of onnx, torchscript"):
        export_model(run, "tflite", target, log=None)
    with pytest.raises(ValueError, match="backend must be one of torch, onnx, torchscript"):
        seqrec.api.load(run, backend="tensorrt")


def test_graph_from_another_run_or_a_top_k_graph_is_refused(runs, tmp_path):
    other = tmp_path / "other.pt"
    export_model(runs["tisasrec"], "torchscript", other, log=None)
    with pytest.raises(ValueError, match="was not exported from .*best.pt"):
        seqrec.api.load(runs["sasrec"], backend="torchscript", graph=other)
    top = tmp_path / "top.pt"
    export_model(runs["sasrec"], "torchscript", top, top_k=3, log=None)
    with pytest.raises(ValueError, match="top-k graph"):
        seqrec.api.load(runs["sasrec"], backend="torchscript", graph=top)
    with pytest.raises(FileNotFoundError, match="seqrec export-model"):
        seqrec.api.load(runs["sasrec"], backend="onnx", graph=tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="--graph needs --backend onnx or torchscript"):
        seqrec.api.load(runs["sasrec"], graph=other)


def test_a_stale_default_graph_is_exported_again(runs, tmp_path):
    """RUN/model.pt follows the checkpoint: after the run's best.pt changes, the next load
    re-exports it instead of serving the old weights."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["sasrec"], run)
    seqrec.api.load(run, backend="torchscript")
    first = (run / "model.pt").stat().st_mtime_ns
    state = torch.load(run / "best.pt", weights_only=True)
    state["model"]["item_emb.weight"] = state["model"]["item_emb.weight"] * 1.5
    torch.save(state, run / "best.pt")
    rec = seqrec.api.load(run, backend="torchscript")
    assert (run / "model.pt").stat().st_mtime_ns != first
    _same(rec.recommend_batch(rec.dataset.user_map()["raw"].to_list()[:10], k=5),
          seqrec.api.load(run).recommend_batch(rec.dataset.user_map()["raw"].to_list()[:10], k=5))


def test_server_on_the_onnx_backend(runs, serve_process):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    run = runs["ss4rec"]
    seqrec.api.load(run, backend="onnx")  # the graph exists (exported here if this test runs alone)
    url = serve_process(run, "--backend", "onnx")
    assert httpx.get(f"{url}/model").json()["backend"] == "onnx"
    rec = seqrec.api.load(run)
    user = rec.dataset.user_map()["raw"][4]
    got = httpx.post(f"{url}/recommend", json={"user": user, "k": 6}).json()["items"]
    _same([got], [rec.recommend(user, k=6)])
    bad = httpx.post(f"{url}/recommend", json={"history": [10**9], "k": 3})
    assert bad.status_code == 400 and "1000000000" in bad.json()["error"]
