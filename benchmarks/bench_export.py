"""Forward time of a run's model on the three backends (torch, onnx, torchscript) for one batch
of real users' test-time inputs, after each export's own agreement check.

    python benchmarks/bench_export.py RUN [RUN ...] [--users 64] [--repeat 10] [--threads 1]

Exports each run to a temporary folder (nothing is written into the run), prints one table:
export seconds, the check's max |score diff| against PyTorch, and median forward milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from seqrec.export import ScoreGraph, export_model, graph_feeds, runner, sample_inputs
from seqrec.runs.load import load_run


def _median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--users", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"| run | model | maxlen | backend | export s | max abs diff | forward ms ({args.users} users) |")
    print("|---|---|---|---|---|---|---|")
    for run_dir in args.runs:
        run = load_run(run_dir, device="cpu")
        graph = ScoreGraph(run.model)
        feeds = graph_feeds(sample_inputs(run, args.users), graph.inputs, int(run.cfg.data.maxlen))
        name, maxlen = run.cfg.describe_model(), run.cfg.data.maxlen

        def torch_forward():
            with torch.inference_mode():
                graph(*feeds)

        print(f"| {run_dir} | {name} | {maxlen} | torch | - | - | {_median_ms(torch_forward, args.repeat):.1f} |")
        with tempfile.TemporaryDirectory() as tmp:
            for fmt in ("onnx", "torchscript"):
                t0 = time.perf_counter()
                meta = export_model(run_dir, fmt, Path(tmp) / f"m.{fmt}", log=None)
                took = time.perf_counter() - t0
                run_graph, _ = runner(meta["path"], fmt)
                ms = _median_ms(lambda: run_graph(feeds), args.repeat)
                print(f"| {run_dir} | {name} | {maxlen} | {fmt} | {took:.1f} | {meta['check']['max_abs_diff']:.1e} | "
                      f"{ms:.1f} |")


if __name__ == "__main__":
    main()
