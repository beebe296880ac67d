"""Pre-flight checks of a training configuration: will ``seqrec train`` work, and fit?

:func:`preflight` runs every check below and returns a list of :class:`Check`; each check is
isolated (a failing or crashing check becomes a failed :class:`Check` with its message, and
the others still run; a check that needs something an earlier check could not provide
reports "not run" and counts as failed):

==================  ==========================================================================
dependencies        torch, numpy, polars, pyyaml, tqdm present and recent enough
optional extras     matplotlib, wandb, tensorboard (always ok: "not installed (optional)")
device              the requested ``device`` is available; GPU name, memory, bf16, AMP mode
fused kernels       SDPA flash / memory-efficient attention on CUDA, ``mamba_ssm`` (informative)
config              :func:`seqrec.config.validate_config`
dataset             the dataset is prepared (``resolve_dataset(..., prepare_if_missing=False)``)
checksums           the arrays' md5 match the manifest (``SeqDataset.verify``)
sequences           enough users with >= 3 interactions (evaluated by leave-one-out), training
                    sequences, timestamps for time-aware models, share truncated by ``maxlen``
model               registered, builds for the dataset's items (:func:`seqrec.assemble.assemble`)
training step       one forward / backward / optimizer step on a real batch, the trainer's own
                    (:class:`seqrec.train.step.TrainStep`): loss and gradients finite
memory              peak training memory at two small batch sizes, extrapolated linearly to
                    ``batch_sizes`` at the full ``maxlen``; the largest that fits in 80%
disk                free space for the checkpoints (weights + two Adam moments) in ``train_dir``
==================  ==========================================================================

Memory measurement: on CUDA the allocator's peak (``torch.cuda.max_memory_allocated``); on
the CPU the peak of the tensor allocations recorded by the torch profiler during the step,
plus the weights, gradients and optimizer state already allocated. Both count tensors only
(not the CUDA context, the Python process or allocator caching), and the fit is linear in
the batch size with every sequence at full ``maxlen`` (the worst case; length-bucketed
batches of short users use less): treat the figures as approximate, which is what the 20%
head-room is for.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..assemble import assemble
from ..config import RunConfig, validate_config
from ..utils.device import pick_device, resolve_amp
from .step import TrainStep

MIN_TORCH = (2, 2)
REQUIRED = (("torch", "torch", MIN_TORCH), ("numpy", "numpy", (1, 24)), ("polars", "polars", (1, 0)),
            ("yaml", "pyyaml", (6, 0)), ("tqdm", "tqdm", (4, 60)))
OPTIONAL = (("matplotlib", "matplotlib", "report plots"), ("wandb", "wandb", "Weights & Biases logging"),
            ("tensorboard", "tensorboard", "TensorBoard logging"))
MIN_EVAL_USERS = 10  # fewer evaluated users make the metrics meaningless
MEMORY_FRACTION = 0.8
DISK_SAFETY = 2.0  # atomic checkpoint writes briefly hold a second copy; logs, reports
PLACEHOLDER_ITEMS = 1000  # model check without a dataset
GiB = 1024**3


@dataclass
class Check:
    """The outcome of one pre-flight check. ``data``: machine-readable details (e.g. the
    memory table) for callers that want more than the text."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    data: dict = field(default_factory=dict)


class CheckError(Exception):
    """Raised inside a check: it fails with this detail and fix."""

    def __init__(self, detail: str, fix: str = "", data: dict | None = None):
        super().__init__(detail)
        self.detail, self.fix, self.data = detail, fix, data or {}


class NotRun(CheckError):
    """A prerequisite is missing (an earlier check failed): the check cannot run."""

    def __init__(self, reason: str):
        super().__init__(f"not run: {reason}", "fix the failed check it depends on first")


# -- formatting ------------------------------------------------------------------------------
def human_bytes(n: float) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


NAME_WIDTH = max(len("training step"), len("optional extras"))


