#!/usr/bin/env python3
"""Kernel-only micro-benchmark of the exact ring product over Z_2^64 (comet_core.mpc.matmul and its kernels).

Compares, interleaved in one process (every repetition runs each kernel once, in rotating order, so
that load spikes on a shared machine hit all kernels alike; medians reported):
  large shapes (the engine's matmul, FFN down-projection, attention scores):
    6gemm         the previous kernel (ring_matmul_6gemm: 22-bit limbs, 6 float64 GEMMs)
    5gemm         the new ring_matmul (Karatsuba at bit offsets 0/21/43, 5 GEMMs, workspaces)
    5gemm_nows    the same without the per-thread workspaces (fresh temporaries: page faults)
    5gemm_cached  the new kernel with b's limbs split beforehand (split_right; a reused weight mask)
    split_b       split_right(b) alone (the elementwise part that caching saves)
    int64_numba   the numba int64 kernel (comet_core/mpc/fewrowmm.py; the engine takes it for 4-64 rows where
                  torch's int64 GEMM loses to the limbs, mpc/matmul.py rule 5), in both groups
  decode shapes (1-3 rows, SmolLM2-135M and OPT-125m projections):
    int64         torch's int64 matmul (what the previous kernel used for <= 3 rows on CPU)
    5gemm         ring_matmul's choice (now the int8 digit kernel for up to 16 rows, comet_core/mpc/digitmm)
    limbs         the float64 limb kernel forced (split of both operands; what CUDA runs)
    digits        the digit kernel with b's digits made in the call (a fresh weight mask)
    digits_cached the digit kernel with b's digits made beforehand (a reused mask)
    onerow_int64  the previous choice: one row elementwise int64 multiply + column sum, 2-3 rows int64 matmul
    f64_floor     NOT a ring product: float64 GEMV/GEMM (BLAS) of the same shapes, reading the same 8 bytes per
                  weight element: the memory-bandwidth floor any exact product over a 64-bit weight pays
Every kernel's result is checked against torch's int64 matmul before timing.

Columns: group, shape_a, shape_b, kernel, median_ms, min_ms, max_ms, reps, speedup (baseline median /
median; baseline = 6gemm for large, int64 for decode), minor_faults (median per call), threads,
cpu_model, vector_ext, malloc_tunables (GLIBC_TUNABLES), omp_wait_policy (OMP_WAIT_POLICY),
load_avg_1m_before/after (per shape), cpus, torch, timestamp.

Usage: python benchmarks/ring_matmul.py [--reps 15] [--threads 2] [--groups large,decode]
                                        [--out results/ring_matmul/kernels.csv] [--overwrite]
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from comet_core.results.machine import cpu_info, refuse_existing  # noqa: E402
from comet_core.mpc import digitmm, fewrowmm, matmul, ringmm  # noqa: E402


log = logging.getLogger("ring_matmul")
DEFAULT_OUT = "results/ring_matmul/kernels.csv"

LARGE = [((128, 768), (768, 3072)), ((128, 3072), (3072, 768)), ((12, 128, 64), (12, 64, 128))]
NOT_RING = ("split_b", "f64_floor")   # timed for reference, not ring products
DECODE = [((r, k), (k, n)) for r in (1, 2, 3) for k, n in [(576, 1536), (1536, 576), (768, 3072), (3072, 768)]]


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _no_workspace(a, b):
    ringmm.USE_WORKSPACE = False
    try:
        return matmul.ring_matmul(a, b)
    finally:
        ringmm.USE_WORKSPACE = True


def _forced_limbs(a, b):
    return ringmm.matmul_limbs(ringmm.split_left(a), ringmm.split_right(b))


def kernels(group: str, a: torch.Tensor, b: torch.Tensor) -> dict:
    if group == "large":
        lb = ringmm.split_right(b)
        return {"6gemm": lambda: ringmm.ring_matmul_6gemm(a, b),
                "5gemm": lambda: matmul.ring_matmul(a, b),
                "5gemm_nows": lambda: _no_workspace(a, b),
                "5gemm_cached": lambda: matmul.ring_matmul(a, b, b_limbs=lb),
                "split_b": lambda: ringmm.split_right(b),
                **_numba(a, b)}
    bd = matmul.split_digits(b)
    af, bf = a.double(), b.double()
    return {"int64": lambda: torch.matmul(a, b),
            "f64_floor": lambda: torch.matmul(af, bf),
            "5gemm": lambda: matmul.ring_matmul(a, b),
            "limbs": lambda: _forced_limbs(a, b),
            "digits": lambda: digitmm.digit_matmul(a, b),
            "digits_cached": lambda: matmul.ring_matmul(a, b, b_digits=bd),
            "onerow_int64": lambda: _one_row_path(a, b),
            **_numba(a, b)}


def _numba(a, b) -> dict:
    """The numba int64 kernel (fewrowmm, mpc/matmul.py rule 5), where numba is installed."""
    return {"int64_numba": lambda: fewrowmm.fewrow_matmul(a, b)} if fewrowmm.available() else {}


def _one_row_path(a, b):
    """The previous kernel's choice for 1-3 rows: one row elementwise + column sum, else int64 matmul."""
    return ringmm.one_row_cpu(a, b) if a.shape[-2] == 1 else torch.matmul(a, b)


