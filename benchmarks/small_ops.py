#!/usr/bin/env python3
"""Per-call time of the small protocols of a decode step (issue 15: per-round overhead), exact mode.

    python benchmarks/small_ops.py [--repo PATH] [--label NAME] [--out results/small_ops/per_call.csv [--append | --overwrite]]

SmolLM2-135M's decode-step shapes: a Beaver product, a truncation and DReLU of one element, DReLU of
16, the inverse square root of one value (RMSNorm's), SiLU of 1x1536, softmax of 9 heads x 40 keys,
RMSNorm of 1x576 with a secret weight. Each op: one warm-up, then the best of 7 batches (the minimum
is the least disturbed by other load on a shared machine). Prints microseconds per call; with --out
also writes them as rows (op, us_per_call, label, threads, cpu, load before/after), --append adds to an
existing file (a before/after: one --repo run, then this tree's, in one sitting).
--repo times the engine of another source tree (e.g. `git archive <rev>` unpacked) with this harness,
so that a before/after is one script in one sitting.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parent.parent))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--label", default="", help="a name for the rows (e.g. the commit)")
    ap.add_argument("--out", default=None, help="also write the rows to this CSV")
    ap.add_argument("--append", action="store_true", help="add the rows to an existing --out")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = ap.parse_args()
    if args.out and not args.append and not args.overwrite and Path(args.out).exists():
        # (not comet_core.results.machine.refuse_existing: importing this tree's comet_core would shadow --repo's)
        print(f"error: {args.out} exists; pass --overwrite or --append, or choose another --out", file=sys.stderr)
        raise SystemExit(2)
    sys.path.insert(0, str(Path(args.repo).resolve()))
    import torch

    from comet_core.mpc import arith, compare, nonlinear
    from comet_core.mpc.engine import MPC, EngineConfig

    torch.set_num_threads(args.threads)
    m = MPC(EngineConfig(), seed=1, mode="exact")
    g = torch.Generator().manual_seed(0)
    x = m.share(torch.rand(1, 1, generator=g) * 10 + 1)
    y = m.share(torch.rand(1, 1536, generator=g) * 8 - 4)
    s = m.share(torch.rand(9, 1, 40, generator=g))
    h = m.share(torch.rand(1, 576, generator=g) * 2 - 1)
    w = m.share(torch.rand(576, generator=g) + 0.5)
    x16 = x.unsqueeze(-1).add_public(torch.arange(16.0))
    ops = [("mul 1x1", lambda: arith.mul(x, x), 100), ("truncate 1x1", lambda: arith.truncate(x, 16), 100),
           ("drelu 1x1", lambda: compare.drelu(x), 50), ("drelu 1x16", lambda: compare.drelu(x16), 50),
           ("inv_sqrt 1x1", lambda: nonlinear.inv_sqrt(x), 10), ("silu 1x1536", lambda: nonlinear.silu(y), 5),
           ("softmax 9x1x40", lambda: nonlinear.softmax(s), 3), ("rmsnorm 1x576", lambda: nonlinear.rmsnorm(h, w), 5)]
    print(f"engine: {Path(args.repo).resolve()}")
    load0, rows = os.getloadavg()[0], []
    for name, fn, reps in ops:
        fn()
        best = float("inf")
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            best = min(best, (time.perf_counter() - t0) / reps)
        print(f"{name:16s} {best * 1e6:9.0f} us")
        rows.append(dict(op=name, us_per_call=round(best * 1e6, 1), label=args.label, threads=args.threads))
    if args.out:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "unknown")
        for r in rows:
            r.update(cpu=cpu, load_avg_1m_before=round(load0, 2), load_avg_1m_after=round(os.getloadavg()[0], 2))
        out = Path(args.out)
        new = not (args.append and out.exists())
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w" if new else "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
