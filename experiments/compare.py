"""`comet compare RUN [RUN ...]`: runs side by side, with ratios against a baseline run.

1. ``load_runs``: each RUN must be a complete run folder (``COMPLETE`` and ``metrics.csv``); a missing or
   unfinished one is a one-line CometError before anything is printed.
2. ``baseline``: the first run with ``system=dense`` when there is one, else the first run.
3. ``compare_frame``: one row per network x phase x run from each ``metrics.csv``: online and offline
   bytes, rounds, modelled comm, measured compute, total, and each as a ratio run / baseline (same
   network and phase). ``--csv`` prints this frame as it is (bytes and seconds).
4. ``compare_text``: the same for people (kB/MB/GB, us/ms/s/min, ratios as 0.41x): every phase on the
   first run's network, and the total of every other network (``networks="all"``: every phase of each;
   ``"total"``: the first network's total only, for long sweeps).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from comet_core.errors import CometError

VALUES = ("online_bytes", "offline_bytes", "rounds", "comm_s", "compute_s", "total_s")
MARKER = "COMPLETE"


def load_run(path: Path) -> pd.DataFrame:
    """A complete run's metrics.csv (one-line CometError otherwise)."""
    p = Path(path)
    if not p.exists():
        raise CometError(f"run folder {p} does not exist; give the folder a run printed as its last line")
    if not p.is_dir():
        raise CometError(f"{p} is not a folder; give a run folder (the last line `comet run-experiment` printed)")
    if not (p / MARKER).is_file():
        if (p / "multirun.yaml").is_file() or any(c.is_dir() and c.name.isdigit() for c in p.iterdir()):
            raise CometError(f"{p} is a sweep folder; compare its job folders: comet compare {p}/0 {p}/1 ...")
        raise CometError(f"{p} is not a complete run (no {MARKER} marker: the run was interrupted, is still "
                         "running, or this is not a run folder)")
    if not (p / "metrics.csv").is_file():
        raise CometError(f"{p} has no metrics.csv; it is not a run-experiment folder")
    try:
        m = pd.read_csv(p / "metrics.csv")
    except (OSError, ValueError) as e:
        raise CometError(f"{p / 'metrics.csv'} cannot be read ({e})") from None
    missing = [c for c in ("network", "phase", "system", "model", *VALUES) if c not in m.columns]
    if missing:
        raise CometError(f"{p / 'metrics.csv'} lacks columns {', '.join(missing)}; is it a run-experiment table?")
    return m


def load_runs(paths: list[Path]) -> list[tuple[Path, pd.DataFrame]]:
    if not paths:
        raise CometError("give at least one run folder: comet compare RUN [RUN ...]")
    return [(Path(p).resolve(), load_run(Path(p))) for p in paths]


def baseline(runs: list[tuple[Path, pd.DataFrame]]) -> int:
    """Index of the run the ratios divide by: the first system=dense run, else the first."""
    return next((i for i, (_, m) in enumerate(runs) if str(m.system.iloc[0]) == "dense"), 0)


def _ratio(a: float, b: float) -> float:
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return math.nan
    if b == 0:
        return 1.0 if a == 0 else math.inf
    return a / b


def compare_frame(runs: list[tuple[Path, pd.DataFrame]]) -> pd.DataFrame:
    """One row per network x phase x run with the values and their ratios to the baseline run."""
    base = baseline(runs)
    b = runs[base][1].set_index(["network", "phase"])
    rows = []
    for i, (path, m) in enumerate(runs):
        for r in m.itertuples(index=False):
            key = (r.network, r.phase)
            row = dict(network=r.network, phase=r.phase, run=i + 1, system=r.system, model=r.model,
                       mode=getattr(r, "mode", ""), path=str(path), baseline=base + 1)
            for v in VALUES:
                row[v] = getattr(r, v)
            for v in VALUES:
                ref = float(b.loc[key, v]) if key in b.index else math.nan
                row[f"{v}_ratio"] = _ratio(float(getattr(r, v)), ref)
            rows.append(row)
    df = pd.DataFrame(rows)
    nets = list(dict.fromkeys(df.network))
    phases = list(dict.fromkeys(df.phase))
    df["_n"], df["_p"] = df.network.map(nets.index), df.phase.map(phases.index)
    return df.sort_values(["_n", "_p", "run"], kind="stable").drop(columns=["_n", "_p"]).reset_index(drop=True)


def _fmt_ratio(x: float) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "-"          # the baseline is 0 here (e.g. dense has no setup phase)
    return f"{x:.3g}x" if x < 1000 else f"{x:,.0f}x"


def _grid(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if j >= 3 else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths)))
                     .rstrip() for r in rows)


VIEWS = ("default", "all", "total")


def compare_text(df: pd.DataFrame, networks: str = "default") -> str:
    """The table for people; ``networks``: default (every phase of the first network, the total of the
    others), all (every phase of every network) or total (the total of the first network: long sweeps)."""
    from comet_core.results.units import fmt_bytes, fmt_seconds

    runs = df.drop_duplicates("run")[["run", "system", "model", "mode", "path"]]
    base = int(df.baseline.iloc[0])
    first_net = df.network.iloc[0]
    shown = {"all": df, "total": df[(df.network == first_net) & (df.phase == "total")]}.get(
        networks, df[(df.network == first_net) | (df.phase == "total")])
    lines = [f"run {r.run}: system={r.system} model={r.model} mode={r.mode}  {r.path}" for r in runs.itertuples()]
    why = "system=dense" if str(runs[runs.run == base].system.iloc[0]) == "dense" else "the first run"
    lines.append(f"baseline b = run {base} ({why}); <value>/b = this run / the baseline at the same network and "
                 "phase; comm is modelled from each run's ledger, compute measured (mode=exact) or modelled (mode=cost)")
    head = ("network", "phase", "run", "online", "offline", "rounds", "comm", "compute", "total",
            "online/b", "offline/b", "rounds/b", "comm/b", "compute/b", "total/b")
    rows = [head]
    for r in shown.itertuples(index=False):
        rows.append((str(r.network), str(r.phase), f"{r.run} {r.system}", fmt_bytes(r.online_bytes),
                     fmt_bytes(r.offline_bytes), str(int(r.rounds)), fmt_seconds(r.comm_s), fmt_seconds(r.compute_s),
                     fmt_seconds(r.total_s), *(_fmt_ratio(getattr(r, f"{v}_ratio")) for v in VALUES)))
    lines.append(_grid(rows))
    if networks == "default" and df.network.nunique() > 1:
        lines.append(f"(every phase of {first_net}, the total of the other networks; --networks all shows every phase)")
    if networks == "total":
        lines.append(f"(phase total on {first_net} only; `comet compare --networks all <job folders>` shows every "
                     "phase and network)")
    return "\n".join(lines)
