#!/usr/bin/env python3
"""Comet's speedup and communication reduction over iron and bolt: their OT flavours and their linear layers
(issue 26), with modelled compute, against the committed Comet rows of results/end_to_end/data.csv.

Steps:
  1. Unless --from-runs: `comet run-experiment model=<m> system=<iron|bolt> network=lan mode=cost prompt_len=128
     gen_tokens=16 save_ledger=false system.ot=<iknp|silent> system.linear=<beaver|he>` for end_to_end's four
     models, into --runs, priced by the reference compute profile (COMET_COMPUTE_PROFILE, as end_to_end).
  2. Per run (phase total, lan): speedup = its total_s / Comet's (communication and modelled compute),
     comm_speedup = its comm_s / Comet's, comm_reduction = its online_bytes / Comet's; beside them the
     ratio of the committed iron/bolt row (linear=beaver, ot=iknp: end_to_end's setting).
  3. Write --out (default results/iron_bolt_restated/restated.csv; refuses to overwrite without --overwrite).
Usage: python experiments/restate_iron_bolt.py [--runs DIR | --from-runs DIR] [--out FILE] [--overwrite]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
MODELS = ("opt-1.3b", "opt-2.7b", "opt-6.7b", "llama2-7b")
LINEARS = ("beaver", "he")
OTS = ("iknp", "silent")
PROFILE = REPO / "results" / "calibration" / "reference-host.json"


def run_all(root: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), COMET_COMPUTE_PROFILE=str(PROFILE))
    for model in MODELS:
        for system in ("iron", "bolt"):
            for linear in LINEARS:
                for ot in OTS:
                    args = [sys.executable, "-m", "cli.main", "run-experiment", f"model={model}", f"system={system}",
                            "network=lan", "mode=cost", "prompt_len=128", "gen_tokens=16", "save_ledger=false",
                            f"system.ot={ot}", f"system.linear={linear}",
                            f"output_dir={root / f'{model}_{system}_{linear}_{ot}'}"]
                    p = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env)
                    if p.returncode != 0:
                        raise SystemExit(f"error: {' '.join(args[4:])}: {p.stderr.strip().splitlines()[-1:]}")


def table(root: Path) -> pd.DataFrame:
    d = pd.read_csv(REPO / "results" / "end_to_end" / "data.csv")
    d = d[(d.phase == "total") & (d.network == "lan")]
    comet = d[d.system == "comet"].set_index("model")
    old = d[d.system.isin(["iron", "bolt"])].set_index(["model", "system"])
    rows = []
    for f in sorted(root.glob("*/metrics.csv")):
        m = pd.read_csv(f)
        m = m[(m.phase == "total") & (m.network == "lan")].iloc[0]
        linear, ot = f.parent.name.rsplit("_", 2)[-2:]
        c, o = comet.loc[m.model], old.loc[(m.model, m.system)]
        rows.append(dict(model=m.model, system=m.system, linear=linear, ot=ot, mode=m["mode"],
                         online_bytes=int(m.online_bytes), busiest_direction_bytes=int(m.busiest_direction_bytes),
                         comm_s=round(float(m.comm_s), 2), compute_s=round(float(m.compute_s), 2),
                         total_s=round(float(m.total_s), 2), compute_source=m.compute_source,
                         speedup=round(m.total_s / c.total_s, 2), comm_speedup=round(m.comm_s / c.comm_s, 2),
                         comm_reduction=round(m.online_bytes / c.online_bytes, 2),
                         committed_speedup=round(o.total_s / c.total_s, 2),
                         git_rev=m.git_rev, comet_git_rev=c.git_rev if "git_rev" in c else ""))
    return pd.DataFrame(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=f"/tmp/restate_iron_bolt/{dt.datetime.now():%Y-%m-%d_%H-%M-%S}")
    ap.add_argument("--from-runs", help="skip step 1: read the runs in this folder")
    ap.add_argument("--out", default=str(REPO / "results" / "iron_bolt_restated" / "restated.csv"))
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args()
    out = Path(a.out)
    if out.exists() and not a.overwrite:
        print(f"error: {out} exists; pass --overwrite or choose another --out", file=sys.stderr)
        return 2
    root = Path(a.from_runs or a.runs)
    if not a.from_runs:
        run_all(root)
    t = table(root)
    if t.empty:
        print(f"error: no runs in {root}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    t.to_csv(tmp, index=False)
    tmp.replace(out)
    print(t.to_string(index=False))
    print(out.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
