"""Full-softmax CE: plain vs chunked (vs fused on CUDA) forward + backward, time and peak memory.

Each variant runs in a fresh subprocess so that its peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is its own; the figure reported is the peak
during the loss minus the resident size once the inputs exist (``h [rows, dim]``, the table
``[items + 1, dim]``, the targets) and a tiny warm-up call has run, i.e. what the loss
itself adds. On CUDA the peak is
``torch.cuda.max_memory_allocated`` over the same span.

    python benchmarks/bench_ce.py                                # ML-32M size: 56,559 x 25,600
    python benchmarks/bench_ce.py --items 56559 --rows 2048      # fits in ~2 GB

The default size needs ~18 GB for the plain variant: run it with the machine idle.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def rss_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def table_model(table):
    """Just the scoring interface ``ce_loss`` uses: an item table ``[n_items + 1, dim]``."""
    import torch

    class TableModel(torch.nn.Module):
        def __init__(self, table):
            super().__init__()
            self.table = torch.nn.Parameter(table)

        def output_embedding(self):
            return self.table

        def score_all(self, hidden):
            return hidden @ self.table.T

    return TableModel(table)


def child(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from seqrec.train.losses import ce_loss

    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(args.rows, args.dim, generator=g) * 0.5).to(device).requires_grad_()
    model = table_model((torch.randn(args.items + 1, args.dim, generator=g) * 0.5).to(device))
    targets = torch.randint(1, args.items + 1, (args.rows,), generator=g).to(device)
    kw = {"impl": {"naive": "plain"}.get(args.child, args.child)}
    if args.child == "chunked" and args.chunk_size:
        kw["chunk_size"] = args.chunk_size

    def step():
        h.grad = None
        model.table.grad = None
        loss = ce_loss(model, h, targets, **kw)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return loss

    # warm-up on a tiny case: library and autograd-engine start-up is not the loss's memory
    small = table_model(torch.randn(11, args.dim, device=device))
    ce_loss(small, torch.randn(8, args.dim, device=device, requires_grad=True),
            torch.randint(1, 11, (8,), device=device), **kw).backward()
    del small
    base = rss_mib()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    out = {
        "variant": args.child,
        "loss": float(loss),
        "grad_h_norm": float(h.grad.norm()),
        "grad_table_norm": float(model.table.grad.norm()),
        "best_s": min(times),
        "times_s": [round(t, 3) for t in times],
        "inputs_rss_mib": round(base, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "loss_peak_mib": round(peak_rss_mib() - base, 1),
    }
    if device.type == "cuda":
        out["loss_peak_mib"] = round((torch.cuda.max_memory_allocated() - base_cuda) / 2**20, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=56559)
    ap.add_argument("--rows", type=int, default=25600, help="positions with a target (batch x maxlen)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--chunk-size", type=int, default=0, help="chunked variant's width (0: CE_CHUNK_SIZE)")
    ap.add_argument("--variants", default="naive,chunked", help="comma-separated: naive, chunked, fused")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    logits_mib = args.rows * (args.items + 1) * 4 / 2**20
    print(f"CE forward+backward: items {args.items:,}, rows {args.rows:,}, dim {args.dim}, "
          f"{args.threads} thread(s), {args.device}; one float32 logit matrix = {logits_mib:,.0f} MiB")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    results = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--child", variant]
        for name in ("items", "rows", "dim", "chunk_size", "repeats", "threads", "device"):
            cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"{variant}: failed\n{proc.stderr[-2000:]}")
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    print(f"{'variant':<8} {'best s':>8} {'all s':>22} {'loss peak MiB':>14} {'peak RSS MiB':>13} "
          f"{'loss':>10}")
    for r in results:
        print(f"{r['variant']:<8} {r['best_s']:>8.3f} {str(r['times_s']):>22} {r['loss_peak_mib']:>14,.0f} "
              f"{r['peak_rss_mib']:>13,.0f} {r['loss']:>10.6f}")
    by = {r["variant"]: r for r in results}
    if "naive" in by:
        for v, r in by.items():
            if v == "naive":
                continue
            n = by["naive"]
            rel = max(abs(r[k] - n[k]) / max(abs(n[k]), 1e-30)
                      for k in ("loss", "grad_h_norm", "grad_table_norm"))
            print(f"{v} / naive: time {r['best_s'] / n['best_s']:.2f}x, loss peak memory "
                  f"{r['loss_peak_mib'] / max(n['loss_peak_mib'], 1e-9):.3f}x; loss and gradient norms "
                  f"agree to {rel:.1e} (relative)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
