"""GPU benchmark (issue 21): one markdown table of what seqrec does on one CUDA GPU.

    bash benchmarks/gpu.sh                 # on a CUDA machine: < 5 minutes, writes benchmarks/gpu_results.{md,json}
    bash benchmarks/gpu.sh --dry-run       # any machine: every row at tiny sizes on the CPU (< 1 minute)

Rows (each line of the table: what, setting, value(s), notes):

1. Training throughput (sequences/s) of SASRec, TiSASRec and SS4Rec (hidden 64, maxlen 200,
   batch 256, loss ce) on ML-1M-shaped synthetic data: fp32 vs bf16 AMP (``amp: off`` /
   ``amp: bf16``), eager vs ``compile: true``. The product's own step
   (``seqrec.train.step.TrainStep``: batch + negatives, forward, loss, backward, clip, optimizer
   step), timed after warm-up steps; the warm-up (which holds torch.compile's compilation) is
   reported separately. Batches are the trainer's (``epoch_batches(..., bucket=32)``: windows
   trimmed to the batch's longest sequence), full batches only.
2. SS4Rec's selective scan (``seqrec.models.ssm.selective_scan``): the pure-PyTorch chunked
   path (``use_fast_path=False``) vs mamba_ssm's fused kernel (``use_fast_path=True``, when
   importable): forward + backward time, and their agreement (max abs difference of the output
   and of every input gradient) on one random batch. One more line times the pure path with its
   batch tiling (``TILE_ELEMENTS``, sized for a CPU core's cache) off, and row 1 has the same for
   SS4Rec's training step: on a GPU every tile is a separate run of small kernels.
3. Full-softmax cross-entropy over a large catalogue (``seqrec.train.losses.ce_loss`` with
   ``impl`` plain / chunked / fused): forward + backward time and peak CUDA memory
   (``torch.cuda.max_memory_allocated`` above what the inputs hold), fp32 and bf16 autocast.
4. One full training epoch of SS4Rec (ce, batch 256, maxlen 200, hidden 64, bf16 AMP when
   supported) on ML-1M-shaped synthetic data (6,040 users, 3,416 items, ~165 interactions per
   user, from ``seqrec.data.synthetic.generate``), next to the official SS4Rec code's ~323 s/epoch
   on a 24 GB GPU (the figure given in issue 21).

A time budget (``--budget``, default 270 s) keeps the whole run under 5 minutes: the rows run
cheapest-first (2, 3, 1 eager, 4, 1 compiled), each timed loop stops early after
``--cell-seconds``, a cell that would start too close to the deadline prints
"skipped (time budget)", and each compiled cell runs in a child process (fresh dynamo state)
that is stopped at the deadline, since compilation time cannot be bounded from inside. Every
cell is wrapped: a failure prints "error: ..." in its line and the others still run. CUDA is
synchronised before every timer read.

``--dry-run`` runs every row at tiny sizes on the CPU; the CUDA-only lines (bf16 AMP, the
fused kernels) say "skipped (needs CUDA)" / "skipped (not installed)", and torch.compile uses
the ``aot_eager`` backend (tracing without code generation) so that it stays fast. Its files go
to the temp folder, so a dry run never overwrites real results.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import math
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # also runs from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "src"))

from seqrec.assemble import assemble  # noqa: E402
from seqrec.config import flag_table, resolve_config  # noqa: E402
from seqrec.data.datasets import prepare_dataset  # noqa: E402
from seqrec.train import losses  # noqa: E402
from seqrec.train.step import TrainStep  # noqa: E402
from seqrec.utils.compile import is_compiled  # noqa: E402

from bench_ce import table_model  # noqa: E402  (benchmarks/ is the script's folder)
from torch._dynamo.utils import counters  # noqa: E402  (graphs compiled: recompiles show as new graphs)

# the module (``seqrec.models.ssm`` exports the function under the same name)
ss_mod = importlib.import_module("seqrec.models.ssm.selective_scan")

MODELS = ("sasrec", "tisasrec", "ss4rec")
#: The official SS4Rec code's epoch time on ML-1M (24 GB GPU), as issue 21 quotes it.
OFFICIAL_SS4REC_EPOCH_S = 323.0

#: Full sizes (a CUDA run) and the dry run's tiny ones.
FULL = dict(
    data=dict(n_users=6040, n_items=3416, mean_length=165.6, min_length=20, max_length=2314, seed=0),
    hidden=64, maxlen=200, batch=256, warmup=5, eager_warmup=3, steps=20,
    scan=dict(B=64, L=200, D=128, N=32), scan_warmup=3, scan_steps=10,
    ce=dict(items=56559, rows=128 * 200, dim=64), ce_warmup=1, ce_steps=3,
)
TINY = dict(
    data=dict(n_users=300, n_items=400, mean_length=30, min_length=5, max_length=200, seed=0),
    hidden=16, maxlen=20, batch=32, warmup=2, eager_warmup=1, steps=3,
    scan=dict(B=4, L=20, D=16, N=8), scan_warmup=1, scan_steps=2,
    ce=dict(items=2000, rows=4 * 20, dim=16), ce_warmup=1, ce_steps=2,
)


# --- small helpers ------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """``perf_counter`` after the device has finished its queued work."""
    sync(device)
    return time.perf_counter()


def version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def fmt_num(x: float, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if abs(x) >= 100:
        s = f"{x:,.0f}"
    elif abs(x) >= 10:
        s = f"{x:.1f}"
    else:
        s = f"{x:.3g}"
    return f"{s} {unit}".strip()


class Budget:
    """The run's deadline: ``left()`` seconds remain; ``allows(need)`` whether a cell fits."""

    def __init__(self, t0: float, seconds: float):
        self.t0, self.seconds = t0, seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)

    def allows(self, need: float) -> bool:
        return self.left() >= need


