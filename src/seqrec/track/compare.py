"""Compare finished runs: their key settings and test metrics as one table."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..runs.folder import RunFolder

#: The run settings every row shows (by flag name); then each model option that differs between
#: the runs compared (any model's, read from its config: nothing here names one).
RUN_SETTINGS = ("dataset", "loss", "maxlen")
METRICS = (("valid_full", "ndcg@10"), ("test_full", "hr@10"), ("test_full", "ndcg@10"), ("test_sampled", "hr@10"),
           ("test_sampled", "ndcg@10"))


def load_runs(dirs: list[str | Path], skipped: list[Path] | None = None) -> list[dict]:
    """One row per run folder. With a ``skipped`` list, paths that are not run folders (e.g.
    the log files a ``runs/*`` glob also matches) are appended to it instead of raising."""
    runs = []
    for d in dirs:
        folder = RunFolder(d)
        if not folder.is_run():
            if skipped is not None:
                skipped.append(folder.path)
                continue
            folder.require()
        runs.append((folder, folder.config(), folder.test_metrics() or {}))
    options = [cfg.model_flags() for _, cfg, _ in runs]
    names = list(dict.fromkeys(k for o in options for k in o))
    differing = [k for k in names if len({repr(o.get(k)) for o in options}) > 1]
    rows = []
    for (folder, cfg, res), opts in zip(runs, options):
        flags = cfg.flags()
        row = {"run": folder.name, "model": cfg.describe_model(),
               **{k: flags.get(k) for k in RUN_SETTINGS}, **{k: opts.get(k) for k in differing}}
        for split, m in METRICS:
            row[f"{split.replace('test_', '').replace('_full', '')} {m}"] = res.get(split, {}).get(m)
        row["best epoch"] = res.get("best_epoch")
        row["train s"] = round(res["train_time_s"]) if "train_time_s" in res else None
        rows.append(row)
    return rows


def _fmt(v, metric: bool) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if metric else f"{v:g}"
    return str(v)


def to_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c], "@" in c) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()
