#!/usr/bin/env python3
"""The compute model against exact-mode runs of the same shapes (issue 23 item 3).

    python benchmarks/compute_validation.py --out results/calibration/validation.csv [--profile P] [--overwrite]

Runs `comet run-experiment mode=exact` for each case (each in a fresh process, output under a temporary
folder), and writes per case and phase (prefill, decode, total) the measured compute (wall and CPU
seconds, this process: both parties and the dealer), the compute model's seconds for the same run's work
counters priced by the profile (`compute_modelled_s`), and their ratios. Because the counters are the same
in cost mode (tests/test_baselines_run.py), the cost-mode compute_s of these shapes is that model value.
The model prices wall seconds (what exact mode's compute_s measures), so `modelled_over_wall` is its error.
The profile defaults to the committed reference host's (results/calibration/reference-host.json).
Every run's compute_ops.csv (the same op by op: where the model misses) goes to VALIDATION-ops.csv.

    python benchmarks/compute_validation.py --table VALIDATION.csv

prints docs/compute-model.md's table of such a file: per case the total phase's measured and modelled
seconds, the model's ratio to the wall time in total, prefill and decode, and the ratios to the same
model's dense case.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CASES = [   # (name, overrides): the shapes of the examples
    ("shakespeare-opt dense", ["model=shakespeare-opt", "system=dense"]),
    ("shakespeare-opt comet", ["model=shakespeare-opt", "system=comet"]),
    ("shakespeare-opt mpcformer", ["model=shakespeare-opt", "system=mpcformer"]),
    ("shakespeare-opt puma", ["model=shakespeare-opt", "system=puma"]),
    ("shakespeare-opt iron", ["model=shakespeare-opt", "system=iron"]),
    ("tiny-llama dense", ["model=tiny-llama", "system=dense", "model.layers=2", "gen_tokens=4"]),
    ("tiny-llama secformer", ["model=tiny-llama", "system=secformer", "model.layers=2", "gen_tokens=4"]),
    # shapes no benchmark has: OPT-125M's 768-wide layers and its 50,272-entry vocabulary (random weights)
    ("opt-125m dense", ["model=opt-125m", "system=dense", "model.layers=2", "gen_tokens=4"]),
]


def ops_path(out: Path) -> Path:
    """Beside VALIDATION.csv, VALIDATION-ops.csv: every case's compute_ops.csv (column `case` added)."""
    return out.with_name(f"{out.stem}-ops{out.suffix}")


def table(path: Path) -> str:
    """docs/compute-model.md's markdown table of one validation file (module docstring)."""
    import pandas as pd

    v = pd.read_csv(path)
    ph = {p: g.set_index("case") for p, g in v.groupby("phase")}
    tot = ph["total"]
    lines = ["| case | measured wall (s) | measured CPU (s) | modelled (s) | modelled / wall | prefill | decode | "
             "measured / dense's | modelled / dense's |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case in tot.index:
        dense = f"{tot.model[case]} dense"
        lines.append(f"| {case} | {tot.measured_wall_s[case]:.2f} | {tot.measured_cpu_s[case]:.2f} | "
                     f"{tot.modelled_s[case]:.2f} | {tot.modelled_over_wall[case]:.2f} | "
                     f"{ph['prefill'].modelled_over_wall[case]:.2f} | {ph['decode'].modelled_over_wall[case]:.2f} | "
                     f"{tot.measured_wall_s[case] / tot.measured_wall_s[dense]:.2f} | "
                     f"{tot.modelled_s[case] / tot.modelled_s[dense]:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", type=Path, metavar="VALIDATION_CSV",
                    help="print the table of a validation file instead of running")
    ap.add_argument("--out")
    ap.add_argument("--profile", default=str(REPO / "results" / "calibration" / "reference-host.json"))
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--only", nargs="*", help="case names to run (default: all)")
    a = ap.parse_args()
    if a.table:
        print(table(a.table))
        return
    if not a.out:
        ap.error("--out is required (or --table VALIDATION_CSV)")
    sys.path.insert(0, str(REPO))
    from comet_core.results.machine import refuse_existing

    if refuse_existing(Path(a.out), a.overwrite) or refuse_existing(ops_path(Path(a.out)), a.overwrite):
        sys.exit(2)
    import pandas as pd

    env = {**os.environ, "PYTHONPATH": str(REPO), "COMET_COMPUTE_PROFILE": str(Path(a.profile).resolve())}
    rows, ops = [], []
    with tempfile.TemporaryDirectory(prefix="compute-validation-") as tmp:
        for i, (name, over) in enumerate(CASES):
            if a.only and name not in a.only:
                continue
            out = Path(tmp) / f"run{i}"
            r = subprocess.run([sys.executable, "-m", "cli.main", "run-experiment", "mode=exact", *over,
                                f"output_dir={out}"], cwd=REPO, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                print(f"{name}: failed: {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            ops.append(pd.read_csv(out / "compute_ops.csv").assign(case=name))
            m = pd.read_csv(out / "metrics.csv")
            m = m[m.network == m.network.iloc[0]]
            load = max(os.getloadavg()[0], 0.0)
            for t in m.itertuples(index=False):
                if t.phase not in ("prefill", "decode", "total"):
                    continue
                rows.append(dict(case=name, model=t.model, system=t.system, layers=t.layers,
                                 prompt_tokens=t.prompt_tokens, gen_tokens=t.gen_tokens, phase=t.phase,
                                 rounds=t.rounds, measured_wall_s=t.compute_s, measured_cpu_s=t.compute_cpu_s,
                                 modelled_s=t.compute_modelled_s, modelled_over_wall=t.compute_modelled_s / t.compute_s,
                                 modelled_over_cpu=t.compute_modelled_s / t.compute_cpu_s,
                                 profile=t.compute_profile, load_avg_1min_after=round(load, 2), git_rev=t.git_rev))
            tot = rows[-1]
            print(f"{name}: measured {tot['measured_wall_s']:.2f} s wall / {tot['measured_cpu_s']:.2f} s CPU, "
                  f"modelled {tot['modelled_s']:.2f} s ({tot['modelled_over_wall']:.2f}x wall)", flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    pd.DataFrame(rows).to_csv(tmp_out, index=False)
    ops_out = ops_path(out)
    tmp_ops = ops_out.with_name(f".{ops_out.name}.tmp")
    pd.concat(ops, ignore_index=True).to_csv(tmp_ops, index=False)
    os.replace(tmp_ops, ops_out)
    os.replace(tmp_out, out)
    print(out, ops_out)


if __name__ == "__main__":
    main()
