"""``study.md``: the trials of a study, its best configuration, the test result, and plots
(Optuna's matplotlib backend: optimisation history, parameter importances, parallel coordinates)."""

from __future__ import annotations

import datetime as _dt
import warnings
from pathlib import Path

from ..utils.io import atomic_path


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.4f}"
    return str(v)


def _seconds(v) -> str:
    return "-" if v is None else f"{float(v):,.0f}"


def _plots(study, folder: Path, prefix: str) -> list[tuple[str, str]]:
    """PNG files of the study's plots; those Optuna cannot draw yet (too few trials) are left out."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as vm
    except ImportError:
        return []
    made = []
    kinds = [("optimisation history", "history", vm.plot_optimization_history),
             ("parameter importances", "importance", vm.plot_param_importances),
             ("parallel coordinates", "parallel", vm.plot_parallel_coordinate)]
    for caption, stem, fn in kinds:
        name = f"{prefix}{stem}.png"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(7, 4)
            with atomic_path(folder / name) as tmp:
                fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
            plt.close(fig)
            made.append((caption, name))
        except Exception:  # noqa: BLE001 - e.g. importances need two completed trials
            plt.close("all")
    return made


def write_study_report(folder: Path, studies: list, summary: dict) -> Path:
    folder = Path(folder)
    now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    metric = summary["metric"]
    out = [f"# Study {folder.name}", "",
           f"Maximising validation {metric} (full ranking). Selection used validation only; the test split was read "
           f"once, for the best trial. Written {now}.", ""]
    test = summary.get("test") or {}
    rows = [["best trial", f"{summary['best_study']} #{summary['best_trial']} (`{summary['best_run']}`)"],
            [f"validation {metric}", _fmt(summary["best_valid"])],
            ["best epoch", _fmt(summary.get("best_epoch"))]]
    if test.get("full"):
        rows.append(["test (best checkpoint, once)", f"HR@10 {test['full']['hr@10']:.4f}, NDCG@10 "
                                                    f"{test['full']['ndcg@10']:.4f}"])
    refit = summary.get("refit")
    if refit:
        rows.append([f"refit ({refit['epochs']} epochs on train + validation)",
                     f"HR@10 {refit['full']['hr@10']:.4f}, NDCG@10 {refit['full']['ndcg@10']:.4f} (a separate protocol)"])
    out += ["| | |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    out += ["", "Best parameters: " + ", ".join(f"`{k}={_fmt(v)}`" for k, v in summary["best_params"].items()),
            "", f"`seqrec train --config {folder / 'best.yaml'}` trains the best configuration as it is.", ""]
    for study in studies:
        trials = study.get_trials(deepcopy=False)
        params = list(dict.fromkeys(k for t in trials for k in t.params))
        states = [t.state.name for t in trials]
        out += [f"## {study.study_name}", "",
                f"{len(trials)} trials: {states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned, "
                f"{states.count('FAIL')} failed.", ""]
        header = ["#", "state", *params, f"valid {metric}", "best epoch", "epochs", "seconds"]
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for t in trials:
            value = t.value if t.value is not None else (max(t.intermediate_values.values())
                                                          if t.intermediate_values else None)
            out.append("| " + " | ".join([str(t.number), t.state.name.lower(), *(_fmt(t.params.get(p)) for p in params),
                                          _fmt(value), _fmt(t.user_attrs.get("best_epoch")),
                                          _fmt(t.user_attrs.get("epochs_run")), _seconds(t.user_attrs.get("seconds"))])
                       + " |")
        out.append("")
        prefix = f"{study.study_name}-" if len(studies) > 1 else ""
        out += [f"![{caption}]({name})" for caption, name in _plots(study, folder, prefix)]
        out.append("")
    path = folder / "study.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path
