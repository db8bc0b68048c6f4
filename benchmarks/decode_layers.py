#!/usr/bin/env python3
"""Benchmark: time per decode step against its rounds, SmolLM2-135M-shaped dense layers, two commits.

    python benchmarks/decode_layers.py --before <rev> [--after HEAD] [--reps 4] [--layers 2] [--steps 12]
        [--out results/decode_layers/revisions.csv] [--overwrite]

A short, load-robust companion of benchmarks/private_generation.py for per-operation overhead (issue 15:
decode is bound by ~0.5 ms per round, not by bytes):
1. Each revision's tree is exported with `git archive` (benchmarks/generation_ab.py's `export`).
2. For rep = 1..reps, the revisions run back to back (A B A B ...), each in a fresh process of this
   script with `--repo <tree>`: random weights of SmolLM2-135M's shapes (d 576, 9 heads of 64, 3 KV
   heads, SwiGLU 1536), the dense system, default engine; a 32-token prefill, then `steps` decode steps
   of `layers` layers, each step timed alone (wall and process CPU time) with its ledger rounds.
3. One row per run: min and median seconds per step (wall, CPU), rounds per step, us per round, the load
   average before and after; the medians per revision are printed.
Min over steps and CPU time are less sensitive than wall to other jobs on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def measure(repo: Path, layers: int, steps: int) -> dict:
    """Run in a process whose sys.path starts with `repo`: per-step times of the decode layers."""
    import torch

    from comet_core.models.secure import SecureDecoder
    from comet_core.models.weights import PlainWeights, share_weights
    from comet_core.mpc.engine import MPC
    from comet_core.systems.dense import DenseSystem

    torch.set_num_threads(2)
    d, H, Hkv, hd, F = 576, 9, 3, 64, 1536
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64) * 0.05  # noqa: E731
    one = torch.ones(d, dtype=torch.float64)
    layer = dict(ln1_w=one, wq=r(d, H * hd), wk=r(d, Hkv * hd), wv=r(d, Hkv * hd), wo=r(H * hd, d), ln2_w=one,
                 w_gate=r(d, F), w_up=r(d, F), w_down=r(F, d))
    meta = dict(num_heads=H, num_kv_heads=Hkv, head_dim=hd, eps=1e-5, rope_theta=100000.0, act="silu")
    mpc = MPC(seed=0)
    w = share_weights(mpc, PlainWeights("llama", [dict(layer) for _ in range(layers)], {}, meta))
    system = DenseSystem()
    system.prepare(mpc, w, None)
    dec = SecureDecoder(mpc, w, system)
    cache = dec.new_cache()
    wall, cpu, rounds = [], [], []
    with mpc.inference():
        x = mpc.share(r(32, d) * 20)                       # activations of a few units, as after a norm
        for i in range(layers):
            x = dec.layer(x, i, cache, 0)
        cache.positions = 32
        for _ in range(steps):
            x1 = mpc.share(r(1, d) * 20)
            mark = mpc.ledger.mark()
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(layers):
                x1 = dec.layer(x1, i, cache, cache.positions)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            rounds.append(mpc.ledger.cost_since(mark).rounds)
            cache.positions += 1
    rps = statistics.median(rounds)
    return dict(layers=layers, steps=steps, wall_min_s=round(min(wall), 4), wall_median_s=round(statistics.median(wall), 4),
                cpu_min_s=round(min(cpu), 4), cpu_median_s=round(statistics.median(cpu), 4), rounds_per_step=rps,
                us_per_round_cpu_median=round(1e6 * statistics.median(cpu) / rps, 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before")
    ap.add_argument("--after", default="HEAD")
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", default=str(REPO / "results" / "decode_layers" / "revisions.csv"))
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--repo", help=argparse.SUPPRESS)      # internal: measure this tree, print one JSON row
    a = ap.parse_args()
    if a.repo:
        sys.path.insert(0, a.repo)
        print(json.dumps(measure(Path(a.repo), a.layers, a.steps)))
        return 0
    if not a.before:
        ap.error("--before is required")
    out = Path(a.out)
    if out.exists() and not a.overwrite:
        print(f"error: {out} exists; pass --overwrite or choose another --out", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO / "benchmarks"))
    from generation_ab import export

    import pandas as pd

    from comet_core.results.machine import cpu_info

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        trees = {rev: export(rev, Path(tmp)) for rev in (a.before, a.after)}
        for rep in range(a.reps):
            for rev, tree in trees.items():
                load = os.getloadavg()[0]
                cmd = [sys.executable, str(Path(__file__).resolve()), "--repo", str(tree), "--layers", str(a.layers),
                       "--steps", str(a.steps)]
                res = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=str(tree),
                                     env={**os.environ, "PYTHONPATH": str(tree)})
                row = dict(label=f"{rev}@{tree.name}", rep=rep + 1, **json.loads(res.stdout.strip().splitlines()[-1]),
                           load_avg_1m=round(load, 2), load_avg_1m_after=round(os.getloadavg()[0], 2), cpu=cpu_info()[0])
                rows.append(row)
                print(f"rep {rep + 1}/{a.reps} {row['label']}: cpu median {row['cpu_median_s']} s/step, "
                      f"{row['rounds_per_step']} rounds", file=sys.stderr, flush=True)
    df = pd.DataFrame(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    cols = ["wall_min_s", "wall_median_s", "cpu_min_s", "cpu_median_s", "rounds_per_step", "us_per_round_cpu_median",
            "load_avg_1m"]
    print(df.groupby("label", sort=False)[cols].median().to_string())
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
