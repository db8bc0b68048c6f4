#!/usr/bin/env python3
"""Benchmark: a decode step's Beaver matmuls, whole-matrix steps against blocks (numba and torch kernels).

    python benchmarks/decode_matmul.py [--reps 8] [--threads 2] [--out results/decode_matmul/smollm2-135m.csv] [--overwrite]

SmolLM2-135M's decode products (one row): the fused q/k/v (576 x 960), the output projection (576 x 576),
the fused gate/up (576 x 3072) and down (1536 x 576) with a fresh mask per call (the default), and the LM
head (576 x 49152) and embedding table (49152 x 576) with their kept masks (after the first use).
1. One engine (seed 1, exact), one shared input row and weight per shape.
2. For rep = 1..reps the variants run back to back on the same operands (interleaved, so a change of
   load hits all alike): `whole` (arith.matmul's whole-matrix steps: blocked.ENABLED off), `blocked_torch`
   (blocks, torch's GEMM passes: blockkernel's fallback), `blocked_numba` (blocks, the numba kernel).
   Every variant gives the same shares (tests/test_blocked.py); the min over reps is kept.
3. One row per shape and variant: seconds, ns per weight element, speed-up over `whole`; then the
   total of one decode step (30 layers x 4 products + head + embedding). CPU model and load recorded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from comet_core.results.machine import cpu_info, refuse_existing  # noqa: E402

SHAPES = [  # (name, k, n, reused mask, calls per decode step)
    ("attn.qkv", 576, 960, False, 30), ("attn.out", 576, 576, False, 30),
    ("ffn.gate_up", 576, 3072, False, 30), ("ffn.down", 1536, 576, False, 30),
    ("lm_head", 576, 49152, True, 1), ("embed", 49152, 576, True, 1),
]
VARIANTS = ("whole", "blocked_torch", "blocked_numba")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "results" / "decode_matmul" / "smollm2-135m.csv"))
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args()
    out = Path(a.out)
    if refuse_existing(out, a.overwrite):
        return 2
    import pandas as pd
    import torch

    from comet_core.mpc import arith, blocked, blockkernel
    from comet_core.mpc.engine import MPC, EngineConfig

    torch.set_num_threads(a.threads)
    have_numba = blockkernel.available()
    if not have_numba:
        print("numba is not installed: blocked_numba is skipped", file=sys.stderr)
    load0 = os.getloadavg()[0]
    m = MPC(EngineConfig(), seed=1, mode="exact")
    g = torch.Generator().manual_seed(0)
    rows = []
    for name, k, n, reused, calls in SHAPES:
        x = m.share(torch.randn(1, k, generator=g))
        w = m.register_weight(m.share(torch.randn(k, n, generator=g) * 0.05, owner="model_owner"))
        best = {}

        def run(variant: str) -> float:
            blocked.ENABLED = variant != "whole"
            blockkernel.USE_NUMBA = variant == "blocked_numba"
            t0 = time.perf_counter()
            arith.matmul(x, w, reuse_mask=reused)
            return time.perf_counter() - t0

        variants = [v for v in VARIANTS if v != "blocked_numba" or have_numba]
        for v in variants:   # warm-up (a reused mask's first use, numba's compile or cache load)
            run(v)
        for _ in range(a.reps):
            for v in variants:
                best[v] = min(best.get(v, float("inf")), run(v))
        for v in variants:
            rows.append(dict(op=name, k=k, n=n, reused_mask=reused, calls_per_step=calls, variant=v,
                             seconds=best[v], ns_per_element=1e9 * best[v] / (k * n),
                             speedup_over_whole=best["whole"] / best[v]))
    blocked.ENABLED, blockkernel.USE_NUMBA = True, have_numba
    df = pd.DataFrame(rows)
    step = (df.seconds * df.calls_per_step).groupby(df.variant).sum()
    for v, s in step.items():
        df.loc[df.variant == v, "decode_step_s"] = s
    model, vec = cpu_info()
    df["threads"], df["reps"], df["cpu"], df["vector_ext"] = a.threads, a.reps, model, vec
    df["load_avg_1m_before"], df["load_avg_1m_after"] = load0, round(os.getloadavg()[0], 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(df[["op", "variant", "seconds", "ns_per_element", "speedup_over_whole"]].to_string(index=False))
    print("one decode step's matmuls (s):", ", ".join(f"{v} {s:.3f}" for v, s in step.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
