"""A Markdown report of one run folder, with training-curve plots.

:func:`write_report` reads a run folder through :class:`seqrec.runs.RunFolder` (its config,
``metrics.jsonl``: lines of kind "step", "epoch" and "test", and ``test_metrics.json``, absent
while the run is in progress) and writes, next to them::

    report.md            title, key settings, results, best epoch, time and throughput
    loss.png             training loss per epoch (and per logged step when present)
    valid.png            validation HR@10 / NDCG@10 per epoch

Every file is written atomically, so the report can be refreshed while the run trains
(it then says "not finished"). Plots need matplotlib (``pip install seqrec[plots]``); it is
imported lazily with the non-interactive Agg canvas, and without it the report is written
without plots and says so.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..config import KS, RunConfig
from ..runs.folder import LOSS_PNG, REPORT, VALID_PNG, RunFolder
from ..utils.io import atomic_path

MEASURES = ("hr", "ndcg", "mrr")

# (key in test_metrics.json, row label, key of the protocol string)
RESULT_ROWS = (
    ("valid_full", "valid, full ranking", "protocol_full"),
    ("test_full", "test, full ranking", "protocol_full"),
    ("valid_sampled", "valid, sampled", "protocol_sampled"),
    ("test_sampled", "test, sampled", "protocol_sampled"),
)

# The run's settings shown before the model's own (all of which are shown), by flag name.
RUN_SETTINGS = ("dataset", "split", "maxlen", "loss", "batch_size", "lr", "optimizer", "weight_decay", "l2_emb",
                "warmup_steps", "num_epochs", "patience", "metric", "seed", "device", "amp")


# -- reading ---------------------------------------------------------------------------------
def split_attempts(records: list[dict]) -> list[list[dict]]:
    """Split ``metrics.jsonl`` records into training attempts.

    The trainer appends to the file, so training again into the same folder adds a second
    attempt after the first; one starts wherever the epoch or step counter goes back, or
    after a "test" record.
    """
    attempts: list[list[dict]] = [[]]
    last_epoch = last_step = -1
    ended = False
    for r in records:
        kind = r.get("kind")
        epoch, step = r.get("epoch"), r.get("step")
        restart = ended and kind in ("step", "epoch")
        if kind == "epoch" and isinstance(epoch, int) and epoch <= last_epoch:
            restart = True
        if isinstance(step, int) and (step <= last_step if kind == "step" else kind == "epoch" and step < last_step):
            restart = True
        if restart and attempts[-1]:
            attempts.append([])
            last_epoch = last_step = -1
        ended = kind == "test"
        if kind == "epoch" and isinstance(epoch, int):
            last_epoch = epoch
        if isinstance(step, int) and kind in ("step", "epoch"):
            last_step = step
        attempts[-1].append(r)
    return attempts


@dataclass
class RunFiles:
    """What a run folder holds: config, the last attempt's records and the final result."""

    cfg: RunConfig
    epochs: list[dict]
    steps: list[dict]
    result: dict  # test_metrics.json, {} while the run is in progress
    attempts: int  # training attempts appended to metrics.jsonl (the report uses the last)


def load_run_files(run_dir: str | Path) -> RunFiles:
    """Read a run folder's config, ``metrics.jsonl`` and ``test_metrics.json``.

    Only the last training attempt of ``metrics.jsonl`` is used (see :func:`split_attempts`).
    """
    folder = RunFolder(run_dir).require()
    attempts = split_attempts(folder.metrics())
    records = attempts[-1]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    steps = [r for r in records if r.get("kind") == "step" and r.get("loss") is not None]
    return RunFiles(folder.config(), epochs, steps, folder.test_metrics() or {}, len(attempts))


# -- formatting ------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    return str(v).replace("|", "\\|")


def _setting(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return _fmt(v)


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f} s"
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


