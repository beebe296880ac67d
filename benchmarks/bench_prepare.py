"""Time `seqrec prepare` + RecBole export on an ML-32M-shaped ratings.csv.

    python benchmarks/make_ml32m_like.py --out /tmp/seqrec-bench/ml-32m/ratings.csv
    python benchmarks/bench_prepare.py --raw /tmp/seqrec-bench/ml-32m/ratings.csv

Each step runs in its own process (the CLI a user would run); wall time and peak RSS
(ru_maxrss of the child) are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak RSS GiB) of that child alone."""
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child: exec the command
        os.execvp(cmd[0], cmd)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"command failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 2**20  # KiB -> GiB (Linux)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", required=True, help="ratings.csv in the ML-32M format")
    ap.add_argument("--work", default=None, help="folder for the prepared dataset and export (default: temp)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="seqrec-bench-"))
    exe = [sys.executable, "-m", "seqrec"]
    rows = []
    t, m = run(exe + ["prepare", "ml-32m", "--raw", args.raw, "--out", str(work / "ml-32m")])
    rows.append(("prepare ml-32m (read, 5-core, remap, sort, save)", t, m))
    t, m = run(exe + ["export", str(work / "ml-32m"), "--format", "recbole", "--out", str(work / "recbole")])
    rows.append(("export --format recbole (full + past/future)", t, m))
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}")
    print("| step | wall (s) | peak RSS (GiB) |\n|---|---|---|")
    for name, t, m in rows:
        print(f"| {name} | {t:.1f} | {m:.2f} |")
    print(f"| total | {sum(r[1] for r in rows):.1f} | {max(r[2] for r in rows):.2f} |")


if __name__ == "__main__":
    main()