def format_check(check: Check, width: int = NAME_WIDTH) -> str:
    """One check: ``✓/✗  name  detail``, further detail lines and the fix indented below."""
    pad = " " * (width + 5)
    detail = check.detail.splitlines() or [""]
    lines = [f"{'✓' if check.ok else '✗'}  {check.name:<{width}}  {detail[0]}"]
    lines += [f"{pad}{d}" for d in detail[1:]]
    if check.fix and not check.ok:
        lines.append(f"{pad}fix: {check.fix}")
    return "\n".join(lines)


def format_checks(checks: list[Check]) -> str:
    """A readable table: ✓/✗, name, detail (multi-line details indented) and the fix, then
    a one-line summary."""
    if not checks:
        return "no checks run"
    width = max(NAME_WIDTH, *(len(c.name) for c in checks))
    lines = [format_check(c, width) for c in checks]
    failed = [c.name for c in checks if not c.ok]
    lines.append("")
    lines.append(f"{len(checks) - len(failed)} of {len(checks)} checks passed"
                 + (f"; failed: {', '.join(failed)}" if failed else ""))
    return "\n".join(lines)


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
        if not part.isdigit():
            break
    return tuple(out)


# -- shared state between checks -------------------------------------------------------------
class _Context:
    """What the checks learn and hand on (dataset, device, model class, a training setup)."""

    def __init__(self, cfg: RunConfig, batch_sizes: tuple[int, ...], probe_sizes: tuple[int, int],
                 memory_fraction: float):
        self.cfg = cfg
        self.batch_sizes = tuple(int(b) for b in batch_sizes)
        self.probe_sizes = probe_sizes
        self.memory_fraction = memory_fraction
        self.device: torch.device | None = None
        self.device_note = ""
        self.dataset = None
        self.split = None
        self.batcher = None
        self.model_cls = None
        self.n_params: int | None = None
        self.parts = None  # the assembled dataset split, model and batcher
        self.setup: TrainStep | None = None

    def need_dataset(self):
        if self.dataset is None:
            raise NotRun("the dataset is not available (see 'dataset')")
        return self.dataset

    def need_device(self) -> torch.device:
        return self.device if self.device is not None else torch.device("cpu")


# -- checks ----------------------------------------------------------------------------------
def check_dependencies(ctx: _Context) -> Check:
    found, problems, fixes = [f"python {platform.python_version()}"], [], []
    for module, dist, minimum in REQUIRED:
        try:
            mod = importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any import failure is the finding
            problems.append(f"{dist} cannot be imported ({exc})")
            fixes.append(f"pip install '{dist}>={'.'.join(map(str, minimum))}'")
            continue
        version = getattr(mod, "__version__", None) or importlib.metadata.version(dist)
        found.append(f"{dist} {version}")
        if _version_tuple(version) < minimum:
            problems.append(f"{dist} {version} is older than {'.'.join(map(str, minimum))}")
            fixes.append(f"pip install -U '{dist}>={'.'.join(map(str, minimum))}'")
    if problems:
        raise CheckError("; ".join(problems) + " (found: " + ", ".join(found) + ")", "; ".join(fixes))
    cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    return Check("dependencies", True, ", ".join(found) + f" ({cuda})")


def check_optional(ctx: _Context) -> Check:
    parts = []
    for module, dist, purpose in OPTIONAL:
        try:
            parts.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{dist} not installed (optional: {purpose})")
    return Check("optional extras", True, "; ".join(parts))