def bench_case(group: str, sa, sb, reps: int, gen: torch.Generator) -> list[dict]:
    lo, hi = -(1 << 63), (1 << 63) - 1
    a = torch.randint(lo, hi, sa, generator=gen, dtype=torch.int64)
    b = torch.randint(lo, hi, sb, generator=gen, dtype=torch.int64)
    ref = torch.matmul(a, b)
    ks = kernels(group, a, b)
    for name, fn in ks.items():                      # exactness check + warm-up (workspaces, caches)
        out = fn()
        if name not in NOT_RING and not torch.equal(out, ref):
            raise RuntimeError(f"{name} differs from torch's int64 matmul on {sa} @ {sb}")
    names = list(ks)
    times = {n: [] for n in names}
    faults = {n: [] for n in names}
    load_before = os.getloadavg()[0]
    for r in range(reps):
        for n in names[r % len(names):] + names[:r % len(names)]:   # rotate the order every repetition
            f0 = _faults()
            t0 = time.perf_counter()
            ks[n]()
            times[n].append(time.perf_counter() - t0)
            faults[n].append(_faults() - f0)
    load_after = os.getloadavg()[0]
    base = statistics.median(times["6gemm" if group == "large" else "int64"])
    rows = []
    for n in names:
        med = statistics.median(times[n])
        rows.append(dict(group=group, shape_a="x".join(map(str, sa)), shape_b="x".join(map(str, sb)), kernel=n,
                         median_ms=round(med * 1e3, 3), min_ms=round(min(times[n]) * 1e3, 3),
                         max_ms=round(max(times[n]) * 1e3, 3), reps=reps, speedup=round(base / med, 3),
                         minor_faults=int(statistics.median(faults[n])),
                         load_avg_1m_before=round(load_before, 2), load_avg_1m_after=round(load_after, 2)))
    log.info("%s %s @ %s: %s (load %.2f -> %.2f)", group, sa, sb,
             ", ".join(f"{r['kernel']} {r['median_ms']:.2f} ms" for r in rows), load_before, load_after)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=15, help="interleaved timed repetitions (median reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--groups", default="large,decode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    if not groups or any(g not in ("large", "decode") for g in groups) or args.reps < 1 or args.threads < 1:
        ap.error("--groups is a subset of large,decode; --reps and --threads >= 1")
    out = (REPO / args.out) if args.out == DEFAULT_OUT else Path(args.out).expanduser().resolve()
    if refuse_existing(out, args.overwrite):
        return 2
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    model, vec = cpu_info()
    rows = []
    for group in groups:
        for sa, sb in (LARGE if group == "large" else DECODE):
            rows.extend(bench_case(group, sa, sb, args.reps, gen))
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    for r in rows:
        r.update(threads=args.threads, cpu_model=model, vector_ext=vec,
                 malloc_tunables=os.environ.get("GLIBC_TUNABLES", ""),
                 omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""), cpus=os.cpu_count(),
                 torch=torch.__version__, timestamp=stamp)
    df = pd.DataFrame(rows)
    print(df[["group", "shape_a", "shape_b", "kernel", "median_ms", "min_ms", "speedup", "minor_faults",
              "load_avg_1m_before", "load_avg_1m_after"]].to_string(index=False))
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/ring_matmul.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with open(out, "w") as f:
        env = " ".join(f"{k}={os.environ[k]}" for k in ("GLIBC_TUNABLES", "OMP_WAIT_POLICY") if k in os.environ)
        f.write(f"# {(env + ' ') if env else ''}{cmd}  ({model}; {vec}; {args.threads} threads)\n")
        df.to_csv(f, index=False)
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