class OverBudget(Exception):
    """A cell stopped because the run's time budget ran out."""


class Table:
    """Lines keyed (row, order) so the table prints in row order whatever order cells ran in."""

    def __init__(self):
        self.lines: list[dict] = []

    def add(self, row: int, order: int, what: str, setting: str, value: str, notes: str = "", **data) -> None:
        self.lines.append({"row": row, "order": order, "what": what, "setting": setting, "value": value,
                           "notes": notes, "data": data})

    def sorted(self) -> list[dict]:
        return sorted(self.lines, key=lambda r: (r["row"], r["order"]))

    def markdown(self) -> str:
        esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        out = ["| # | what | setting | value(s) | notes |", "|---|---|---|---|---|"]
        for r in self.sorted():
            out.append(f"| {r['row']} | {esc(r['what'])} | {esc(r['setting'])} | {esc(r['value'])} | "
                       f"{esc(r['notes'])} |")
        return "\n".join(out)


def cell(table: Table, row: int, order: int, what: str, setting: str, fn, *, budget: Budget | None = None,
         need_s: float = 0.0, skip: str | None = None) -> None:
    """Run ``fn() -> (value, notes, data)`` into one table line; a skip reason, the time budget or
    an exception gives a line saying so instead."""
    if skip:
        table.add(row, order, what, setting, f"skipped ({skip})")
        return
    if budget is not None and not budget.allows(need_s):
        table.add(row, order, what, setting, "skipped (time budget)",
                  f"{budget.left():.0f} s left of --budget, this cell needs ~{need_s:.0f} s")
        return
    t0 = time.perf_counter()
    try:
        value, notes, data = fn()
        table.add(row, order, what, setting, value, notes, cell_s=round(time.perf_counter() - t0, 2), **data)
    except OverBudget as exc:
        table.add(row, order, what, setting, "skipped (time budget)", str(exc))
    except Exception as exc:  # one failing cell must not stop the others
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        table.add(row, order, what, setting, f"error: {type(exc).__name__}: {msg}",
                  f"after {time.perf_counter() - t0:.1f} s", traceback=traceback.format_exc()[-3000:])
        print(f"[row {row} {setting}] {type(exc).__name__}: {msg}", file=sys.stderr)
    finally:
        print(f"  done: row {row} | {setting} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)


# --- rows 1 and 4: the product's training step --------------------------------------------------
def amp_skip(amp: str, device: torch.device) -> str | None:
    """bf16 AMP is CUDA-only in seqrec (``resolve_amp`` turns it off on the CPU)."""
    if amp == "bf16" and device.type != "cuda":
        return "needs CUDA"
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        return "bf16 not supported on this GPU"
    return None


def run_config(model: str, folder: Path, sz: dict, amp: str, compile_: bool, device: torch.device):
    flags = {"model": model, "dataset": str(folder), "maxlen": sz["maxlen"], "hidden_units": sz["hidden"],
             "batch_size": sz["batch"], "loss": "ce", "amp": amp, "compile": compile_,
             "device": device.type, "seed": 0, "length_bucketing": 32}
    table = flag_table(model)
    return resolve_config({k: v for k, v in flags.items() if k in table or k == "model"})


@contextlib.contextmanager
def compile_backend(backend: str | None):
    """``TrainStep`` compiles with ``compile_model``'s default backend (inductor); the CPU dry run
    swaps in a cheaper one (dynamo + AOTAutograd tracing without code generation) so it stays fast."""
    import seqrec.train.step as step_mod

    if backend is None:
        yield
        return
    orig = step_mod.compile_model
    step_mod.compile_model = lambda model, log=print: orig(model, log, backend=backend)
    try:
        yield
    finally:
        step_mod.compile_model = orig


def ce_path(n_rows: int, n_items: int, device: torch.device) -> str:
    """Which ``ce`` path ``ce_loss(impl="auto")`` takes for ``n_rows`` targets (for the notes)."""
    if n_rows * (n_items + 1) <= losses.CE_CHUNKED_MIN_ELEMENTS:
        return "plain"
    if losses.CE_FUSED and device.type == "cuda" and losses._cut_cross_entropy() is not None:
        return "fused (cut-cross-entropy)"
    return f"chunked ({losses.CE_CHUNK_SIZE} items per chunk)"


def scan_path(cfg, device: torch.device) -> str:
    if cfg.model_name != "ss4rec":
        return ""
    fused = cfg.model.use_fast_path and device.type == "cuda" and ss_mod.fused_selective_scan_available()
    return "scan: fused mamba_ssm" if fused else "scan: pure PyTorch"


def make_step(cfg, ds, device: torch.device, backend: str | None):
    logs: list[str] = []
    torch.manual_seed(0)
    parts = assemble(cfg, ds, prepare_if_missing=False, log=None)
    with compile_backend(backend if cfg.train.compile else None):
        step = TrainStep(cfg, parts, device, log=logs.append)
    step.model.train()
    return step, parts, logs


def full_batches(parts, batch: int, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """``n`` user batches of the trainer's epochs (length bucketing 32), full batches only."""
    b = parts.batcher
    out: list[np.ndarray] = []
    while len(out) < n:
        epoch = b.epoch_batches(b.train_users(), batch, rng, bucket=32)
        out += [u for u in epoch if len(u) == batch] or epoch  # (fewer users than a batch: the partial one)
    return out[:n]


def timed_steps(step, batches, rng, device: torch.device, max_seconds: float, min_steps: int = 3) -> dict:
    """Run the steps of ``batches`` (stopping once ``max_seconds`` are spent, after ``min_steps``);
    returns sequences, seconds, the batch-building share and per-step times."""
    n_seq, total, build, times, positions = 0, 0.0, 0.0, [], 0
    for i, users in enumerate(batches):
        t0 = now(device)
        batch = step.batch(users, rng)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        t1 = time.perf_counter()
        step.forward_backward(batch)
        step.apply()
        t2 = now(device)
        build += t1 - t0
        times.append(t2 - t0)
        total += t2 - t0
        n_seq += len(users)
        positions += int((batch["targets"] > 0).sum())
        if i + 1 >= min_steps and total >= max_seconds:
            break
    return {"sequences": n_seq, "seconds": total, "build_s": build, "steps": len(times),
            "median_step_ms": 1000 * statistics.median(times), "positions": positions}


def throughput_cell(model, amp, compile_, ds, folder, sz, device, backend, max_seconds, untiled=False):
    def fn():
        with untiled_scan() if untiled else contextlib.nullcontext():
            return measure()

    def measure():
        cfg = run_config(model, folder, sz, amp, compile_, device)
        step, parts, logs = make_step(cfg, ds, device, backend)
        rng = np.random.default_rng(0)
        n_warm = sz["warmup"] if compile_ else sz["eager_warmup"]
        batches = full_batches(parts, sz["batch"], rng, n_warm + sz["steps"])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        graphs_start = counters["stats"]["unique_graphs"]  # the counter is process-wide and cumulative
        t0 = now(device)
        for users in batches[:n_warm]:
            b = {k: v.to(device) for k, v in step.batch(users, rng).items()}
            step.forward_backward(b)
            step.apply()
        warm_s = now(device) - t0
        compiled_ok = is_compiled(step.model) if compile_ else False
        graphs_warm = counters["stats"]["unique_graphs"]
        r = timed_steps(step, batches[n_warm:], rng, device, max_seconds)
        new_graphs = counters["stats"]["unique_graphs"] - graphs_warm
        graphs0 = graphs_warm - graphs_start
        seq_s = r["sequences"] / r["seconds"]
        notes = [f"{r['steps']} timed steps, median {r['median_step_ms']:.0f} ms/step",
                 f"warm-up {n_warm} step(s) {warm_s:.1f} s" + (" (incl. compile)" if compile_ else ""),
                 f"batch building {100 * r['build_s'] / r['seconds']:.0f}%",
                 f"ce: {ce_path(r['positions'] // max(1, r['steps']), ds.n_items, device)}"]
        sp = scan_path(cfg, device)
        if sp:
            notes.append(sp + (" with its batch tiling off (a benchmark-only patch of TILE_ELEMENTS: not what "
                               "the product runs)" if untiled else ""))
        if compile_ and compiled_ok:
            notes.append(f"{graphs0} dynamo graph(s) after warm-up" +
                         (f", {new_graphs} more compiled during the timed steps (time included)" if new_graphs else ""))
        if compile_ and not compiled_ok:
            notes.append("compile FELL BACK to eager: " + "; ".join(line[:160] for line in logs))
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / 2**30
            notes.append(f"peak {peak:.1f} GiB")
        else:
            peak = None
        if compile_ and backend:
            notes.append(f"dry run: backend {backend}")
        del step, parts
        free_memory(device)
        return (f"{fmt_num(seq_s)} seq/s", "; ".join(notes),
                {"seq_per_s": seq_s, "warmup_s": warm_s, "compiled": compiled_ok, "graphs_after_warmup": graphs0,
                 "graphs_during_timing": new_graphs, "peak_gib": peak,
                 "compile_log": logs, **r})
    return fn


def isolated(spec: dict, budget: Budget, reserve_s: float = 3.0):
    """A compiled throughput cell in a child process (fresh dynamo state), killed when the run's
    budget runs out: compilation time cannot be bounded from inside, a child can."""
    def fn():
        limit = budget.left() - reserve_s
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
        try:  # the child's stderr (progress, warnings) goes straight to ours
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=max(1.0, limit))
        except subprocess.TimeoutExpired:
            raise OverBudget(f"compilation + warm-up + timed steps did not finish in the {limit:.0f} s left of "
                             f"--budget (the child was stopped); rerun with a larger --budget or --rows 1") from None
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"child exited with {proc.returncode}: {proc.stdout[-300:]!r} (its stderr is above)")
        res = json.loads(lines[-1])
        if "error" in res:
            raise RuntimeError(res["error"])
        return res["value"], res["notes"], res["data"]
    return fn