def check_device(ctx: _Context) -> Check:
    cfg = ctx.cfg
    requested = cfg.train.device
    ctx.device = torch.device("cpu")
    if requested not in ("auto", "cuda", "cpu"):
        ctx.device_note = " (requested device invalid: checks ran on the CPU)"
        raise CheckError(f"device must be auto, cuda or cpu, got {requested!r}", "pass --device auto, cuda or cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        why = ("this torch is a CPU-only build" if torch.version.cuda is None
               else f"torch has CUDA {torch.version.cuda} but no GPU is visible (driver? CUDA_VISIBLE_DEVICES?)")
        ctx.device_note = " (CUDA unavailable: checks ran on the CPU)"
        raise CheckError(f"--device cuda was asked for but CUDA is not available: {why}; the other checks "
                         "run on the CPU",
                         "use --device cpu (or auto), or install a CUDA build of torch and check `nvidia-smi`")
    dev = pick_device(requested)
    ctx.device = dev
    amp = cfg.train.amp
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        bf16 = torch.cuda.is_bf16_supported()
        mode = resolve_amp(amp, dev)
        detail = (f"cuda:{idx} {props.name}, {human_bytes(props.total_memory)}, compute capability "
                  f"{props.major}.{props.minor}, bf16 {'supported' if bf16 else 'not supported'}; "
                  f"AMP {mode} (--amp {amp})")
        data = {"device": f"cuda:{idx}", "name": props.name, "total_memory": props.total_memory, "bf16": bf16,
                "amp": mode}
        if amp == "bf16" and not bf16:
            raise CheckError(detail + ": this GPU has no bf16 support", "use --amp fp16 or --amp auto", data)
        return Check("device", True, detail, data=data)
    wanted = cfg.train.num_threads or 0
    threads = wanted or torch.get_num_threads()
    note = " (auto: CUDA not available)" if requested == "auto" else ""
    detail = (f"cpu{note}: {os.cpu_count()} cores, torch uses {threads} thread{'s' if threads != 1 else ''}"
              f"{'' if wanted else ' (its default)'}; AMP off (float32 on the CPU)")
    return Check("device", True, detail, data={"device": "cpu", "amp": "off"})


def check_kernels(ctx: _Context) -> Check:
    dev = ctx.need_device()
    parts = []
    data: dict[str, Any] = {}
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        cap = torch.cuda.get_device_capability(idx)
        flash = torch.backends.cuda.flash_sdp_enabled() and cap >= (8, 0)
        mem_eff = torch.backends.cuda.mem_efficient_sdp_enabled()
        parts.append(f"SDPA flash attention {'available' if flash else 'not available (needs compute capability >= 8.0)'}"
                     f", memory-efficient attention {'enabled' if mem_eff else 'disabled'}")
        data.update(flash=flash, mem_efficient=mem_eff)
    else:
        parts.append("SDPA runs its CPU kernel (flash attention needs CUDA)")
        data.update(flash=False)
    try:
        import mamba_ssm  # noqa: F401

        version = getattr(mamba_ssm, "__version__", "")
        parts.append(f"mamba_ssm {version} importable (fused selective scan)".replace("  ", " "))
        data["mamba_ssm"] = True
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken CUDA extension
        reason = "not installed" if isinstance(exc, ModuleNotFoundError) else f"not importable ({exc})"
        parts.append(f"mamba_ssm {reason}: state-space models use the reference scan")
        data["mamba_ssm"] = False
    if dev.type == "cpu":
        from seqrec.models.ssm.cpu_kernel import cpu_kernel_describe

        parts.append(cpu_kernel_describe())
    return Check("fused kernels", True, "; ".join(parts), data=data)


def check_config(ctx: _Context) -> Check:
    try:
        validate_config(ctx.cfg)
    except ValueError as exc:
        raise CheckError(str(exc), "edit the value in the --config YAML or pass the flag on the command line") from None
    cfg = ctx.cfg
    opts = ", ".join(f"{k} {v}" for k, v in cfg.model_flags().items() if k in ("hidden_units", "num_blocks"))
    return Check("config", True, f"valid: {cfg.describe_model()} ({opts}), loss {cfg.train.loss}, maxlen "
                                 f"{cfg.data.maxlen}, batch {cfg.train.batch_size}, lr {cfg.train.lr:g}")


