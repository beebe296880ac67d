"""Behaviour preserved across the product cut (issue 17): the same runs give the same numbers.

Before the cut (commit 6912061, the flat argument table) each case was run with its
``before`` command and the per-epoch training losses and final metrics were recorded in
``benchmarks/cut_parity_before.json``. After the cut the same runs, in their new spelling
(``after``), must match to 1e-6::

    python benchmarks/cut_parity.py --record after     # runs every case (about 3 minutes, 2 threads)
    python benchmarks/cut_parity.py --check            # compares after with before

Cases: 3-epoch runs of each shipped ML-100K configuration (needs ../shared/data/ml-100k,
prepared as ``ml-100k``) and SS4Rec plus the seed's three command forms on synthetic data.
To record ``before`` again, run this file from a checkout of 6912061's code
(``PYTHONPATH=OLD/src python benchmarks/cut_parity.py --record before --root OLD``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks"
RUNS = Path("/tmp/seqrec_cut_parity")
COMMON = ["--num_threads", "2", "--progress", "false", "--device", "cpu"]
ML = ["--num_epochs", "3", "--patience", "0"]
SYN_DS = ["--dataset", "synthetic"]
SYN = ["--num_epochs", "2", "--maxlen", "30", "--batch_size", "64", "--eval_negatives", "20"]

#: name -> {"before": argv of `seqrec train` on the flat table, "after": the new spelling}
CASES: dict[str, dict[str, list[str]]] = {
    "sasrec_ml-100k": {
        "before": ["--config", "configs/sasrec_ml-100k_ce.yaml", "--init_scheme", "xavier", *ML],
        "after": ["--config", "configs/sasrec_ml-100k.yaml", *ML]},
    "tisasrec_ml-100k": {
        "before": ["--config", "configs/tisasrec_ml-100k_ce.yaml", *ML],
        "after": ["--config", "configs/tisasrec_ml-100k.yaml", *ML]},
    "sasrec-mhc_ml-100k": {
        "before": ["--config", "configs/sasrec_ml-100k_mhc_ce.yaml", *ML],
        "after": ["--config", "configs/sasrec-mhc_ml-100k.yaml", *ML]},
    "tisasrec-mhc_ml-100k": {
        "before": ["--config", "configs/tisasrec_ml-100k_mhc_ce.yaml", *ML],
        "after": ["--config", "configs/tisasrec-mhc_ml-100k.yaml", *ML]},
    "ss4rec_ml-100k": {
        "before": ["--config", "configs/ss4rec_ml-100k.yaml", *ML],
        "after": ["--config", "configs/ss4rec_ml-100k.yaml", *ML]},
    "ss4rec_synthetic": {
        "before": [*SYN_DS, "--model", "ss4rec", "--no_mhc", "--hidden_units", "32", "--loss", "ce", *SYN],
        "after": [*SYN_DS, "--model", "ss4rec", "--hidden_units", "32", "--loss", "ce", *SYN]},
    # the seed's forms: no flag = TiSASRec + mHC, --no_mhc = TiSASRec, --no_time --no_mhc = SASRec
    "seed_default_synthetic": {"before": [*SYN_DS, *SYN], "after": [*SYN_DS, *SYN]},
    "seed_no_mhc_synthetic": {"before": [*SYN_DS, "--no_mhc", *SYN], "after": [*SYN_DS, "--no_mhc", *SYN]},
    "seed_sasrec_synthetic": {"before": [*SYN_DS, "--no_time", "--no_mhc", *SYN],
                              "after": [*SYN_DS, "--no_time", "--no_mhc", *SYN]},
}


def run_case(name: str, argv: list[str], root: Path = ROOT) -> dict:
    run_dir = RUNS / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "seqrec", "train", *argv, *COMMON, "--train_dir", str(run_dir)]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{' '.join(cmd)}\n{proc.stderr[-3000:]}")
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in epochs if r.get("kind") == "epoch"]
    test = json.loads((run_dir / "test_metrics.json").read_text())
    keep = {k: {m: v for m, v in test[k].items() if "@" in m} for k in ("valid_full", "test_full", "test_sampled")
            if k in test}
    return {"command": " ".join(["seqrec", "train", *argv]), "train_loss": losses, **keep}


def flatten(d: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        elif isinstance(v, list):
            out.update({f"{prefix}{k}[{i}]": x for i, x in enumerate(v)})
        elif isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = float(v)
    return out


def check(tol: float = 1e-6) -> int:
    before = json.loads((OUT / "cut_parity_before.json").read_text())
    after = json.loads((OUT / "cut_parity_after.json").read_text())
    worst, bad = 0.0, []
    for name, b in before.items():
        a = after.get(name)
        if a is None:
            bad.append(f"{name}: not run after the cut")
            continue
        fb, fa = flatten(b), flatten(a)
        for key in fb:
            diff = abs(fb[key] - fa.get(key, math.nan))
            worst = max(worst, diff) if diff == diff else math.inf
            if not diff <= tol:
                bad.append(f"{name} {key}: before {fb[key]!r}, after {fa.get(key)!r}")
    for line in bad:
        print(line)
    print(f"{len(before)} cases, largest difference {worst:.2e} (tolerance {tol:g}): "
          + ("SAME" if not bad else "DIFFERENT"))
    return 0 if not bad else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--record", choices=("before", "after"))
    p.add_argument("--check", action="store_true")
    p.add_argument("--cases", nargs="*", help="a subset of the cases")
    p.add_argument("--root", type=Path, help="the checkout whose configs/ the commands read (default: this one)")
    args = p.parse_args()
    if args.record:
        results = {}
        for name in args.cases or CASES:
            results[name] = run_case(name, CASES[name][args.record], args.root or ROOT)
            print(name, json.dumps({k: v for k, v in results[name].items() if k != "command"}), flush=True)
        path = OUT / f"cut_parity_{args.record}.json"
        if args.cases and path.exists():  # a subset: update those cases only
            results = {**json.loads(path.read_text()), **results}
        path.write_text(json.dumps(results, indent=1) + "\n")
    if args.check:
        return check()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
