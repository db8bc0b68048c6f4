#!/usr/bin/env python3
"""The end_to_end artifact's dense and Comet rows under engine.comparison=fss (beyond the paper), cost mode.

    python benchmarks/fss_end_to_end.py --out PATH [--overwrite] [--models M,...] [--systems S,...]
        [--comparisons fss[,circuit]] [--networks lan,wan-100m]

Per (model, system, comparison): one `comet run-experiment mode=cost prompt_len=128 gen_tokens=16` (the
settings of conf/experiment/end_to_end.yaml) in a temporary folder; from its metrics.csv, per network
and phase (prefill, decode, total): rounds, online bytes (both directions), offline bytes and the
modelled comm seconds (rounds x one-way latency + busiest-direction bytes / bandwidth; cost mode
measures no compute). Writes one CSV (atomically, never over an existing file unless --overwrite),
with git_rev.

    python benchmarks/fss_end_to_end.py --table FSS_CSV [--circuit results/end_to_end/data.csv]

prints the markdown table of the total phase: fss rows beside the circuit rows of the end_to_end
artifact's data.csv (its lan rows; their wan-100m seconds from the same network model, comm/network.py,
on their rounds and busiest-direction bytes).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COLS = ["model", "system", "comparison", "network", "phase", "rounds", "online_bytes", "offline_bytes", "comm_s",
        "prompt_len", "gen_tokens", "git_rev"]


def job(model: str, system: str, comparison: str, networks: list[str]) -> list[dict]:
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "cli.main", "run-experiment", f"model={model}", f"system={system}",
               "mode=cost", "prompt_len=128", "gen_tokens=16", f"engine.comparison={comparison}",
               "save_ledger=false", f"output_dir={out}"]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
        met = pd.read_csv(out / "metrics.csv")
    rows = []
    for net in networks:
        for phase in ("prefill", "decode", "total"):
            r = met[(met.network == net) & (met.phase == phase)].iloc[0]
            rows.append(dict(model=model, system=system, comparison=comparison, network=net, phase=phase,
                             rounds=int(r.rounds), online_bytes=int(r.online_bytes),
                             offline_bytes=int(r.offline_bytes), comm_s=round(float(r.comm_s), 3),
                             prompt_len=128, gen_tokens=16))
    return rows


def table(fss_csv: Path, circuit_csv: Path) -> str:
    import pandas as pd

    from comet_core.comm.network import Network

    wan = Network(name="wan-100m", bandwidth_bps=1.0e8, latency_s=8.0e-2)   # conf/network/wan-100m.yaml
    f = pd.read_csv(fss_csv)
    c = pd.read_csv(circuit_csv)
    c = c[(c.phase == "total") & (c.network == "lan")]
    lines = ["| model | system | comparison | rounds | online GB | offline GB | lan s | wan-100m s |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for (model, system), g in f[f.phase == "total"].groupby(["model", "system"], sort=False):
        base = c[(c.model == model) & (c.system == system)]
        if len(base):
            b = base.iloc[0]
            w = wan.comm_seconds(int(b.rounds), int(b.busiest_direction_bytes))
            lines.append(f"| {model} | {system} | circuit ({b.git_rev}) | {int(b.rounds):,} | "
                         f"{b.online_bytes / 1e9:.1f} | {b.offline_bytes / 1e9:.1f} | {b.comm_s:.1f} | {w:.1f} |")
        lan, w = g[g.network == "lan"].iloc[0], g[g.network == "wan-100m"].iloc[0]
        lines.append(f"| {model} | {system} | fss ({lan.git_rev}) | {int(lan.rounds):,} | "
                     f"{lan.online_bytes / 1e9:.1f} | {lan.offline_bytes / 1e9:.1f} | {lan.comm_s:.1f} | {w.comm_s:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", type=Path, help="print the markdown table of this fss CSV and exit")
    ap.add_argument("--circuit", type=Path, default=ROOT / "results" / "end_to_end" / "data.csv")
    ap.add_argument("--out")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--models", default="opt-1.3b,opt-2.7b,opt-6.7b,llama2-7b")
    ap.add_argument("--systems", default="dense,comet")
    ap.add_argument("--comparisons", default="fss")
    ap.add_argument("--networks", default="lan,wan-100m")
    args = ap.parse_args()
    if args.table:
        print(table(args.table, args.circuit))
        return
    if not args.out:
        ap.error("--out is required (or --table)")
    from comet_core.results.machine import refuse_existing
    from comet_core.results.tables import git_revision

    out = Path(args.out)
    if refuse_existing(out, args.overwrite):
        raise SystemExit(2)
    rev = git_revision()
    rows = []
    for model in args.models.split(","):
        for system in args.systems.split(","):
            for cmp in args.comparisons.split(","):
                rows += job(model, system, cmp, args.networks.split(","))
                print(f"{model} {system} {cmp}: done", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLS)
        w.writeheader()
        for r in rows:
            w.writerow({**r, "git_rev": rev})
    tmp.replace(out)


if __name__ == "__main__":
    main()
