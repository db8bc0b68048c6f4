#!/usr/bin/env python3
"""Per-call time of the small protocols of a decode step (issue 15: per-round overhead), exact mode.

    python benchmarks/small_ops.py [--repo PATH]

SmolLM2-135M's decode-step shapes: a Beaver product, a truncation and DReLU of one element, DReLU of
16, the inverse square root of one value (RMSNorm's), SiLU of 1x1536, softmax of 9 heads x 40 keys,
RMSNorm of 1x576 with a secret weight. Each op: one warm-up, then the best of 7 batches (the minimum
is the least disturbed by other load on a shared machine). Prints microseconds per call.
--repo times the engine of another source tree (e.g. `git archive <rev>` unpacked) with this harness,
so that a before/after is one script in one sitting.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parent.parent))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
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
    for name, fn, reps in ops:
        fn()
        best = float("inf")
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            best = min(best, (time.perf_counter() - t0) / reps)
        print(f"{name:16s} {best * 1e6:9.0f} us")


if __name__ == "__main__":
    main()
