"""A trained run as a graph file, for serving with no seqrec code path: ONNX or TorchScript.

>>> from seqrec.export import export_model
>>> export_model("runs/sasrec_ml-100k", "onnx", "sasrec.onnx")          # scores over the catalogue
>>> export_model("runs/sasrec_ml-100k", "onnx", "top10.onnx", top_k=10)  # the top 10 only

The graph's inputs are the model's own (``model.graph_inputs()``, in this order; all int64):

* ``items [B, maxlen]``: the last ``maxlen`` items of each history as *internal* ids
  (``items.parquet`` of the dataset folder maps them), right-aligned, 0 = padding: a row's
  length is its number of non-zero ids, so no separate lengths input is needed;
* ``timestamps [B, maxlen]`` (time-aware models): their Unix times in seconds, 0 at padding;
* ``next_timestamps [B, maxlen]`` (SS4Rec): the time of each position's following item; at
  the last position the time of the event being recommended for;
* ``time_scale [B]`` (TiSASRec with personalised intervals): the user's smallest non-zero gap.

:mod:`seqrec.api`'s module docstring says how seqrec itself fills them for a user. The batch
dimension is dynamic; the sequence dimension is the run's ``maxlen``.

Outputs: ``scores [B, n_items + 1]`` float32 (column ``i`` is internal item ``i``; column 0,
padding, is ``-inf``), or with ``top_k = K``: ``top_scores [B, K]`` and ``top_items [B, K]`` (internal
ids, best first; padding and the items present in the ``items`` input are excluded; a history
longer than ``maxlen`` needs the scores graph to exclude all of it).

Every export is checked before it is kept: the file is loaded (onnxruntime for ONNX, when it is
installed) and run on real users of the run's data set (their test-time inputs), and must give
PyTorch's scores within :data:`TOLERANCE` and the same top 10; otherwise nothing is written.
The file carries its description (model, data set, maxlen, inputs, outputs) as metadata:
ONNX ``metadata_props``, TorchScript extra file ``seqrec.json``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from .runs.folder import BEST
from .runs.load import LoadedRun, load_run
from .utils.io import atomic_path, file_sha256

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-4  # largest |score difference| from PyTorch an export may have
N_CHECK = 64  # users the export is checked on


class ExportError(RuntimeError):
    """A model or format that cannot be exported (the message says which format works)."""


class ScoreGraph(nn.Module):
    """The graph that is exported: the model's inputs -> scores (or the top ``k``)."""

    def __init__(self, model: nn.Module, top_k: int | None = None):
        super().__init__()
        self.model = model.eval()
        self.inputs = tuple(model.graph_inputs())
        self.top_k = top_k

    def forward(self, *tensors: Tensor):
        batch = dict(zip(self.inputs, tensors))
        scores = self.model.predict(batch).float()  # (B, n_items + 1)
        pad = torch.arange(scores.shape[1], device=scores.device) == 0  # (n_items + 1,)
        scores = scores.masked_fill(pad, float("-inf"))
        if self.top_k is None:
            return scores
        unseen = scores.scatter(1, batch["items"], float("-inf"))  # the window's items (and padding) out
        top = torch.topk(unseen, self.top_k, dim=1)
        return top.values, top.indices


def describe(run: LoadedRun, graph: ScoreGraph, fmt: str, checkpoint: str = BEST) -> dict:
    """The metadata an exported file carries."""
    from . import __version__

    ckpt = run.folder.checkpoint(checkpoint)
    return {"seqrec": __version__, "format": fmt, "model": run.cfg.describe_model(), "dataset": run.dataset.name, "maxlen": int(run.cfg.data.maxlen),
            "n_items": int(run.dataset.n_items), "inputs": list(graph.inputs),
            "outputs": ["scores"] if graph.top_k is None else ["top_scores", "top_items"], "top_k": graph.top_k,
            "run": str(run.folder.path), "checkpoint": ckpt.name, "checkpoint_sha256": file_sha256(ckpt)}


def _pad_left(t: Tensor, width: int) -> Tensor:
    """``[B, l] -> [B, width]`` with zeros on the left (models are padding-invariant)."""
    if t.dim() < 2 or t.shape[1] == width:
        return t
    return torch.nn.functional.pad(t, (width - t.shape[1], 0))


def graph_feeds(batch: dict[str, Tensor], inputs: tuple[str, ...], maxlen: int) -> list[Tensor]:
    """The graph's input tensors from a seqrec batch dict (windows padded to ``maxlen``)."""
    missing = [k for k in inputs if k not in batch]
    if missing:
        raise ValueError(f"the batch lacks the graph input(s) {missing}")
    return [_pad_left(batch[k].to(torch.int64).cpu(), maxlen) for k in inputs]


