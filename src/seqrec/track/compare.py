"""Compare finished runs: their key settings and test metrics as one table."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..utils.io import read_yaml

SETTINGS = ("model", "dataset", "loss", "maxlen", "hidden_units", "num_blocks", "dropout_rate", "mhc", "time_unit")
METRICS = (("test_full", "hr@10"), ("test_full", "ndcg@10"), ("test_sampled", "hr@10"), ("test_sampled", "ndcg@10"))


def load_runs(dirs: list[str | Path], skipped: list[Path] | None = None) -> list[dict]:
    """One row per run folder. With a ``skipped`` list, paths that are not run folders (e.g.
    the log files a ``runs/*`` glob also matches) are appended to it instead of raising."""
    rows = []
    for d in dirs:
        d = Path(d)
        if not (d / "config.yaml").exists():
            if skipped is not None:
                skipped.append(d)
                continue
            raise FileNotFoundError(f"{d} is not a seqrec run folder (no config.yaml)")
        cfg = read_yaml(d / "config.yaml")
        res_path = d / "test_metrics.json"
        res = json.loads(res_path.read_text()) if res_path.exists() else {}
        row = {"run": d.name, **{k: cfg.get(k) for k in SETTINGS}}
        for split, m in METRICS:
            row[f"{split.replace('test_', '')} {m}"] = res.get(split, {}).get(m)
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
