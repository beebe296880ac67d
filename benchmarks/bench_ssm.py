"""Forward + backward time and peak memory of one S5 layer and one Mamba layer (CPU).

    python benchmarks/bench_ssm.py --threads 1 2                 # seqrec venv: our layers
    /work/peers-venv/bin/python benchmarks/bench_ssm.py --threads 1 2   # + s5-pytorch, mambapy

Cases (shape ``B x L x H``, default 64 x 200 x 64; S5 state 32, Mamba d_state 32, d_conv 4,
expand 2, float32):

* ``s5``          seqrec S5, chunked parallel scan with custom backward
* ``s5_seq``      seqrec S5, sequential reference scan (plain autograd)
* ``s5_pytorch``  s5-pytorch's ``S5`` with a per-position ``step_scale`` (the official SS4Rec
                  layer; builds ``Bbar`` as ``[B, L, P, H]``)
* ``mamba``       seqrec Mamba block as shipped: on the CPU the fused C++ selective scan
                  (``cpu_scan.cpp``, built on first use) when it builds
* ``mamba_pure``  the same block on the pure chunked selective scan with custom backward
* ``mamba_ref``   the same block with ``selective_scan_ref`` (sequential loop, autograd)
* ``mambapy``     mambapy's ``MambaBlock`` with ``pscan=True`` (Blelloch scan on
                  ``[B, L, E, N]`` tensors)

Peer packages are only imported when installed (they live in a separate venv; our code is
found through ``src/`` next to this folder). Every case runs in a fresh subprocess: one
warm-up step, then ``--reps`` timed steps (median reported); peak memory is the growth of
the process's peak RSS (``getrusage``) from after building the layer and its inputs to the
end, i.e. what the forward + backward allocates at its peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
CASES = ["s5", "s5_seq", "s5_pytorch", "mamba", "mamba_pure", "mamba_ref", "mambapy"]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _build(case: str, B: int, L: int, H: int, P: int, N: int):
    """(module, step function) for one case, or None when its package is missing."""
    import torch

    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, L, H, generator=g).requires_grad_()
    dt = torch.rand(B, L, generator=g) * 3600.0  # gaps of up to an hour, in seconds
    gy = torch.randn(B, L, H, generator=g)
    torch.manual_seed(0)
    if case in ("s5", "s5_seq"):
        from seqrec.models.ssm import S5

        m = S5(H, P, scan="parallel" if case == "s5" else "sequential")
        fwd = lambda: m(x, dt)  # noqa: E731
    elif case == "s5_pytorch":
        try:
            from s5 import S5 as PeerS5
        except ImportError:
            return None
        m = PeerS5(width=H, state_width=P, dt_min=0.001, dt_max=0.1)
        fwd = lambda: m(x, step_scale=dt)  # noqa: E731
    elif case in ("mamba", "mamba_pure", "mamba_ref"):
        from seqrec.models.ssm import Mamba, selective_scan_ref

        m = Mamba(H, d_state=N, d_conv=4, expand=2, use_fast_path=case == "mamba")
        if case == "mamba_ref":
            mod = sys.modules["seqrec.models.ssm.selective_scan"]
            mod.selective_scan = lambda *a, use_fast_path=True, chunk_size=None, **k: selective_scan_ref(*a, **k)
        fwd = lambda: m(x)  # noqa: E731
    elif case == "mambapy":
        try:
            from mambapy.mamba import MambaBlock, MambaConfig
        except ImportError:
            return None
        m = MambaBlock(MambaConfig(d_model=H, n_layers=1, d_state=N, d_conv=4, expand_factor=2, pscan=True))
        fwd = lambda: m(x)  # noqa: E731
    else:
        raise ValueError(f"unknown case {case!r}; choose from {CASES}")

    def step():
        x.grad = None
        for p in m.parameters():
            p.grad = None
        y = fwd()
        (y * gy).sum().backward()

    return m, step


def child(args) -> None:
    import torch

    threads = args.threads[0]
    torch.set_num_threads(threads)
    built = _build(args.child, args.B, args.L, args.H, args.P, args.N)
    if built is None:
        print(json.dumps({"case": args.child, "threads": threads, "missing": True}))
        return
    _, step = built
    base = _rss_mb()
    step()  # warm-up
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"case": args.child, "threads": threads, "times": times,
                      "median_s": statistics.median(times), "base_mb": base, "peak_mb": _rss_mb(),
                      "extra_mb": _rss_mb() - base}))


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--B", type=int, default=64)
    ap.add_argument("--L", type=int, default=200)
    ap.add_argument("--H", type=int, default=64)
    ap.add_argument("--P", type=int, default=32, help="S5 state size")
    ap.add_argument("--N", type=int, default=32, help="Mamba d_state")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return []
    import torch

    print(f"# {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"torch {torch.__version__}, venv {sys.prefix}; B={args.B} L={args.L} H={args.H} P={args.P} "
          f"N={args.N}, float32, median of {args.reps}, {time.strftime('%Y-%m-%d %H:%M')}")
    print("| case | threads | fwd+bwd (s) | min-max (s) | peak extra RSS (MiB) |")
    print("|---|---|---|---|---|")
    results = []
    for case in args.cases:
        for th in args.threads:
            cmd = [sys.executable, __file__, "--child", case, "--threads", str(th), "--reps", str(args.reps),
                   "--B", str(args.B), "--L", str(args.L), "--H", str(args.H), "--P", str(args.P),
                   "--N", str(args.N)]
            env = dict(os.environ, OMP_NUM_THREADS=str(th), MKL_NUM_THREADS=str(th))
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                print(f"| {case} | {th} | failed: {out.stderr.strip().splitlines()[-1:]} | | |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(r)
            if r.get("missing"):
                print(f"| {case} | {th} | not installed | | |")
                continue
            print(f"| {case} | {th} | {r['median_s']:.3f} | {min(r['times']):.3f}-{max(r['times']):.3f} "
                  f"| {r['extra_mb']:.0f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