def sample_inputs(run: LoadedRun, n: int = N_CHECK) -> dict[str, Tensor]:
    """Test-time inputs of (up to) ``n`` real users of the run's data set."""
    sp = run.split
    users, pos = sp.test_users[:n], sp.test_pos[:n]
    if len(users) == 0:
        users, pos = sp.valid_users[:n], sp.valid_pos[:n]
    return run.batcher.eval_batch(users, pos)


# --- runners ------------------------------------------------------------------------------
def onnx_runner(path: str | Path, threads: int = 0) -> tuple[Callable[[list[Tensor]], list[np.ndarray]], dict]:
    """``(run(tensors) -> outputs, metadata)`` of an ONNX file, on onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("running an ONNX model needs onnxruntime: pip install 'seqrec[export]'") from e
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    meta = json.loads(sess.get_modelmeta().custom_metadata_map.get("seqrec", "{}"))
    names = [i.name for i in sess.get_inputs()]

    def run(tensors: list[Tensor]) -> list[np.ndarray]:
        return sess.run(None, {k: t.numpy() for k, t in zip(names, tensors)})

    return run, meta


def torchscript_runner(path: str | Path) -> tuple[Callable[[list[Tensor]], list[np.ndarray]], dict]:
    files = {"seqrec.json": ""}
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    meta = json.loads(files["seqrec.json"] or "{}")

    @torch.inference_mode()
    def run(tensors: list[Tensor]) -> list[np.ndarray]:
        out = module(*tensors)
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]

    return run, meta


def runner(path: str | Path, fmt: str | None = None):
    """onnxruntime uses as many threads as torch (``OMP_NUM_THREADS``, ``--num_threads``)."""
    fmt = fmt or ("onnx" if str(path).endswith(".onnx") else "torchscript")
    return onnx_runner(path, torch.get_num_threads()) if fmt == "onnx" else torchscript_runner(path)


# --- export -------------------------------------------------------------------------------
def _write_onnx(graph: ScoreGraph, example: list[Tensor], path: Path, meta: dict) -> None:
    try:
        import onnx
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError as e:
        raise ExportError(f"ONNX export needs the onnx and onnxscript packages ({e.name} is missing): "
                          "pip install 'seqrec[export]', or use --format torchscript") from e
    batch = torch.export.Dim("batch")
    names = list(graph.inputs)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, tuple(example), input_names=names, dynamo=True, verbose=False,
                                    output_names=meta["outputs"], dynamic_shapes=(tuple({0: batch} for _ in names),),
                                    optimize=False, external_data=False)
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = "seqrec", json.dumps(meta)
    onnx.save(proto, str(path))


def _summary(e: BaseException) -> str:
    """One line of an exporter's error: its "Exception summary" when it has one."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if "## Exception summary" in lines and lines.index("## Exception summary") + 1 < len(lines):
        return lines[lines.index("## Exception summary") + 1]
    return lines[0] if lines else type(e).__name__


def _write_torchscript(graph: ScoreGraph, example: list[Tensor], path: Path, meta: dict) -> None:
    with warnings.catch_warnings(), torch.no_grad():  # no_grad: the inference paths, no autograd.Function
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(graph, tuple(example), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"seqrec.json": json.dumps(meta)})


def check_export(path: Path, fmt: str, graph: ScoreGraph, example: list[Tensor]) -> dict:
    """Run the written file on ``example`` and compare with PyTorch: ``{"users", "max_abs_diff",
    "same_top10", "checked_with"}``; raises :class:`ExportError` beyond :data:`TOLERANCE`."""
    if fmt == "onnx":
        try:
            run, _ = onnx_runner(path)
        except ImportError:
            return {"checked_with": None, "users": 0}
    else:
        run, _ = torchscript_runner(path)
    with torch.inference_mode():
        ref = graph(*example)
    ref = [t.numpy() for t in (ref if isinstance(ref, tuple) else (ref,))]
    # a second batch size, so a batch dimension baked into the graph cannot pass
    got = [np.concatenate(parts) for parts in zip(run([t[:1] for t in example]), run([t[1:] for t in example]))] \
        if example[0].shape[0] > 1 else run(example)
    s_ref, s_got = ref[0], got[0]
    finite = np.isfinite(s_ref)
    if not np.array_equal(finite, np.isfinite(s_got)):
        raise ExportError(f"the exported {fmt} graph masks different items than PyTorch")
    diff = float(np.abs(s_ref[finite] - s_got[finite]).max()) if finite.any() else 0.0
    if graph.top_k is None:
        k = min(10, s_ref.shape[1] - 1)
        top_ref, top_got = np.argsort(-s_ref, 1, kind="stable")[:, :k], np.argsort(-s_got, 1, kind="stable")[:, :k]
    else:
        top_ref, top_got = ref[1][:, :10], got[1][:, :10]
    same = bool(np.array_equal(top_ref, top_got))
    if diff > TOLERANCE or not same:
        raise ExportError(f"the exported {fmt} graph disagrees with PyTorch on real users (max |score diff| "
                          f"{diff:.2e}, same top-10: {same}); nothing written")
    return {"checked_with": "onnxruntime" if fmt == "onnx" else "torch.jit", "users": int(example[0].shape[0]),
            "max_abs_diff": diff, "same_top10": same}


