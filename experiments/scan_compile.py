"""One-off trial (2026-12-03, not kept): torch.compile (Inductor, CPU) of one chunk of the selective
scan, forward and backward written as plain loops for Inductor to fuse, against the same loops eager.

    OMP_NUM_THREADS=1 python experiments/scan_compile.py      # T 16, B 128, D 128, N 32

What it gave on the 2-core development VM (1 thread): forward chunk 17.5 ms eager -> 4.9 ms compiled
(20 s to compile), backward chunk 67 ms -> 35 ms (12 s); the product's tiled eager scan
(`batch_tiles` in src/seqrec/models/ssm/selective_scan.py) runs a chunk's forward + backward in
about 40 ms, so compiling would have bought nothing for 30 s of compilation per shape.
"""

import time

import torch

torch.set_num_threads(1)
T, b, D, N = 16, 128, 128, 32


def fwd_chunk(delta, du, A, Bm, Cm, h):
    ys = []
    for t in range(T):
        h = torch.exp(delta[t, :, :, None] * A) * h + du[t, :, :, None] * Bm[t, :, None, :]
        ys.append((h * Cm[t, :, None, :]).sum(-1))
    return torch.stack(ys), h


def bwd_chunk(d, du, A, Bm, Cm, g, h0, carry):
    h, hs, dAs = h0, [], []
    for t in range(T):
        dA = torch.exp(d[t, :, :, None] * A)
        h = dA * h + du[t, :, :, None] * Bm[t, :, None, :]
        hs.append(h)
        dAs.append(dA)
    Gn, gA = carry, torch.zeros_like(A)
    gC, gdu, gB, gz = [None] * T, [None] * T, [None] * T, [None] * T
    for t in range(T - 1, -1, -1):
        G = g[t, :, :, None] * Cm[t, :, None, :] + Gn
        Q = G * (hs[t - 1] if t > 0 else h0) * dAs[t]
        gC[t], gdu[t], gB[t] = (g[t, :, :, None] * hs[t]).sum(1), (G * Bm[t, :, None, :]).sum(-1), (G * du[t, :, :, None]).sum(1)
        gz[t] = (Q * A).sum(-1)
        gA = gA + (Q * d[t, :, :, None]).sum(0)
        Gn = dAs[t] * G
    return torch.stack(gC), torch.stack(gdu), torch.stack(gB), torch.stack(gz), gA, Gn


def timed(f, args, reps=5):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(*args)
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[reps // 2]


if __name__ == "__main__":
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    A = -torch.arange(1, N + 1).float().repeat(D, 1)
    fa = (torch.rand(T, b, D, generator=g) * 0.1, r(T, b, D), A, r(T, b, N), r(T, b, N), torch.zeros(b, D, N))
    ba = (torch.rand(T, b, D, generator=g) * 0.1, r(T, b, D), A, r(T, b, N), r(T, b, N), r(T, b, D),
          r(b, D, N) * 0.1, r(b, D, N) * 0.1)
    for name, f, args in (("forward", fwd_chunk, fa), ("backward", bwd_chunk, ba)):
        t0 = time.perf_counter()
        cf = torch.compile(f, dynamic=False)
        cf(*args)
        compile_s = time.perf_counter() - t0
        print(f"{name} chunk: eager {timed(f, args) * 1e3:.1f} ms, compiled {timed(cf, args) * 1e3:.1f} ms "
              f"({compile_s:.0f} s to compile)")