def check_dataset(ctx: _Context) -> Check:
    from ..data.datasets import SPECS, resolve_dataset

    name = ctx.cfg.data.dataset
    if not name:
        raise CheckError("no dataset given", "pass --dataset NAME (ml-1m, ml-100k, ...) or a prepared folder")
    try:
        ds = resolve_dataset(name, prepare_if_missing=False, log=None)
    except (ValueError, FileNotFoundError) as exc:
        spec = SPECS.get(str(name))
        if spec is not None and (spec.downloadable or spec.fmt == "synthetic"):
            fix = f"prepare it first: `seqrec prepare {name}` (downloads it; --raw PATH reads a local copy)"
        elif spec is not None:
            fix = f"prepare it first: `seqrec prepare {name} --raw PATH`"
        else:
            fix = (f"prepare it first (`seqrec prepare {name} --raw PATH`) or pass --dataset FOLDER of a "
                   "prepared dataset")
        raise CheckError(str(exc), fix) from None
    ctx.dataset = ds
    s = ds.stats
    return Check("dataset", True, f"{ds.name} at {ds.path}: {s['users']:,} users, {s['items']:,} items, "
                                  f"{s['interactions']:,} interactions",
                 data={"path": str(ds.path), "users": s["users"], "items": s["items"],
                       "interactions": s["interactions"]})


def check_checksums(ctx: _Context) -> Check:
    ds = ctx.need_dataset()
    t0 = time.perf_counter()
    try:
        ds.verify()
    except ValueError as exc:
        raise CheckError(str(exc), f"re-prepare the dataset: `seqrec prepare {ds.name}` (with its --raw/--out)") from None
    n = len(ds.manifest.get("checksums", {}))
    if n == 0:
        raise CheckError("the manifest holds no checksums", f"re-prepare the dataset: `seqrec prepare {ds.name}`")
    return Check("checksums", True, f"md5 of {n} arrays match the manifest ({time.perf_counter() - t0:.1f} s)")


def check_sequences(ctx: _Context) -> Check:
    ds = ctx.need_dataset()
    cfg = ctx.cfg
    uses_time = cfg.model_class.uses_time
    maxlen = cfg.data.maxlen
    split = ds.eval_split(cfg.data.split, cfg.data.split_fraction)
    ctx.split = split
    starts = np.asarray(ds.offsets)[1:-1]
    lengths = np.diff(np.asarray(ds.offsets))[1:]
    n_users = len(lengths)
    n_eval = len(split.test_users)
    n_train = int((split.train_end - starts >= 2).sum())  # users with an (input, target) pair
    longer = float((lengths > maxlen).mean()) if n_users else 0.0
    detail = (f"{n_eval:,} of {n_users:,} users ({n_eval / max(n_users, 1):.1%}) are evaluated ({split.name} "
              f"split); {n_train:,} training sequences; length median {np.median(lengths) if n_users else 0:.0f}, "
              f"max {lengths.max() if n_users else 0} ({longer:.1%} of users longer than maxlen {maxlen}: "
              "their most recent items are used)")
    data = {"users": n_users, "eval_users": n_eval, "train_sequences": n_train, "longer_than_maxlen": longer}
    if n_eval < MIN_EVAL_USERS or n_train == 0:
        raise CheckError(detail + f": too few (need at least {MIN_EVAL_USERS} evaluated users)",
                         "prepare the dataset with more users, or a lower --min_user filter that still keeps "
                         ">= 3 interactions per user", data)
    if uses_time and len(ds.timestamp) and int(np.max(ds.timestamp)) == int(np.min(ds.timestamp)):
        raise CheckError(detail + f"; but every timestamp is equal: {cfg.model_name} needs real times",
                         f"use a model without time features (--model {' or '.join(_timeless_models())}), "
                         "or a dataset with timestamps", data)
    return Check("sequences", True, detail, data=data)


def _timeless_models() -> list[str]:
    from ..models import available_models, get_model_class

    return [m for m in available_models() if not get_model_class(m).uses_time]