# -- plots -----------------------------------------------------------------------------------
def _new_figure(ncols: int):
    """A matplotlib Figure on the Agg canvas (no pyplot: no global state, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0 * ncols, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def plot_loss(epochs: list[dict], steps: list[dict], path: Path) -> None:
    """Train loss per epoch (left) and per logged step (right, when there are step records)."""
    fig = _new_figure(2 if steps else 1)
    axes = fig.subplots(1, 2 if steps else 1, squeeze=False)[0]
    ep = [r for r in epochs if r.get("train_loss") is not None]
    ax = axes[0]
    ax.plot([r["epoch"] for r in ep], [r["train_loss"] for r in ep], marker="o" if len(ep) < 30 else None)
    ax.set(xlabel="epoch", ylabel="train loss", title="train loss per epoch")
    ax.grid(alpha=0.3)
    if steps:
        ax = axes[1]
        ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], linewidth=0.8)
        ax.set(xlabel="optimizer step", ylabel="loss", title="train loss per logged step")
        ax.grid(alpha=0.3)
    _save_png(fig, path)


def plot_valid(epochs: list[dict], best_epoch: int | None, path: Path) -> None:
    """Validation HR@10 and NDCG@10 per evaluated epoch; the best epoch as a dashed line."""
    fig = _new_figure(1)
    ax = fig.subplots()
    for key, label in (("valid_hr@10", "HR@10"), ("valid_ndcg@10", "NDCG@10")):
        pts = [(r["epoch"], r[key]) for r in epochs if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None, label=label)
    if best_epoch:
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best epoch {best_epoch}")
    ax.set(xlabel="epoch", ylabel="metric (full ranking)", title="validation")
    ax.grid(alpha=0.3)
    ax.legend()
    _save_png(fig, path)


# -- the report ------------------------------------------------------------------------------
def _best_epoch(cfg: RunConfig, epochs: list[dict], result: dict) -> tuple[int | None, float | None]:
    """(best epoch, its validation value of the run's metric): from the result when finished,
    else the best evaluated epoch so far (the trainer's rule: first strict maximum)."""
    key = f"valid_{cfg.eval.metric}"
    evaluated = [r for r in epochs if r.get(key) is not None]
    if result.get("best_epoch") is not None:
        best = result["best_epoch"]
        value = next((r[key] for r in evaluated if r.get("epoch") == best), None)
        return best, value
    if not evaluated:
        return None, None
    top = max(evaluated, key=lambda r: r[key])  # max() keeps the first of equal values
    return top["epoch"], top[key]


def build_report(run_dir: str | Path, *, plots: dict[str, str] | None = None, plot_note: str = "") -> str:
    """The Markdown text of the report (``plots``: caption -> relative PNG file name)."""
    run_dir = Path(run_dir)
    files = load_run_files(run_dir)
    cfg, epochs, result = files.cfg, files.epochs, files.result
    finished = bool(result)

    model = cfg.describe_model()
    dataset = result.get("dataset") or Path(str(cfg.data.dataset or "?")).name
    out = [f"# {model} on {dataset}", ""]
    now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    if finished:
        status = (f"finished: {result.get('epochs_run', len(epochs))} epochs, {_fmt(result.get('steps'))} steps"
                  f" on {result.get('device', cfg.train.device)}")
    else:
        last = epochs[-1]["epoch"] if epochs else 0
        status = (f"**not finished** (no test_metrics.json yet): {last} of at most {cfg.train.num_epochs} "
                  "epochs logged; the numbers below are the run so far")
    out += [f"Run folder `{run_dir}`; status: {status}. Report written {now}."]
    if files.attempts > 1:
        out.append(f"metrics.jsonl holds {files.attempts} training attempts appended in this folder; "
                   "this report uses the last one.")
    out.append("")

    # settings
    out += ["## Settings", ""]
    flags = cfg.flags()
    rows = [["model", cfg.model_name]] + [[k, _setting(flags[k])] for k in RUN_SETTINGS if k in flags]
    rows += [[k, _setting(v)] for k, v in cfg.model_flags().items()]
    out += _table(["setting", "value"], rows)
    out.append("")

    # results
    out += ["## Results", ""]
    best, best_value = _best_epoch(cfg, epochs, result)
    if finished:
        header = ["split, protocol"] + [f"{m.upper()}@{k}" for m in MEASURES for k in KS] + ["users"]
        rows, protocols = [], {}
        for key, label, proto_key in RESULT_ROWS:
            m = result.get(key)
            if not isinstance(m, dict):
                continue
            rows.append([label] + [_fmt(m.get(f"{meas}@{k}")) for meas in MEASURES for k in KS]
                        + [_fmt(m.get("n_users"))])
            if result.get(proto_key):
                protocols[proto_key] = result[proto_key]
        out += _table(header, rows)
        out.append("")
        names = {"protocol_full": "Full ranking", "protocol_sampled": "Sampled"}
        out += [f"- {names[k]}: {v}." for k, v in protocols.items()]
        split = str(result.get("split", "leave-one-out"))
        split = split[:1].upper() + split[1:]
        if "valid_full" in result:
            out.append(f"- {split} split; the test split is evaluated once, with the best validation epoch's "
                       f"weights (selected on validation {cfg.eval.metric}).")
        else:  # a refit: no validation users, the last epoch is tested
            out.append(f"- {split}: no validation split; trained {result.get('epochs_run')} epochs, the last "
                       f"epoch's weights tested once.")
    else:
        out.append("Test metrics: not finished (the test split is evaluated once, after training).")
        if epochs and any("valid_hr@10" in r for r in epochs):
            last = [r for r in epochs if "valid_hr@10" in r][-1]
            out.append(f"Latest validation (epoch {last['epoch']}, full ranking): "
                       + ", ".join(f"{k.upper()} {_fmt(last.get(f'valid_{k}'))}" for k in ("hr@10", "ndcg@10", "mrr@10"))
                       + ".")
    out.append("")
    metric = cfg.eval.metric
    if best is not None:
        suffix = f" (validation {metric} {_fmt(best_value)})" if best_value is not None else ""
        out.append(f"Best epoch: **{best}**{suffix}{'' if finished else ' so far'}.")
    else:
        out.append("Best epoch: no evaluation yet.")
    out.append("")

    # time and throughput
    out += ["## Training time", ""]
    train_time = result.get("train_time_s")
    epoch_times = [r["epoch_time_s"] for r in epochs if r.get("epoch_time_s") is not None]
    eval_times = [r["eval_time_s"] for r in epochs if r.get("eval_time_s") is not None]
    rates = [r["seq_per_s"] for r in epochs if r.get("seq_per_s") is not None]
    rows = []
    if train_time is not None:
        rows.append(["training (with validation)", _duration(train_time)])
    elif epoch_times or eval_times:
        rows.append(["training so far (with validation)", _duration(sum(epoch_times) + sum(eval_times))])
    if epoch_times:
        rows.append(["epochs logged", str(len(epoch_times))])
        rows.append(["mean epoch (training only)", _duration(sum(epoch_times) / len(epoch_times))])
    if eval_times:
        rows.append(["mean validation pass", _duration(sum(eval_times) / len(eval_times))])
    if rates:
        rows.append(["throughput (mean over epochs)", f"{sum(rates) / len(rates):,.0f} sequences/s"])
    if epochs and epochs[-1].get("step") is not None:
        rows.append(["optimizer steps", _fmt(result.get("steps", epochs[-1]["step"]))])
    out += _table(["", "value"], rows) if rows else ["No epoch finished yet."]
    out.append("")

    # plots
    out += ["## Curves", ""]
    if plots:
        out += [f"![{caption}]({name})" for caption, name in plots.items()]
    if plot_note:
        out.append(plot_note)
    out.append("")
    return "\n".join(out)


def write_report(run_dir: str | Path, *, plots: bool = True) -> Path:
    """Write ``report.md`` (and ``loss.png``, ``valid.png``) in ``run_dir``; return its path.

    Works on a finished run and on one still training (the report then says "not finished").
    ``plots=False`` skips the PNGs. Raises ``FileNotFoundError`` when ``run_dir`` has no
    ``config.yaml``.
    """
    run_dir = Path(run_dir)
    files = load_run_files(run_dir)
    epochs, steps = files.epochs, files.steps
    made: dict[str, str] = {}
    note = ""
    if not plots:
        note = "Plots not requested."
    elif not epochs:
        note = "No plots yet: no epoch has finished."
    else:
        try:
            import matplotlib  # noqa: F401  (lazy: an optional dependency)
        except ImportError:
            note = "Plots skipped: matplotlib is not installed (`pip install 'seqrec[plots]'`)."
        else:
            plot_loss(epochs, steps, run_dir / LOSS_PNG)
            made["training loss"] = LOSS_PNG
            if any(r.get("valid_hr@10") is not None for r in epochs):
                plot_valid(epochs, _best_epoch(files.cfg, epochs, files.result)[0], run_dir / VALID_PNG)
                made["validation HR@10 and NDCG@10"] = VALID_PNG
            else:
                note = "No validation plot yet: no epoch has been evaluated."
    text = build_report(run_dir, plots=made, plot_note=note)
    path = run_dir / REPORT
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return path
