"""A bounded load test of ``seqrec serve`` on loopback: requests/s and p50/p99 latency.

    python benchmarks/bench_serve.py RUN [--requests 2000] [--concurrency 1 8 32] [--threads 1] [--backend onnx]

Starts the server as a real process on 127.0.0.1 (a free port), sends ``--requests`` POST
/recommend requests (known users of the run's dataset, k=10) at each concurrency with an
asyncio httpx client, prints one table, and stops the server. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _load(url: str, users: list, n: int, concurrency: int) -> tuple[float, list[float], list[int]]:
    latencies: list[float] = []
    batches: list[int] = []
    queue = list(range(n))

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker():
            while queue:
                i = queue.pop()
                t0 = time.perf_counter()
                r = await client.post(f"{url}/recommend", json={"user": users[i % len(users)], "k": 10})
                latencies.append(time.perf_counter() - t0)
                r.raise_for_status()
                batches.append(int(r.headers.get("x-seqrec-batch", 1)))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t0, latencies, batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    ap.add_argument("--max_wait_ms", type=float, default=2.0)
    ap.add_argument("--backend", default="torch", choices=["torch", "onnx", "torchscript"])
    args = ap.parse_args()
    import polars as pl

    from seqrec.runs import RunFolder
    from seqrec.data.datasets import resolve_dataset

    ds = resolve_dataset(RunFolder(args.run).config().data.dataset, prepare_if_missing=False, log=None)
    users = pl.read_parquet(ds.path / "user_map.parquet")["raw"].to_list()
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.Popen([sys.executable, "-m", "seqrec", "serve", args.run, "--port", str(port),
                             "--max_wait_ms", str(args.max_wait_ms), "--backend", args.backend], env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        print(f"| concurrency | requests | requests/s | p50 ms | p99 ms | mean forward batch |")
        print("|---|---|---|---|---|---|")
        for c in args.concurrency:
            wall, lat, batches = asyncio.run(_load(url, users, args.requests, c))
            lat_ms = sorted(x * 1000 for x in lat)
            p99 = lat_ms[min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))]
            print(f"| {c} | {len(lat)} | {len(lat) / wall:.0f} | {statistics.median(lat_ms):.1f} | {p99:.1f} | "
                  f"{statistics.mean(batches):.1f} |", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