def check_model(ctx: _Context) -> Check:
    from ..models import build_model

    cfg = ctx.cfg
    cls = ctx.model_cls = cfg.model_class
    n_items = ctx.dataset.n_items if ctx.dataset is not None else PLACEHOLDER_ITEMS
    try:
        if ctx.dataset is not None:
            ctx.parts = assemble(cfg, ctx.dataset)
            model = ctx.parts.model
        else:
            model = build_model(cfg.model_name, n_items=n_items, maxlen=cfg.data.maxlen, config=cfg.model)
    except (ValueError, TypeError) as exc:
        raise CheckError(f"{cfg.model_name} does not build: {exc}",
                         "change the value named above (in the --config YAML or on the command line)") from None
    ctx.batcher = ctx.parts.batcher if ctx.parts is not None else None
    n = sum(p.numel() for p in model.parameters())
    ctx.n_params = n
    items = (f"the dataset's {n_items:,} items" if ctx.dataset is not None
             else f"{n_items:,} placeholder items (dataset unavailable)")
    kind = "time-aware" if cls.uses_time else "no time features"
    return Check("model", True, f"{cfg.describe_model()} ({kind}) builds for {items}: {n:,} parameters",
                 data={"parameters": n, "n_items": n_items})


# -- one training step, the trainer's own ---------------------------------------------------
def _padded(batch: dict[str, torch.Tensor], pad_to: int | None) -> dict[str, torch.Tensor]:
    """Left-pad the ``[B, L]`` tensors to the full window: the worst case for memory."""
    if pad_to is None or batch["items"].shape[1] >= pad_to:
        return batch
    extra = pad_to - batch["items"].shape[1]
    return {k: torch.nn.functional.pad(v, (extra, 0)) if v.dim() == 2 else v for k, v in batch.items()}


def _batch(ctx: _Context, users: np.ndarray, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    step = ctx.setup
    return {k: v.to(step.device) for k, v in _padded(step.batch(users, ctx.rng), pad_to).items()}


def _step(step: TrainStep, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """One optimizer step as the trainer takes it; (loss, gradient norm)."""
    loss, gnorm = step.forward_backward(batch)
    step.apply()
    return float(loss), gnorm


def _state_bytes(step: TrainStep) -> int:
    """Bytes held between steps: weights, gradients and optimizer state."""
    total = 0
    for p in step.model.parameters():
        total += p.numel() * p.element_size()
        if p.grad is not None:
            total += p.grad.numel() * p.grad.element_size()
    for st in step.optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v))
    return total


def _rng_devices(device: torch.device) -> list:
    return [device.index or 0] if device.type == "cuda" else []


def check_training_step(ctx: _Context) -> Check:
    ds = ctx.need_dataset()
    if ctx.batcher is None:
        raise NotRun("the dataset's sequences could not be read (see 'sequences')")
    if ctx.model_cls is None or ctx.n_params is None:
        raise NotRun("the model does not build (see 'model')")
    cfg = ctx.cfg
    train_users = ctx.batcher.train_users()
    with torch.random.fork_rng(devices=_rng_devices(ctx.need_device())):
        torch.manual_seed(cfg.train.seed)
        setup = ctx.setup = TrainStep(cfg, assemble(cfg, ctx.dataset), ctx.need_device())
        setup.model.train()
        ctx.rng = np.random.default_rng(cfg.train.seed)
        n = min(cfg.train.batch_size, 64, len(train_users))
        users = np.sort(ctx.rng.choice(train_users, size=n, replace=False))
        batch = _batch(ctx, users)
        t0 = time.perf_counter()
        loss, gnorm = _step(setup, batch)
        dt = time.perf_counter() - t0
    finite_params = all(bool(torch.isfinite(p).all()) for p in setup.model.parameters())
    detail = (f"{cfg.train.loss} loss {loss:.4g}, gradient norm {gnorm:.4g} on {n} sequences "
              f"(window {batch['items'].shape[1]}) in {dt:.2f} s on {setup.device}{ctx.device_note}")
    data = {"loss": loss, "grad_norm": gnorm, "seconds": dt, "batch_size": n}
    if not (math.isfinite(loss) and math.isfinite(gnorm) and finite_params):
        ctx.setup = None
        raise CheckError(detail + ": not finite", "lower --lr, keep --grad_clip > 0, or try --amp off", data)
    return Check("training step", True, detail, data=data)


# -- memory ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's C++ log lines (written to file descriptor 2) for a moment."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)