def child_main(spec_json: str) -> int:
    """``--child``: one throughput cell; prints its result as one JSON line."""
    from seqrec.data.store import load_dataset

    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    try:
        ds = load_dataset(spec["folder"])
        value, notes, data = throughput_cell(spec["model"], spec["amp"], spec["compile"], ds, Path(spec["folder"]),
                                             spec["sz"], device, spec["backend"], spec["max_seconds"],
                                             spec["untiled"])()
        print(json.dumps({"value": value, "notes": notes, "data": data}, default=str), flush=True)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        traceback.print_exc()
        print(json.dumps({"error": f"{type(exc).__name__}: {msg}"}), flush=True)
    return 0


def epoch_cell(ds, folder, sz, device, amp, dry: bool = False):
    def fn():
        cfg = run_config("ss4rec", folder, sz, amp, False, device)
        step, parts, _ = make_step(cfg, ds, device, None)
        rng = np.random.default_rng(0)
        b = parts.batcher
        t0 = now(device)
        for users in full_batches(parts, sz["batch"], rng, 3):  # warm-up: allocator, kernels, autotuning
            step.forward_backward({k: v.to(device) for k, v in step.batch(users, rng).items()})
            step.apply()
        warm_s = now(device) - t0
        epoch = b.epoch_batches(b.train_users(), sz["batch"], rng, bucket=32)
        r = timed_steps(step, epoch, rng, device, max_seconds=float("inf"))
        ratio = OFFICIAL_SS4REC_EPOCH_S / r["seconds"]
        notes = (f"{r['sequences']:,} sequences in {r['steps']} batches ({r['positions']:,} training targets), "
                 f"{fmt_num(r['sequences'] / r['seconds'])} seq/s, amp {amp}, {scan_path(cfg, device)}, "
                 f"warm-up 3 steps {warm_s:.1f} s; reference: the official SS4Rec code (RecBole) ~"
                 f"{OFFICIAL_SS4REC_EPOCH_S:.0f} s/epoch on ML-1M on a 24 GB GPU (figure from issue 21; it trains "
                 f"every prefix as a sample, ~1M samples; this epoch trains the same (prefix, target) pairs "
                 f"within each user's last {sz['maxlen']} positions) -> "
                 + ("dry run: tiny data, no comparison" if dry else f"official / this = {ratio:.2g}x"))
        del step, parts
        free_memory(device)
        return (f"{fmt_num(r['seconds'])} s/epoch", notes,
                {"epoch_s": r["seconds"], "warmup_s": warm_s, "reference_s": OFFICIAL_SS4REC_EPOCH_S, **r})
    return fn