def export_model(run_dir: str | Path, fmt: str, out: str | Path | None = None, top_k: int | None = None,
                 checkpoint: str = BEST, log=print) -> dict:
    """Write ``run_dir``'s ``checkpoint`` as a ``fmt`` graph at ``out`` (default
    ``RUN/model.onnx`` or ``RUN/model.pt``), checked against PyTorch; returns its metadata plus
    the check's figures (``"check"``) and ``"path"``."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return export_run(load_run(run_dir, checkpoint, device="cpu"), fmt, out, top_k, checkpoint, log)


def export_run(run: LoadedRun, fmt: str, out: str | Path | None = None, top_k: int | None = None,
               checkpoint: str = BEST, log=print) -> dict:
    """:func:`export_model` of a run already loaded on the CPU (``checkpoint``: the one it holds)."""
    n_items = int(run.dataset.n_items)
    if top_k is not None and (isinstance(top_k, bool) or not 1 <= int(top_k) <= n_items):
        raise ValueError(f"--top_k must be between 1 and the number of items ({n_items}), got {top_k}")
    graph = ScoreGraph(run.model, None if top_k is None else int(top_k))
    example = graph_feeds(sample_inputs(run), graph.inputs, int(run.cfg.data.maxlen))
    path = Path(out) if out is not None else run.folder.path / f"model{SUFFIX[fmt]}"
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder: give a file name (e.g. {path / ('model' + SUFFIX[fmt])})")
    meta = describe(run, graph, fmt, checkpoint)
    other = "torchscript" if fmt == "onnx" else "onnx"
    if log:
        log(f"exporting {meta['model']} ({meta['dataset']}, maxlen {meta['maxlen']}, inputs "
            f"{', '.join(graph.inputs)}) to {fmt}: {path}")
    with atomic_path(path) as tmp:
        try:
            (_write_onnx if fmt == "onnx" else _write_torchscript)(graph, example, Path(tmp), meta)
        except ExportError:
            raise
        except Exception as e:  # the exporter's own error, in one line
            first = _summary(e)
            raise ExportError(f"{meta['model']} cannot be exported to {fmt}: {first[:300]}; "
                              f"try --format {other}") from e
        check = check_export(Path(tmp), fmt, graph, example)
    meta.update(path=str(path), check=check, bytes=os.path.getsize(path))
    if log:
        if check.get("checked_with"):
            log(f"checked with {check['checked_with']} on {check['users']} users: max |score diff| "
                f"{check['max_abs_diff']:.1e}, same top-10")
        else:
            log("not checked: onnxruntime is not installed (pip install 'seqrec[export]')")
        log(f"wrote {path} ({meta['bytes'] / 1e6:.1f} MB)")
    return meta


class GraphScorer:
    """Scores from an exported file with the signature of ``model.predict``: what
    :func:`seqrec.api.load` uses with ``backend="onnx"`` or ``"torchscript"``."""

    def __init__(self, path: str | Path, fmt: str | None = None):
        self.path = Path(path)
        self.run, self.meta = runner(path, fmt)
        if self.meta.get("top_k") is not None:
            raise ValueError(f"{path} is a top-k graph; the recommender needs the scores graph "
                             "(export without --top_k)")
        self.inputs = tuple(self.meta["inputs"])
        self.maxlen = int(self.meta["maxlen"])

    def __call__(self, batch: dict[str, Tensor]) -> Tensor:
        return torch.from_numpy(self.run(graph_feeds(batch, self.inputs, self.maxlen))[0])
