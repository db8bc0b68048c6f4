#!/usr/bin/env python3
"""End-to-end runs of every system through the CLI: exact mode on the default model and cost mode at
paper scale, timed, with the load average (the development machine is shared: say so with the numbers).

For each system (dense and the five baselines):
  exact: comet run-experiment system=<s>                    (shakespeare-opt, the default prompt, 8 tokens)
  cost:  comet run-experiment system=<s> model=opt-6.7b mode=cost prompt_len=128 gen_tokens=16
Each run's metrics.csv (lan, total) and generation.csv are summarised into one row: wall seconds of the
whole command (process start to exit), online bytes (measured / model), rounds, modelled communication
time on lan, and for exact runs whether the private tokens equal the plaintext reference with the same
approximations (`tokens_match`, `max_logit_err`) and how many equal the unmodified model's
(`tokens_equal_dense`).

The table records each run's git revision, and fingerprint.json beside it the protocols' fingerprints
(experiments/fingerprint.py).

Usage: python benchmarks/baseline_runs.py [--systems dense,mpcformer,...] [--modes exact,cost]
                                          [--out results/baselines/runs.csv] [--overwrite]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from comet_core.results.machine import refuse_existing  # noqa: E402
SYSTEMS = ("dense", "mpcformer", "secformer", "puma", "iron", "bolt")
MODES = {
    "exact": [],
    "cost": ["model=opt-6.7b", "mode=cost", "prompt_len=128", "gen_tokens=16"],
}


def one(system: str, mode: str, work: Path) -> dict:
    out = work / f"{system}-{mode}"
    args = [sys.executable, "-m", "cli.main", "run-experiment", f"system={system}", *MODES[mode],
            "save_ledger=false", f"output_dir={out}"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"error: {' '.join(args[3:])} failed:\n{r.stderr[-2000:]}")
    m = pd.read_csv(out / "metrics.csv")
    tot = m[(m.network == m.network.iloc[0]) & (m.phase == "total")].iloc[0]
    row = dict(system=system, mode=mode, model=tot.model, prompt_tokens=int(tot.prompt_tokens),
               gen_tokens=int(tot.gen_tokens), wall_s=round(wall, 2), network=tot.network,
               online_bytes=int(tot.online_bytes), online_bytes_measured=int(tot.online_bytes_measured),
               online_bytes_model=int(tot.online_bytes_model), offline_bytes=int(tot.offline_bytes),
               rounds=int(tot.rounds), rounds_model=int(tot.rounds_model), comm_s=float(tot.comm_s),
               compute_s=float(tot.compute_s), load_avg_1m_before=load0, load_avg_1m_after=os.getloadavg()[0],
               git_rev=tot.git_rev)
    if mode == "exact":
        g = pd.read_csv(out / "generation.csv")
        priv = g[g.source == "private"].token_id.tolist()
        ref = "plaintext_dense" if "plaintext_dense" in set(g.source) else "plaintext"
        dense = g[g.source == ref].token_id.tolist()
        row.update(tokens_match=bool(tot.tokens_match), max_logit_err=float(tot.max_logit_err),
                   tokens_equal_dense=sum(a == b for a, b in zip(priv, dense)),
                   private_text="".join(g[g.source == "private"].text.astype(str)))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--modes", default="exact,cost")
    ap.add_argument("--out", default="results/baselines/runs.csv")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    out = Path(a.out)
    if refuse_existing(out, a.overwrite):
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in a.modes.split(","):
            for s in a.systems.split(","):
                rows.append(one(s, mode, Path(tmp)))
                print(f"{s} {mode}: {rows[-1]['wall_s']} s", file=sys.stderr)
    df = pd.DataFrame(rows)
    df["cpus"] = os.cpu_count()
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    from experiments.fingerprint import stamp   # which protocols priced it (tests/test_fingerprint.py)

    stamp(out, reprice=f"python benchmarks/baseline_runs.py --out {a.out} --overwrite")
    print(out.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
