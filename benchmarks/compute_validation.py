#!/usr/bin/env python3
"""The compute model against exact-mode runs of the same shapes (issue 23 item 3).

    python benchmarks/compute_validation.py --out results/calibration/validation.csv [--profile P] [--overwrite]

Runs `comet run-experiment mode=exact` for each case (each in a fresh process, output under a temporary
folder), and writes per case and phase (prefill, decode, total) the measured compute (wall and CPU
seconds, this process: both parties and the dealer), the compute model's seconds for the same run's work
counters priced by the profile (`compute_modelled_s`), and their ratios. Because the counters are the same
in cost mode (tests/test_baselines_run.py), the cost-mode compute_s of these shapes is that model value.
The profile defaults to the committed reference host's (results/calibration/reference-host.json).

    python benchmarks/compute_validation.py --table REFERENCE.csv QUIET.csv

prints docs/compute-model.md's table of two such files (one sitting, two profiles): per case's total phase
the measured CPU (REFERENCE's runs), each profile's modelled seconds and its ratio to its own runs' CPU, and
the measured and modelled ratios to the same model's dense case.
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
]


def table(reference: Path, quiet: Path) -> str:
    """The markdown table of two validation files (module docstring)."""
    import pandas as pd

    ref, qui = (pd.read_csv(p).query("phase == 'total'").set_index("case") for p in (reference, quiet))
    lines = ["| case (total phase) | measured CPU (s) | modelled, reference (s) | reference / CPU | modelled, quiet (s) | "
             "quiet / CPU | measured / dense's | reference / dense's | quiet / dense's |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case in ref.index:
        dense = f"{ref.model[case]} dense"
        lines.append(f"| {case} | {ref.measured_cpu_s[case]:.2f} | {ref.modelled_s[case]:.2f} | "
                     f"{ref.modelled_over_cpu[case]:.2f} | {qui.modelled_s[case]:.2f} | {qui.modelled_over_cpu[case]:.2f} | "
                     f"{ref.measured_cpu_s[case] / ref.measured_cpu_s[dense]:.2f} | "
                     f"{ref.modelled_s[case] / ref.modelled_s[dense]:.2f} | {qui.modelled_s[case] / qui.modelled_s[dense]:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", nargs=2, type=Path, metavar=("REFERENCE", "QUIET"),
                    help="print the table of two validation files instead of running")
    ap.add_argument("--out")
    ap.add_argument("--profile", default=str(REPO / "results" / "calibration" / "reference-host.json"))
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--only", nargs="*", help="case names to run (default: all)")
    a = ap.parse_args()
    if a.table:
        print(table(*a.table))
        return
    if not a.out:
        ap.error("--out is required (or --table REFERENCE QUIET)")
    sys.path.insert(0, str(REPO))
    from comet_core.results.machine import refuse_existing

    if refuse_existing(Path(a.out), a.overwrite):
        sys.exit(2)
    import pandas as pd

    env = {**os.environ, "PYTHONPATH": str(REPO), "COMET_COMPUTE_PROFILE": str(Path(a.profile).resolve())}
    rows = []
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
                  f"modelled {tot['modelled_s']:.2f} s ({tot['modelled_over_cpu']:.2f}x CPU)", flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    pd.DataFrame(rows).to_csv(tmp_out, index=False)
    os.replace(tmp_out, out)
    print(out)


if __name__ == "__main__":
    main()
