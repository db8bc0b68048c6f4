#!/usr/bin/env python3
"""Rounds and bytes of comparisons under engine.comparison=circuit and =fss (issue 27), one sitting.

    python benchmarks/fss_ops.py --out PATH [--overwrite] [--exact] [--model smollm2-135m] [--no-model]
    (published: python benchmarks/fss_ops.py --out results/fss/ops.csv --exact; results/fss/README.md)

Per comparison setting, from the engine's ledger:
  * relu 128x3072 and drelu 128x3072, softmax 12x128x128, a SmolLM2 decode step's softmax 9x1x40,
    SiLU 1x1536 and RMSNorm 1x576, max 9x40 (tournament), argmax 1x49152 (SmolLM2's vocabulary): cost mode (shapes only: tests/test_fss.py pins cost mode's ledger
    to exact mode's), online bytes (both directions), offline bytes (dealer to both), rounds;
  * with --exact also, in exact mode with their wall time (checked against plaintext within the
    stated tolerance): relu 128x3072 and a decode step's softmax 9x1x40, SiLU 1x1536 and RMSNorm 1x576
    (median of 3 runs after one warm-up); on a shared machine only indicative: the rows record the CPU
    model, its vector flags and the 1-minute load before and after;
  * unless --no-model: a decode step of `--model` (Llama architecture) as `comet run-experiment
    system=dense mode=cost prompt_len=32 gen_tokens=3`: the decode phase's rounds and bytes per step, and
    its modelled wan-100m comm seconds per step (wan100m_s: rounds x 80 ms + busiest-direction bytes /
    100 Mbps, the run's own network model).
Writes one row per (op, comparison) with those columns, the CPU and the load; refuses to overwrite.

    python benchmarks/fss_ops.py --table PATH

prints the markdown tables of such a CSV: rounds and bytes per op under both settings (cost mode), and
the exact-mode rows' wall time and largest error.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETTINGS = ("circuit", "fss")


def ledger_ops(comparison: str, budget: int | None = None) -> list[dict]:
    """Cost-mode rounds and bytes; `budget` (fss) raises spline.BUDGET and nonlinear.GUESS_BUDGET, the
    DCF evaluations per call up to which the splines and the fine guesses are taken (label "fss-wide")."""
    import torch

    from comet_core.mpc import compare, nonlinear as nl, pairmax, spline
    from comet_core.mpc.engine import MPC, EngineConfig

    saved = spline.BUDGET, nl.GUESS_BUDGET
    if budget is not None:
        spline.BUDGET = nl.GUESS_BUDGET = budget

    ops = [("relu", (128, 3072), compare.relu), ("drelu", (128, 3072), compare.drelu),
           ("softmax", (12, 128, 128), nl.softmax), ("softmax", (9, 1, 40), nl.softmax),
           ("silu", (1, 1536), nl.silu), ("rmsnorm", (1, 576), lambda x: nl.rmsnorm(x, torch.ones(576))),
           ("max", (9, 40), lambda x: compare.max_along(x, -1)), ("argmax", (1, 49152), compare.argmax),
           ("argmax_last", (1, 49152), pairmax.argmax_last), ("gelu", (1, 3072), nl.gelu)]
    rows = []
    for name, shape, fn in ops:
        m = MPC(EngineConfig(comparison=comparison), mode="cost")
        x = m.share(torch.empty(*shape, device="meta"))
        mark = m.ledger.mark()
        fn(x)
        c = m.ledger.cost_since(mark)
        rows.append(dict(op=name, shape="x".join(map(str, shape)),
                         comparison=comparison if budget is None else f"{comparison}-wide (budget {budget})",
                         mode="cost", rounds=c.rounds, online_bytes=c.online_bytes, offline_bytes=c.offline_bytes))
    spline.BUDGET, nl.GUESS_BUDGET = saved
    return rows


def exact_ops(comparison: str) -> list[dict]:
    """Exact-mode runs with wall time (median of 3 after a warm-up), the largest |error| against plaintext
    (max_err) and the check within tests/test_protocols.py's tolerances (exact_ok): relu exactly; softmax
    within 64 LSB + 2% relative (SOFTMAX_*); SiLU within 4e-3 (SILU_ATOL); RMSNorm within 8 LSB + 1e-3
    relative (NORM_*)."""
    import statistics

    import torch
    import torch.nn.functional as F

    from comet_core.mpc import compare, nonlinear as nl
    from comet_core.mpc.engine import MPC, EngineConfig

    g = torch.Generator().manual_seed(0)
    lsb = 2.0 ** -16

    def q(x):
        return torch.round(x * 2 ** 16) / 2 ** 16

    w = torch.ones(576, dtype=torch.float64)
    cases = [
        ("relu", (128, 3072), 4.0, compare.relu, lambda x: x.clamp_min(0), 0.0, 0.0),
        ("softmax", (9, 1, 40), 3.0, nl.softmax, lambda x: torch.softmax(x, -1), 64 * lsb, 0.02),
        ("silu", (1, 1536), 4.0, nl.silu, F.silu, 4e-3, 0.0),
        ("rmsnorm", (1, 576), 2.0, lambda x: nl.rmsnorm(x, w),
         lambda x: x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-6), 8 * lsb, 1e-3),
    ]
    rows = []
    for name, shape, scale, fn, ref, atol, rtol in cases:
        x = q(torch.randn(*shape, generator=g, dtype=torch.float64) * scale)
        m = MPC(EngineConfig(comparison=comparison), seed=1, mode="exact")
        fn(m.share(x))                                        # warm-up (numba, tables)
        walls = []
        for _ in range(3):
            xs = m.share(x)
            mark = m.ledger.mark()
            t0 = time.perf_counter()
            out = fn(xs)
            walls.append(time.perf_counter() - t0)
            c = m.ledger.cost_since(mark)
        got, want = m.reveal(out), ref(x)
        ok = bool(((got - want).abs() <= atol + rtol * want.abs()).all())
        rows.append(dict(op=name, shape="x".join(map(str, shape)), comparison=comparison, mode="exact",
                         rounds=c.rounds, online_bytes=c.online_bytes, offline_bytes=c.offline_bytes,
                         wall_s=round(statistics.median(walls), 4), exact_ok=ok,
                         max_err=float(f"{float((got - want).abs().max()):.3g}")))
    return rows


def decode_step(model: str, comparison: str) -> dict:
    """One cost-mode run of the dense system; the decode phase's rounds and bytes per step."""
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "cli.main", "run-experiment", f"model={model}", "system=dense", "mode=cost",
               "prompt_len=32", "gen_tokens=3", f"engine.comparison={comparison}", f"output_dir={out}"]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
        met = pd.read_csv(out / "metrics.csv")
    row = met[(met.phase == "decode") & (met.network == met.network.iloc[0])].iloc[0]
    wan = met[(met.phase == "decode") & (met.network == "wan-100m")].iloc[0]
    steps = 2                                          # gen_tokens=3: the first token comes from prefill
    return dict(op=f"decode step ({model}, dense)", shape="prompt 32", comparison=comparison, mode="cost",
                rounds=int(row.rounds) // steps, online_bytes=int(row.online_bytes) // steps,
                offline_bytes=int(row.offline_bytes) // steps, wan100m_s=round(float(wan.comm_s) / steps, 2))


def table(path: Path) -> str:
    import pandas as pd

    d = pd.read_csv(path)
    cost = d[d["mode"] == "cost"]
    out = ["| op | shape | circuit rounds | circuit online MB | circuit offline MB | fss rounds | fss online MB "
           "| fss offline MB | fss-wide rounds |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (op, shape), g in cost.groupby(["op", "shape"], sort=False):
        by = {r.comparison.split(" ")[0]: r for r in g.itertuples()}
        c, f = by["circuit"], by["fss"]
        wide = by.get("fss-wide")
        out.append(f"| {op} | {shape} | {c.rounds:,} | {c.online_bytes / 1e6:.2f} | {c.offline_bytes / 1e6:.1f} | "
                   f"{f.rounds:,} | {f.online_bytes / 1e6:.2f} | {f.offline_bytes / 1e6:.1f} | "
                   f"{'' if wide is None else f'{wide.rounds:,}'} |")
    dec = cost[cost.op.str.startswith("decode step")]
    if len(dec):
        out.append("")
        out.append("decode step, modelled wan-100m comm seconds per step: " + ", ".join(
            f"{r.comparison} {r.wan100m_s:.1f} s" for r in dec.itertuples()))
    ex = d[d["mode"] == "exact"]
    if len(ex):
        out += ["", "| op (exact) | shape | comparison | rounds | wall s | max error | within tolerance |",
                "|---|---|---|---:|---:|---:|---|"]
        for r in ex.itertuples():
            out.append(f"| {r.op} | {r.shape} | {r.comparison} | {r.rounds} | {r.wall_s} | {getattr(r, 'max_err', float('nan')):.3g} | "
                       f"{r.exact_ok} |")
        out.append("")
        out.append(f"CPU {d.cpu.iloc[0]} ({d.cpu_flags.iloc[0]}), load {d.load_avg_1m_before.iloc[0]} before, "
                   f"{d.load_avg_1m_after.iloc[0]} after, git {d.git_rev.iloc[0]}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", type=Path, help="print the markdown tables of this CSV and exit")
    ap.add_argument("--out", help="the CSV to write")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ap.add_argument("--exact", action="store_true", help="also run relu and decode-sized ops in exact mode (timed)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--no-model", action="store_true", help="skip the decode step of --model")
    ap.add_argument("--wide-budget", type=int, default=1 << 23,
                    help="also the fss ledgers with this many DCF evaluations per call allowed (0: skip)")
    args = ap.parse_args()
    if args.table:
        print(table(args.table))
        return
    if not args.out:
        ap.error("--out is required (or --table)")
    from comet_core.results.machine import cpu_info, refuse_existing
    from comet_core.results.tables import git_revision

    if refuse_existing(Path(args.out), args.overwrite):
        raise SystemExit(2)
    load0 = os.getloadavg()[0]
    rows = []
    for cmp in SETTINGS:
        rows += ledger_ops(cmp)
        if args.exact:
            rows += exact_ops(cmp)
        if not args.no_model:
            rows.append(decode_step(args.model, cmp))
    if args.wide_budget:
        rows += ledger_ops("fss", args.wide_budget)
    cpu, flags = cpu_info()
    cols = ["op", "shape", "comparison", "mode", "rounds", "online_bytes", "offline_bytes", "wall_s", "exact_ok",
            "max_err", "wan100m_s", "cpu", "cpu_flags", "load_avg_1m_before", "load_avg_1m_after", "git_rev"]
    meta = dict(cpu=cpu, cpu_flags=flags, load_avg_1m_before=round(load0, 2),
                load_avg_1m_after=round(os.getloadavg()[0], 2), git_rev=git_revision())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, restval="")
        w.writeheader()
        for r in rows:
            w.writerow({**r, **meta})
    tmp.replace(out)                                   # atomic: never a half-written results file
    for r in rows:
        print(f"{r['op']:32s} {r['shape']:10s} {r['comparison']:8s} {r['mode']:5s} rounds {r['rounds']:6d} "
              f"online {r['online_bytes'] / 1e6:10.2f} MB offline {r['offline_bytes'] / 1e6:10.1f} MB"
              + (f"  {r['wall_s']} s exact={r['exact_ok']}" if "wall_s" in r else ""))


if __name__ == "__main__":
    main()