# --- row 2: selective scan ------------------------------------------------------------------------
def scan_inputs(B: int, L: int, D: int, N: int, device: torch.device) -> dict:
    """A random batch shaped as Mamba's call (``u, delta, z [B, D, L]``, ``A [D, N]``, ``B, C [B, N, L]``)."""
    g = torch.Generator().manual_seed(0)
    dt = torch.exp(torch.rand(D, generator=g) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
    x = {
        "u": torch.randn(B, D, L, generator=g),
        "delta": torch.randn(B, D, L, generator=g) * 0.5,
        "A": -torch.arange(1, N + 1, dtype=torch.float32).repeat(D, 1),
        "B": torch.randn(B, N, L, generator=g),
        "C": torch.randn(B, N, L, generator=g),
        "D": torch.ones(D),
        "z": torch.randn(B, D, L, generator=g),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),
    }
    gy = torch.randn(B, D, L, generator=g)
    return {k: v.to(device).requires_grad_() for k, v in x.items()}, gy.to(device)


def scan_run(x: dict, gy, fast: bool):
    for v in x.values():
        v.grad = None
    y = ss_mod.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], z=x["z"],
                              delta_bias=x["delta_bias"], delta_softplus=True, use_fast_path=fast)
    y.backward(gy)
    return y.detach(), {k: v.grad.detach().clone() for k, v in x.items()}


