#!/usr/bin/env python3
"""BERT-base (128 tokens, one encoder pass) priced for iron and bolt, next to their papers' totals.

Steps:
  1. `comet run-experiment model=bert-base mode=cost prompt_len=128 gen_tokens=1` for iron, bolt, bolt with
     `system.word_elimination=true`, iron and bolt with `system.linear=he` (their HE products priced by
     their ciphertexts and keys), under `system.ot=iknp` (their code) and some under `system.ot=silent` (RUNS), into
     --runs (default /tmp/bert_base_runs/<stamp>; never inside results/). The comparison takes BOLT as its
     paper ran it (word elimination, HE linear layers) and Iron as its paper ran it (its coefficient-packed
     HE linear layers, `system.linear=he`).
  2. From each run's ops.csv: bytes by operator group (the 12 layers' softmax, GeLU, LayerNorms, linear
     layers, word elimination; outside the layers the one-hot embedding and LM head, which BERT replaces
     by a lookup before the protocol and a pooler + classifier) and the totals.
  3. Write --out (default results/bert_base/): totals.csv, breakdown.csv, comparison.csv (ours against
     experiments/expected/bert_base.csv, within its tolerance or not). Refuses to overwrite without --overwrite.
Usage: python experiments/bert_base.py [--out results/bert_base] [--overwrite]
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
RUNS = [  # (system, system.ot, word elimination, system.linear)
    ("iron", "iknp", False, "beaver"), ("iron", "iknp", False, "he"),
    ("bolt", "iknp", False, "beaver"), ("bolt", "iknp", True, "beaver"),
    ("bolt", "iknp", False, "he"), ("bolt", "iknp", True, "he"),
    ("iron", "silent", False, "beaver"), ("iron", "silent", False, "he"),
    ("bolt", "silent", False, "beaver"), ("bolt", "silent", True, "he")]
GROUPS = {"attn.softmax": "softmax", "ffn.act": "gelu", "attn.norm": "layernorm", "ffn.norm": "layernorm",
          "word_elim": "word_elimination"}


def group(op: str, layer: int) -> str:
    if layer < 0:
        return "outside_layers." + op.split(".")[0]
    return GROUPS.get(op, "linear")


def run(system: str, ot: str, we: bool, linear: str, out: Path) -> Path:
    args = [sys.executable, "-m", "cli.main", "run-experiment", "model=bert-base", f"system={system}", "mode=cost",
            "prompt_len=128", "gen_tokens=1", f"system.ot={ot}", f"system.linear={linear}", f"output_dir={out}"]
    if we:
        args.append("system.word_elimination=true")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env)
    if p.returncode != 0:
        raise SystemExit(f"error: {' '.join(args[3:])}: {p.stderr.strip().splitlines()[-1:]}")
    return Path(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "results" / "bert_base"))
    ap.add_argument("--runs", default=f"/tmp/bert_base_runs/{dt.datetime.now():%Y-%m-%d_%H-%M-%S}")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args()
    out = Path(a.out)
    if (out / "totals.csv").exists() and not a.overwrite:
        print(f"error: {out}/totals.csv exists; pass --overwrite or choose another --out", file=sys.stderr)
        return 2
    totals, parts = [], []
    for system, ot, we, linear in RUNS:
        label = system + ("+we" if we else "") + ("+he" if linear == "he" else "")
        d = run(system, ot, we, linear, Path(a.runs) / f"{label}_{ot}")
        ops = pd.read_csv(d / "ops.csv")
        m = pd.read_csv(d / "metrics.csv")
        m = m[(m.phase == "total") & (m.network == m.network.iloc[0])].iloc[0]
        ops["group"] = [group(o, int(l)) for o, l in zip(ops.op, ops.layer)]
        g = ops.groupby("group").online_bytes.sum()
        for k, v in g.items():
            parts.append(dict(system=label, ot=ot, group=k, online_bytes=int(v)))
        layers = int(ops[ops.layer >= 0].online_bytes.sum())
        totals.append(dict(system=label, ot=ot, linear=linear, word_elimination=we, online_bytes=int(m.online_bytes), layers_bytes=layers,
                           model_bytes=int(m.online_bytes_model), rounds=int(m.rounds),
                           busiest_direction_bytes=int(m.busiest_direction_bytes), git_rev=m.git_rev, run=str(d)))
    t = pd.DataFrame(totals)
    exp = pd.read_csv(REPO / "experiments" / "expected" / "bert_base.csv")
    ik = t[t.ot == "iknp"].set_index("system")
    bolt = ik.loc["bolt+we+he", "online_bytes"]          # BOLT as its paper ran it: W.E., HE linear layers
    iron = ik.loc["iron+he", "online_bytes"]              # Iron as its paper ran it: HE linear layers
    ours = {"bolt_we_total_gb": bolt / 1e9,
            "iron_total_gb": iron / 1e9,
            "bolt_code_measured_gib": bolt / 2 ** 30,
            "iron_over_bolt_we": iron / bolt}
    cmp = exp[["metric", "paper_value_lo", "unit", "tolerance"]].copy()
    cmp["ours"] = cmp.metric.map(ours).round(3)
    cmp["rel_gap"] = (cmp.ours / cmp.paper_value_lo - 1).round(3)
    cmp["status"] = ["ok" if abs(g) <= tol else "OUTSIDE" for g, tol in zip(cmp.rel_gap, cmp.tolerance)]
    out.mkdir(parents=True, exist_ok=True)
    for name, df in (("totals.csv", t), ("breakdown.csv", pd.DataFrame(parts)), ("comparison.csv", cmp)):
        tmp = out / (name + ".tmp")
        df.to_csv(tmp, index=False)
        tmp.replace(out / name)
    print(cmp.to_string(index=False))
    print(out.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
