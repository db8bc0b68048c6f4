#!/usr/bin/env python3
"""Floors under the engine's per-op times on this host (benchmarks/engine_ops.py's shapes), measured.

What each op cannot go below on this machine with the protocol as it is, from torch measurements:
  copy bandwidth   GB/s of a torch copy_ between two preallocated int64 buffers of one weight's size
                   (bytes read + bytes written, median of reps): the host's memory bandwidth as torch sees it
  ffn_decode floor two weight-sized mask openings (W1 768x3072 and W2 3072x768 of the OPT-125m FFN), each at
                   the minimum traffic of the simulation: the dealer writes b0 and b1 (2 weight-sized writes),
                   the opening reads y0, y1, b0, b1 and writes f (4 reads, 1 write): 7 weight-sized passes
                   per weight, at the copy bandwidth
  aes              GB/s of the AES-128-CTR keystream (prg.PRG.fill_) into a preallocated buffer: the two mask
                   shares of both weights are 4 weight-sized keystreams
  gemv             torch's int64 (1 x k) @ (k x n) product at both weight shapes: a decode Beaver product reads
                   the weight-sized operands in 5 of them per weight (the dealer's a @ b0 and a @ b1, the parties'
                   e @ b0 and e @ b1, and the 2-row (a_p + e) @ f, which costs about one)
  matmul floor     the int64 GEMMs of one Beaver product at 128x768 @ 768x3072 (the dealer's a @ b, the
                   parties' e @ b0, e @ b1, and (a0 + e) @ f, a1 @ f as one 256-row product: 5 GEMM-equivalents)
                   x the time of one torch int64 GEMM at that shape
  fss relu floor   engine.comparison=fss's ReLU on 128x3072 (mpc/fss.py, 64-bit ring): every DCF level is one
                   fixed-key AES-ECB call (mpc/dcf.py), the dealer's Gen over 2 n (2 + w) blocks and the parties'
                   Eval over 2 n (1 + ceil(w / 2)), w = 2, NB + 1 levels; at the ECB throughput measured at the
                   size of one Gen call (fss.CHUNK elements), beside the exact ReLU under circuit and under fss
                   timed in the same sitting (the issue 27 target: fss within 1.2x of circuit)
Usage: python benchmarks/op_floors.py [--reps 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from comet_core.mpc.prg import PRG  # noqa: E402


def _median(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    d, ff = 768, 3072
    n = d * ff
    nbytes = 8 * n
    src = torch.randint(-2 ** 62, 2 ** 62, (n,), generator=g, dtype=torch.int64)
    dst = torch.empty_like(src)
    t_copy = _median(lambda: dst.copy_(src), args.reps)
    bw = 2 * nbytes / t_copy
    floor_open = 2 * 7 * nbytes / bw
    prg = PRG(bytes(16))
    t_aes = _median(lambda: prg.fill_(dst), args.reps)
    aes = nbytes / t_aes
    gemv = {}
    for k, m in ((d, ff), (ff, d)):
        w = torch.randint(-2 ** 62, 2 ** 62, (k, m), generator=g, dtype=torch.int64)
        x = torch.randint(-2 ** 62, 2 ** 62, (1, k), generator=g, dtype=torch.int64)
        gemv[(k, m)] = _median(lambda: torch.matmul(x, w), args.reps)
    a = torch.randint(-2 ** 62, 2 ** 62, (128, d), generator=g, dtype=torch.int64)
    b = src.view(d, ff)
    t_gemm = _median(lambda: torch.matmul(a, b), args.reps)
    fss_floor = _fss_relu_floor(args.reps)
    load = os.getloadavg()[0]
    from comet_core.results.machine import cpu_info

    cpu, flags = cpu_info()
    print(f"cpu {cpu} ({flags}), threads {args.threads}, load average (1 min) {load:.2f}")
    print(f"copy bandwidth           {bw / 1e9:6.1f} GB/s (read + write, {nbytes / 2 ** 20:.1f} MiB buffers)")
    print(f"ffn_decode opening floor {floor_open * 1e3:6.1f} ms (2 weights x 7 weight-sized passes)")
    print(f"AES-CTR keystream        {aes / 1e9:6.2f} GB/s -> 4 weight-sized mask shares "
          f"{4 * nbytes / aes * 1e3:.1f} ms")
    print("int64 GEMV               " + ", ".join(f"1x{k} @ {k}x{m}: {t * 1e3:.2f} ms" for (k, m), t in gemv.items())
          + f" -> 5 per weight: {5 * sum(gemv.values()) * 1e3:.1f} ms")
    print(f"int64 GEMM 128x768 @ 768x3072 {t_gemm * 1e3:.1f} ms -> matmul floor (5 GEMMs) {5 * t_gemm:.3f} s")
    f = fss_floor
    print(f"AES-ECB (fixed key)      {f['ecb'] / 1e9:6.2f} GB/s -> fss ReLU 128x3072 floor {f['all']:.3f} s "
          f"(Gen + Eval), {f['online']:.3f} s (the parties' Eval); measured: fss {f['fss']:.3f} s, circuit "
          f"{f['circuit']:.3f} s (1.2x circuit = {1.2 * f['circuit']:.3f} s)")
    return 0


def _fss_relu_floor(reps: int) -> dict:
    """The AES floor of the fss ReLU on 128x3072 and both ReLUs timed (see the module docstring)."""
    import numpy as np

    from comet_core.mpc import compare, dcf, fss
    from comet_core.mpc.engine import MPC, EngineConfig

    n, w, levels = 128 * 3072, 2, dcf.NB + 1
    blocks = np.zeros((2 * fss.CHUNK * (2 + w), 2), np.uint64)
    out = np.empty(blocks.nbytes + 16, np.uint8)
    ecb = blocks.nbytes / _median(lambda: dcf.aes_into(blocks, out), reps)
    gen, ev = 2 * n * (2 + w) * levels, 2 * n * (1 + -(-w // 2)) * levels
    x = torch.randn(128, 3072, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    took = {}
    for comparison in ("circuit", "fss"):
        m = MPC(EngineConfig(comparison=comparison), seed=1, mode="exact")
        xs = m.share(x)
        took[comparison] = _median(lambda: compare.relu(xs), max(1, min(reps, 3)))
    return dict(ecb=ecb, all=16 * (gen + ev) / ecb, online=16 * ev / ecb, **took)


if __name__ == "__main__":
    raise SystemExit(main())