def time_scan(x, gy, fast: bool, device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        scan_run(x, gy, fast)
    times = []
    for _ in range(steps):
        t0 = now(device)
        scan_run(x, gy, fast)
        times.append(now(device) - t0)
    return statistics.median(times)


@contextlib.contextmanager
def untiled_scan():
    """The pure scan with its CPU-cache batch tiling off (one tile = the whole batch)."""
    orig = ss_mod.TILE_ELEMENTS
    ss_mod.TILE_ELEMENTS = 2**62
    try:
        yield
    finally:
        ss_mod.TILE_ELEMENTS = orig


def fused_scan_skip(device: torch.device) -> str | None:
    """Why the fused selective scan cannot run here (None: it can)."""
    if device.type != "cuda":
        return "needs CUDA" + ("" if ss_mod.fused_selective_scan_available() else "; mamba_ssm not installed either")
    if not ss_mod.fused_selective_scan_available():
        return ("not installed: pip install mamba-ssm" if not installed("mamba_ssm") else
                "mamba_ssm installed but its kernel does not import")
    return None


def scan_cells(table: Table, sz: dict, device: torch.device, budget: Budget) -> None:
    s = sz["scan"]
    shape = f"B={s['B']}, L={s['L']}, D={s['D']}, N={s['N']}, fp32"
    state: dict = {}

    def pure():
        x, gy = scan_inputs(**s, device=device)
        state["x"], state["gy"] = x, gy
        t = time_scan(x, gy, False, device, sz["scan_warmup"], sz["scan_steps"])
        state["pure_ms"] = 1000 * t
        tiles = len(ss_mod.batch_tiles(s["B"], min(ss_mod.DEFAULT_CHUNK, s["L"]), s["D"], s["N"]))
        return (f"{fmt_num(1000 * t)} ms fwd+bwd", f"median of {sz['scan_steps']}; chunk {ss_mod.DEFAULT_CHUNK}, "
                f"{tiles} batch tile(s) of TILE_ELEMENTS={ss_mod.TILE_ELEMENTS}", {"ms": 1000 * t, "tiles": tiles})

    def pure_untiled():
        with untiled_scan():
            t = time_scan(state["x"], state["gy"], False, device, sz["scan_warmup"], sz["scan_steps"])
        return (f"{fmt_num(1000 * t)} ms fwd+bwd",
                f"the same path with the batch tiling (a CPU-cache optimisation) off: one tile; "
                f"{state['pure_ms'] / (1000 * t):.2f}x the tiled time", {"ms": 1000 * t})

    def fused():
        x, gy = state["x"], state["gy"]
        t = time_scan(x, gy, True, device, sz["scan_warmup"], sz["scan_steps"])
        state["fused_ms"] = 1000 * t
        return (f"{fmt_num(1000 * t)} ms fwd+bwd", f"median of {sz['scan_steps']}; "
                f"{state['pure_ms'] / (1000 * t):.1f}x faster than the pure path (tiled)", {"ms": 1000 * t})

    def agree():
        x, gy = state["x"], state["gy"]
        y0, g0 = scan_run(x, gy, False)
        y1, g1 = scan_run(x, gy, True)
        dy = float((y0 - y1).abs().max())
        dg = {k: float((g0[k] - g1[k]).abs().max()) for k in g0}
        rel = {k: dg[k] / max(float(g0[k].abs().max()), 1e-30) for k in g0}
        worst = max(rel, key=rel.get)
        return (f"max abs diff: output {dy:.2e}, input grads {max(dg.values()):.2e}",
                f"relative to max |value|: output {dy / max(float(y0.abs().max()), 1e-30):.1e}, worst gradient "
                f"d{worst} {rel[worst]:.1e}; per input: " + ", ".join(f"{k} {v:.1e}" for k, v in dg.items()),
                {"max_abs_output": dy, "max_abs_grad": dg, "rel_grad": rel})

    skip = fused_scan_skip(device)
    what = "selective scan fwd+bwd"
    cell(table, 2, 0, what, f"pure PyTorch (use_fast_path=False), {shape}", pure, budget=budget, need_s=5)
    pure_ok = "pure_ms" in state
    cell(table, 2, 1, what, f"pure PyTorch, batch tiling off, {shape}", pure_untiled, budget=budget, need_s=5,
         skip=None if pure_ok else "the pure path failed")
    cell(table, 2, 2, what, f"fused mamba_ssm (use_fast_path=True), {shape}", fused, budget=budget, need_s=5,
         skip=skip or (None if pure_ok else "the pure path failed"))
    cell(table, 2, 3, "selective scan agreement", f"pure vs fused, {shape}", agree, budget=budget, need_s=2,
         skip=skip or (None if "fused_ms" in state else "the fused path failed"))
    state.clear()
    free_memory(device)


# --- row 3: cross-entropy ---------------------------------------------------------------------
def ce_skip(impl: str, amp: bool, device: torch.device, cce: bool) -> str | None:
    """Why a cross-entropy variant cannot run here (None: it can)."""
    if amp and device.type != "cuda":
        return "needs CUDA"
    if impl == "fused" and device.type != "cuda":
        return "needs CUDA" + ("" if cce else "; cut-cross-entropy not installed either")
    if impl == "fused" and not cce:
        return "not installed: pip install cut-cross-entropy"
    return None


def ce_cells(table: Table, sz: dict, device: torch.device, budget: Budget) -> None:
    c = sz["ce"]
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(c["rows"], c["dim"], generator=g) * 0.5).to(device).requires_grad_()
    model = table_model((torch.randn(c["items"] + 1, c["dim"], generator=g) * 0.5).to(device))
    targets = torch.randint(1, c["items"] + 1, (c["rows"],), generator=g).to(device)
    logits_mib = c["rows"] * (c["items"] + 1) * 4 / 2**20
    ref: dict = {}

    def run(impl: str, amp: bool):
        def fn():
            ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext

            def once():
                h.grad, model.table.grad = None, None
                with ctx():
                    loss = losses.ce_loss(model, h, targets, impl=impl)
                loss.backward()
                return loss

            for _ in range(sz["ce_warmup"]):
                once()
            free_memory(device)
            if device.type == "cuda":
                sync(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            times = []
            for _ in range(sz["ce_steps"]):
                t0 = now(device)
                loss = once()
                times.append(now(device) - t0)
            t = min(times)
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else None
            out = {"loss": float(loss.detach()), "grad_h": h.grad.detach().clone(),
                   "grad_t": model.table.grad.detach().clone()}
            key = "bf16" if amp else "fp32"
            notes = [f"best of {sz['ce_steps']}"]
            if impl == "plain":
                ref[key] = out
            elif key in ref:
                r = ref[key]
                dh = float((out["grad_h"] - r["grad_h"]).abs().max())
                dt = float((out["grad_t"] - r["grad_t"]).abs().max())
                notes.append(f"vs naive: loss {abs(out['loss'] - r['loss']):.1e}, grad_h {dh:.1e}, "
                             f"grad_table {dt:.1e} (max abs)")
            if impl == "chunked":
                notes.append(f"CE_CHUNK_SIZE={losses.CE_CHUNK_SIZE}")
            if impl == "plain":
                notes.append(f"one fp32 logit matrix = {logits_mib:,.0f} MiB")
            del out
            value = f"{fmt_num(1000 * t)} ms" + (f", peak {fmt_num(peak)} MiB" if peak is not None else
                                                 " (CPU: peak CUDA memory n/a)")
            return value, "; ".join(notes), {"ms": 1000 * t, "peak_mib": peak, "loss": float(loss.detach())}
        return fn

    shape = f"{c['items']:,} items, {c['rows']:,} rows, dim {c['dim']}"
    cce = installed("cut_cross_entropy")
    order = 0
    for amp in (False, True):
        prec = "bf16 autocast" if amp else "fp32"
        for impl, name in (("plain", "naive"), ("chunked", "chunked"), ("fused", "fused (cut-cross-entropy)")):
            skip = ce_skip(impl, amp, device, cce)
            cell(table, 3, order, "cross-entropy fwd+bwd", f"{name}, {prec}, {shape}", run(impl, amp),
                 budget=budget, need_s=5, skip=skip)
            order += 1
    ref.clear()
    del h, model, targets
    free_memory(device)


# --- main -----------------------------------------------------------------------------------------
def header(device: torch.device, dry: bool, ds) -> list[str]:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        dev = (f"{torch.cuda.get_device_name(device)} ({p.total_memory / 2**30:.0f} GiB, compute capability "
               f"{p.major}.{p.minor}, CUDA {torch.version.cuda}, bf16 "
               f"{'supported' if torch.cuda.is_bf16_supported() else 'not supported'})")
    else:
        dev = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s)): no CUDA"
    pk = {name: version_of(dist) for name, dist in (("mamba_ssm", "mamba-ssm"), ("cut_cross_entropy",
                                                                                 "cut-cross-entropy"),
                                                    ("triton", "triton"))}
    st = ds.stats
    return [
        "# seqrec GPU benchmark (issue 21)" + (" -- DRY RUN (tiny sizes, CPU)" if dry else ""),
        "",
        f"- device: {dev}",
        f"- torch {torch.__version__}, python {platform.python_version()}; "
        + ", ".join(f"{k} {v or 'not installed'}" for k, v in pk.items()),
        f"- fp32 matmul precision: {torch.get_float32_matmul_precision()} (torch's default; seqrec sets none, so "
        "fp32 rows use no TF32)",
        f"- date: {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- data (rows 1, 4): synthetic {'log (tiny; ML-1M-shaped in a real run)' if dry else 'ML-1M-shaped log'}: "
        f"{st['users']:,} users, {st['items']:,} items, "
        f"{st['interactions']:,} interactions ({st['seq_len_mean']:.0f} per user, median "
        f"{st['seq_len_median']:.0f}), from seqrec.data.synthetic.generate",
        "",
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Rows and their settings: see the module docstring.")
    ap.add_argument("--dry-run", action="store_true", help="every row at tiny sizes on the CPU (< 1 minute)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole run; later cells are skipped past it (default 270; dry run 80)")
    ap.add_argument("--cell-seconds", type=float, default=None,
                    help="a timed training loop stops after this many seconds (default 10; dry run 2)")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps per cell (default 20)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="warm-up training steps per cell (default 5 compiled, 3 eager)")
    ap.add_argument("--rows", default="1,2,3,4", help="which rows to run, comma-separated")
    ap.add_argument("--out", default=None,
                    help="markdown file to write (a .json goes next to it); default benchmarks/gpu_results.md, "
                         "dry run: a file in the temp folder (the real results are not overwritten)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch (dry run)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args.child)
    t_start = time.perf_counter()

    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("gpu_bench: CUDA is not available; run it on a machine with an NVIDIA GPU, or use --dry-run for the "
              "tiny CPU check", file=sys.stderr)
        return 2
    device = torch.device("cpu") if dry else torch.device("cuda", 0)
    if dry:
        torch.set_num_threads(args.threads)
    sz = dict(TINY if dry else FULL)
    if args.steps is not None:
        sz["steps"] = args.steps
    if args.warmup is not None:
        sz["warmup"] = sz["eager_warmup"] = args.warmup
    budget = Budget(t_start, args.budget if args.budget is not None else (80.0 if dry else 270.0))
    cell_s = args.cell_seconds if args.cell_seconds is not None else (2.0 if dry else 10.0)
    backend = "aot_eager" if dry else None  # dry run: trace, do not generate code
    rows = {int(r) for r in args.rows.split(",") if r.strip()}
    out = Path(args.out) if args.out else (Path(tempfile.gettempdir()) / "seqrec_gpu_results_dryrun.md" if dry
                                           else ROOT / "benchmarks" / "gpu_results.md")
    torch.manual_seed(0)

    tmp = Path(tempfile.mkdtemp(prefix="seqrec_gpu_bench_"))
    table = Table()
    try:
        folder = tmp / "ml1m_like"
        ds = prepare_dataset("synthetic", out=folder, log=None, synthetic_kwargs=dict(sz["data"]))
        head = header(device, dry, ds)
        print("\n".join(head[:7]), file=sys.stderr, flush=True)

        amps = ("off", "bf16")
        # cheapest first, so that the budget cuts the most expensive cells (compilation) if anything
        if 2 in rows:
            scan_cells(table, sz, device, budget)
        if 3 in rows:
            ce_cells(table, sz, device, budget)
        order = {(m, a, c): i for i, (m, c, a) in enumerate(
            (m, c, a) for m in MODELS for c in (False, True) for a in amps)}

        def thr(m, a, c, untiled=False, need=None):
            setting = (f"{m}, {'bf16 AMP' if a == 'bf16' else 'fp32'}, {'compile' if c else 'eager'}, "
                       f"hidden {sz['hidden']}, maxlen {sz['maxlen']}, batch {sz['batch']}, ce"
                       + (", scan batch tiling off" if untiled else ""))
            skip = amp_skip(a, device)
            if untiled and skip is None and fused_scan_skip(device) is None:
                skip = "the fused mamba_ssm scan is in use: the pure scan's tiling does not apply"
            if need is None:
                need = (60.0 if c else 12.0) if not dry else (8.0 if c else 2.0)
            if c:  # in a child process, stopped at the deadline
                fn = isolated({"model": m, "amp": a, "compile": c, "folder": str(folder), "sz": sz,
                               "device": str(device), "backend": backend, "max_seconds": cell_s,
                               "untiled": untiled, "threads": torch.get_num_threads()}, budget)
            else:
                fn = throughput_cell(m, a, c, ds, folder, sz, device, backend, cell_s, untiled)
            cell(table, 1, order[(m, a, c)] + (100 if untiled else 0), "train throughput", setting, fn,
                 budget=budget, need_s=need, skip=skip)

        if 1 in rows:
            for m in MODELS:
                for a in amps:
                    thr(m, a, False)
            # what SS4Rec's pure scan would run at without its CPU-cache tiling (see row 2)
            thr("ss4rec", "bf16" if device.type == "cuda" else "off", False, untiled=True)
        if 4 in rows:
            amp4 = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
            cell(table, 4, 0, "SS4Rec one training epoch",
                 f"ss4rec, {'bf16 AMP' if amp4 == 'bf16' else 'fp32'}, eager, hidden {sz['hidden']}, "
                 f"maxlen {sz['maxlen']}, batch {sz['batch']}, ce; all {ds.stats['users']:,} users",
                 epoch_cell(ds, folder, sz, device, amp4, dry), budget=budget, need_s=45.0 if not dry else 2.0)
        if 1 in rows:
            # bf16 (the production precision) first; SS4Rec (many graphs: its scans run eagerly between them) last
            for m, a in (("sasrec", "bf16"), ("tisasrec", "bf16"), ("sasrec", "off"), ("tisasrec", "off"),
                         ("ss4rec", "bf16"), ("ss4rec", "off")):
                thr(m, a, True, need=(90.0 if m == "ss4rec" else None) if not dry else None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    elapsed = time.perf_counter() - t_start
    md = "\n".join(head) + table.markdown() + "\n\n" + (
        f"Elapsed {elapsed:.1f} s (budget {budget.seconds:.0f} s). Timed training loops: up to {sz['steps']} steps "
        f"after {sz['warmup']} (compiled) or {sz['eager_warmup']} (eager) warm-up steps, stopping after {cell_s:g} s; "
        "throughput = sequences / seconds of the timed steps (batch building on the CPU included, as in the "
        "trainer).\n")
    print(md)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md, encoding="utf-8")
    meta = {"device": head[2][len("- device: "):], "torch": torch.__version__, "dry_run": dry,
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "elapsed_s": round(elapsed, 1),
            "budget_s": budget.seconds, "sizes": {k: v for k, v in sz.items()}, "dataset": ds.stats,
            "argv": sys.argv[1:] if argv is None else list(argv)}
    rows_json = [{k: v for k, v in r.items()} for r in table.sorted()]
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows_json}, indent=1, default=str),
                                        encoding="utf-8")
    print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
