#!/usr/bin/env python3
"""Where a private generation's time goes: the AES keystream it draws, by caller, and its compute per op.

    python benchmarks/keystream_tally.py [--model smollm2-135m] [--prompt-len 32] [--gen 8] [--threads 2]

1. One exact in-process run (benchmarks/private_generation.py's prompt and settings), with PRG.fill_
   wrapped: every read of more than prg.SMALL_READ bytes is counted (bytes, seconds) under its four
   innermost callers (the dealer's mask blocks, the streamed masks read again, the weight sharing, ...).
   Smaller reads come from keystream made ahead and are not counted.
2. Printed: the CPU line and load, the tally (largest first) with each caller's GB/s, and the measured
   compute of the prefill and of one decode step per op (the run folder's compute_ops.csv).
The wrapper costs a stack walk per counted read (~30 k reads): wall time is a little above an untimed
run's, so take wall times from benchmarks/private_generation.py.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from comet_core.results.machine import cpu_info  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--gen", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides")
    a = ap.parse_args()

    import pandas as pd
    import torch
    from hydra import compose, initialize_config_dir

    from benchmarks.private_generation import DEFAULT_PROMPT
    from comet_core.mpc import prg
    from experiments.run import run

    nbytes, seconds = collections.Counter(), collections.Counter()
    fill = prg.PRG.fill_

    def counted(self, out):
        n = 8 * out.numel()
        if n <= prg.SMALL_READ:
            return fill(self, out)
        where = " < ".join(f"{Path(f.filename).stem}.{f.name}" for f in reversed(traceback.extract_stack(limit=5)[:-1]))
        t0 = time.perf_counter()
        try:
            return fill(self, out)
        finally:
            seconds[where] += time.perf_counter() - t0
            nbytes[where] += n

    prg.PRG.fill_ = counted
    try:
        torch.set_num_threads(a.threads)
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=[f"model={a.model}", f"prompt_len={a.prompt_len}", "save_ledger=false",
                                               f"gen_tokens={a.gen}", *a.overrides])
        cfg.prompt = DEFAULT_PROMPT
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            s = run(cfg, Path(tmp) / "run")
            wall = time.perf_counter() - t0
            ops = Path(s["out"]) / "compute_ops.csv"
            op = pd.read_csv(ops) if ops.exists() else None
    finally:
        prg.PRG.fill_ = fill
    cpu, flags = cpu_info()
    print(f"# {a.model} {a.prompt_len} + {a.gen} exact; cpu {cpu} ({flags}); load {load:.2f} -> "
          f"{os.getloadavg()[0]:.2f}; wall {wall:.1f} s (counted); tokens equal plaintext: {bool(s['match'])}")
    total, t_total = sum(nbytes.values()), sum(seconds.values())
    print(f"keystream of reads > {prg.SMALL_READ} B: {total / 1e9:.2f} GB in {t_total:.2f} s "
          f"({total / 1e9 / max(t_total, 1e-9):.2f} GB/s)")
    for where, n in nbytes.most_common(12):
        print(f"  {n / 1e9:7.2f} GB  {seconds[where]:6.2f} s  {n / 1e9 / max(seconds[where], 1e-9):5.2f} GB/s  {where}")
    if op is None:
        return 0
    steps = max(a.gen - 1, 1)
    for stage, per in (("prefill", 1), ("decode", steps)):
        d = op[op.stage == stage].groupby("op").measured_s.sum().sort_values(ascending=False) / per
        label = "prefill" if stage == "prefill" else "one decode step (mean)"
        print(f"{label}: " + ", ".join(f"{k} {v:.2f} s" for k, v in d.head(8).items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