def _cpu_step_peak(setup: TrainStep, batch: dict[str, torch.Tensor]) -> int:
    """Peak bytes of tensor memory during one CPU step (profiler allocation events)."""
    from torch.profiler import ProfilerActivity, profile

    base = _state_bytes(setup)
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _step(setup, batch)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    running = np.cumsum([nb for _, nb in events]) if events else np.zeros(1)
    return base + max(0, int(running.max()))


def _cuda_step_peak(setup: TrainStep, batch: dict[str, torch.Tensor]) -> int:
    dev = setup.device
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(dev)
    _step(setup, batch)
    torch.cuda.synchronize(dev)
    return int(torch.cuda.max_memory_allocated(dev))


def available_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, description): total GPU memory on CUDA, else available system RAM."""
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        total = torch.cuda.get_device_properties(idx).total_memory
        return int(total), f"{human_bytes(total)} GPU memory"
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if ":" in line}
        avail = info.get("MemAvailable") or info["MemFree"]
        return int(avail), f"{human_bytes(avail)} available RAM"
    except (OSError, KeyError, ValueError, IndexError):
        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return int(pages), f"{human_bytes(pages)} free RAM"


def check_memory(ctx: _Context) -> Check:
    if ctx.setup is None:
        raise NotRun("the training step failed (see 'training step')")
    setup, cfg = ctx.setup, ctx.cfg
    maxlen = cfg.data.maxlen
    b1, b2 = sorted(int(b) for b in ctx.probe_sizes)
    if not 0 < b1 < b2:
        raise CheckError(f"probe batch sizes must be two different positive sizes, got {ctx.probe_sizes}")
    train_users = ctx.batcher.train_users()
    # the longest training sequences (repeated when there are fewer users than b2)
    longest = train_users[np.argsort(-ctx.batcher.train_lengths(train_users), kind="stable")]
    measure = _cuda_step_peak if setup.device.type == "cuda" else _cpu_step_peak
    peaks = []
    with torch.random.fork_rng(devices=_rng_devices(setup.device)):
        for b in (b1, b2):
            users = np.resize(longest, b)
            peaks.append(measure(setup, _batch(ctx, users, pad_to=maxlen)))
    per_seq = max(0.0, (peaks[1] - peaks[0]) / (b2 - b1))
    fixed = max(0.0, peaks[0] - per_seq * b1)
    capacity, what = available_memory(setup.device)
    limit = ctx.memory_fraction * capacity
    table = []
    for b in ctx.batch_sizes:
        est = fixed + per_seq * b
        table.append({"batch_size": b, "bytes": int(est), "fits": est <= limit})
    fitting = [r["batch_size"] for r in table if r["fits"]]
    suggested = max(fitting) if fitting else None
    configured = cfg.train.batch_size
    est_cfg = fixed + per_seq * configured
    # evaluation scores every item for eval_batch_size users at once (a few float32 copies)
    eval_bytes = 3 * 4 * cfg.eval.batch_size * (ctx.dataset.n_items + 1)

    lines = [f"peak training memory, {setup.device}{ctx.device_note}: ~{human_bytes(fixed)} fixed + "
             f"{human_bytes(per_seq)} per sequence at maxlen {maxlen} (linear fit of batch {b1} and {b2}; approximate)",
             f"{'batch':>7}  {'estimate':>10}  fits in {ctx.memory_fraction:.0%} of {what}"]
    lines += [f"{r['batch_size']:>7}  {human_bytes(r['bytes']):>10}  {'yes' if r['fits'] else 'no'}" for r in table]
    lines.append(f"largest batch size that fits: {suggested if suggested else 'none of these'}; configured "
                 f"--batch_size {configured}: ~{human_bytes(est_cfg)}"
                 f" ({'fits' if est_cfg <= limit else 'does NOT fit'})")
    lines.append(f"evaluation: ~{human_bytes(eval_bytes)} of item scores at --eval_batch_size "
                 f"{cfg.eval.batch_size}")
    data = {"table": table, "suggested_batch_size": suggested, "fixed_bytes": int(fixed), "per_sequence_bytes": per_seq,
            "probe_peaks": dict(zip((b1, b2), peaks)), "capacity_bytes": capacity, "limit_bytes": int(limit),
            "configured_bytes": int(est_cfg), "eval_bytes": eval_bytes, "device": str(setup.device)}
    detail = "\n".join(lines)
    if est_cfg > limit:
        fix = (f"use --batch_size {suggested}" if suggested else
               "lower --maxlen or the model's size options (`seqrec train --model NAME --help`), or use a larger "
               "device")
        raise CheckError(detail, fix, data)
    if eval_bytes > limit:
        raise CheckError(detail, "lower --eval_batch_size", data)
    return Check("memory", True, detail, data=data)


def check_disk(ctx: _Context) -> Check:
    if ctx.n_params is None:
        raise NotRun("the model does not build (see 'model')")
    train_dir = Path(ctx.cfg.train.train_dir or ".").expanduser().absolute()
    existing = train_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    ckpt = ctx.n_params * 3 * 4  # weights + two Adam moments, float32
    need = int(3 * ckpt * DISK_SAFETY)  # best.pt, last.pt and the new copy of one while it replaces it
    detail = (f"{human_bytes(free)} free at {existing}; two checkpoints (best.pt, last.pt) of ~{human_bytes(ckpt)} "
              f"and the copy written while one is replaced need ~{human_bytes(need)} with a safety factor of "
              f"{DISK_SAFETY:g}")
    if (train_dir / "config.yaml").exists():
        detail += (f"; note: {train_dir} already holds a run: `seqrec train` refuses it unless --resume (continue "
                   "it) or --overwrite (replace it)")
    data = {"free_bytes": free, "need_bytes": need, "path": str(existing)}
    if free < need:
        raise CheckError(detail, "free some space or choose another --train_dir", data)
    return Check("disk", True, detail, data=data)


CHECKS: tuple[tuple[str, Callable[[_Context], Check]], ...] = (
    ("dependencies", check_dependencies),
    ("optional extras", check_optional),
    ("device", check_device),
    ("fused kernels", check_kernels),
    ("config", check_config),
    ("dataset", check_dataset),
    ("checksums", check_checksums),
    ("sequences", check_sequences),
    ("model", check_model),
    ("training step", check_training_step),
    ("memory", check_memory),
    ("disk", check_disk),
)


_OOM_ERRORS = tuple(e for e in (getattr(torch, "OutOfMemoryError", None),
                                getattr(torch.cuda, "OutOfMemoryError", None)) if isinstance(e, type))


def _run_check(name: str, fn: Callable[[_Context], Check], ctx: _Context) -> Check:
    try:
        check = fn(ctx)
    except CheckError as exc:
        return Check(name, False, exc.detail, exc.fix, exc.data)
    except Exception as exc:  # noqa: BLE001 - a crashing check is a failed check, with its message
        msg = str(exc) or type(exc).__name__
        if isinstance(exc, _OOM_ERRORS):
            return Check(name, False, f"out of memory: {msg.splitlines()[0]}", "lower --batch_size or --maxlen")
        return Check(name, False, f"{type(exc).__name__}: {msg}")
    check.name = name
    return check


def preflight(cfg: RunConfig, *, batch_sizes: tuple[int, ...] = (32, 64, 128, 256, 512), log: Callable | None = print,
              probe_sizes: tuple[int, int] = (8, 16), memory_fraction: float = MEMORY_FRACTION) -> list[Check]:
    """Check that ``cfg`` (a resolved training config) can train here; see the module docstring.

    ``log`` receives each check's formatted line as it completes (``None``: silent).
    ``batch_sizes``: the memory table's rows; ``probe_sizes``: the two batch sizes measured.
    Returns every check, failed ones included; :func:`format_checks` renders them.
    """
    ctx = _Context(cfg, batch_sizes, probe_sizes, memory_fraction)
    checks = []
    for name, fn in CHECKS:
        check = _run_check(name, fn, ctx)
        checks.append(check)
        if log:
            log(format_check(check))
    return checks
