"""The engine beside its anchors (CrypTen 0.4.1, SecretFlow-SPU 0.9.5) from one sitting: one table.

A *sitting* (``benchmarks/bench_sitting.py``, ``make bench``) runs the three systems one after the other
on the same machine and leaves each system's own output in one folder. This module turns those outputs
into one tidy table, ``anchors.csv``, and that table into the README's performance section:

1. ``engine_rows`` / ``crypten_rows`` / ``spu_rows``: each system's output -> rows of ``COLUMNS``
   (seconds = median over the timed reps, per rep the slower party; bytes = both directions between
   the two parties; rounds = the system's own count of one op).
2. ``combine``: the rows of one sitting + the machine's CPU line -> ``anchors.csv``; every anchor row
   carries ``engine_over_anchor`` = engine seconds / anchor seconds (below 1: the engine is faster),
   ``speedup`` = its inverse, the issue's target speedup and whether it is met.
3. ``performance_section`` renders the README section from that table, and ``replace_section`` puts it
   between the README's markers.

A ratio is only ever formed between rows of the same sitting: a stored number from another host is never
a denominator (CrypTen's int64 matmul speed moves ~40x between CPUs with and without AVX-512).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from comet_core.errors import CometError

SYSTEMS = ("engine", "crypten", "spu")
LABELS = {"engine": "engine", "crypten": "CrypTen 0.4.1", "spu": "SecretFlow-SPU 0.9.5 (SEMI2K)"}
OPS = ("matmul", "relu", "softmax", "ffn_decode")

# Issue 15's targets: the engine at least this many times faster than the anchor, same sitting.
TARGETS = {
    ("crypten", "matmul"): 10.0, ("crypten", "relu"): 10.0, ("crypten", "softmax"): 10.0,
    ("crypten", "ffn_decode"): 3.0,
    ("spu", "matmul"): 2.0, ("spu", "relu"): 3.0, ("spu", "softmax"): 3.0, ("spu", "ffn_decode"): 3.0,
}

COLUMNS = ["sitting", "op", "system", "shape", "seconds", "bytes", "rounds", "max_abs_err",
           "engine_over_anchor", "speedup", "target_speedup", "target_met", "reps", "processes",
           "threads_per_process", "cpu_model", "vector_ext", "cpus", "malloc_tunables", "load_avg_1m_before",
           "load_avg_1m_after",
           "date", "versions"]

MARK_START = "<!-- performance:start"
MARK_END = "<!-- performance:end -->"


def _f(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def engine_rows(df: pd.DataFrame) -> list[dict]:
    """Rows of ``benchmarks/engine_ops.py``'s CSV (one process, both parties, in-process channel)."""
    out = []
    for r in df.to_dict("records"):
        ver = f"comet {r.get('comet_revision', 'unknown')}; torch {r.get('torch', '?')}"
        out.append(dict(op=r["op"], system="engine", shape=r.get("shape", ""), seconds=_f(r["seconds"]),
                        bytes=r["online_bytes"], rounds=r["rounds"], max_abs_err=_f(r.get("max_abs_err")),
                        reps=r.get("reps"), processes=1, threads_per_process=r.get("threads"),
                        load_avg_1m_before=_f(r.get("load_avg_1m_before")),
                        load_avg_1m_after=_f(r.get("load_avg_1m_after")), date=r.get("timestamp", ""),
                        versions=ver))
    return out


def crypten_rows(df: pd.DataFrame, meta: dict) -> list[dict]:
    """Rows of the CrypTen harness (its ``--csv`` table and ``--json`` detail; 2 processes, gloo)."""
    ver = f"crypten {meta.get('crypten', '?')}; torch {meta.get('torch', '?')}; provider {meta.get('provider', '?')}"
    return [dict(op=r["case"], system="crypten", shape=r.get("shape", ""), seconds=_f(r["seconds_median"]),
                 bytes=r["bytes_per_party"], rounds=r["rounds"], max_abs_err=_f(r.get("max_abs_err")),
                 reps=meta.get("reps"), processes=2, threads_per_process=meta.get("threads_per_party"),
                 load_avg_1m_before=_f(meta.get("load_avg_1m_before")),
                 load_avg_1m_after=_f(meta.get("load_avg_1m_after")), date=meta.get("started_utc", ""),
                 versions=ver)
            for r in df.to_dict("records")]


def spu_rows(records: list[dict]) -> list[dict]:
    """Rows of the SPU harness's JSON (one record per op; 2 processes, brpc link on loopback).
    rounds = party 0's send actions (SPU's profile; an upper bound on rounds)."""
    return [dict(op=r["op"], system="spu", shape=r.get("shape", ""), seconds=_f(r["seconds_median"]),
                 bytes=r["bytes_both_directions"], rounds=r["rounds_p0_send_actions"],
                 max_abs_err=_f(r.get("max_abs_err")), reps=len(r.get("rep_seconds_max_of_parties", [])) or None,
                 processes=2 if r.get("runtime", "").startswith("2 processes") else 1,
                 threads_per_process=r.get("threads_per_party"), load_avg_1m_before=_f(r.get("load_1m_before")),
                 load_avg_1m_after=_f(r.get("load_1m_after")), date=r.get("timestamp", ""),
                 versions=f"spu {r.get('spu', '?')}; {r.get('protocol', '?')} {r.get('field', '')}; "
                          f"fxp {r.get('fxp_fraction_bits', '?')}")
            for r in records]


def combine(rows: list[dict], sitting: str, cpu_model: str, vector_ext: str, cpus: int | None = None,
            malloc_tunables: str = "") -> pd.DataFrame:
    """One sitting's rows -> the ``anchors.csv`` table (``COLUMNS``), engine first, then the anchors.

    On each anchor row: engine_over_anchor = engine seconds / anchor seconds of the same op,
    speedup = anchor seconds / engine seconds, target_speedup from ``TARGETS`` and target_met
    (speedup >= target). Empty where the engine did not run that op.
    """
    if not rows:
        raise CometError("no benchmark rows to combine: did any system run? (see the sitting's log)")
    df = pd.DataFrame(rows)
    dup = df[df.duplicated(["op", "system"], keep=False)]
    if not dup.empty:
        raise CometError(f"two rows for the same op and system: {sorted(set(zip(dup.op, dup.system)))}")
    engine = {r["op"]: r["seconds"] for r in rows if r["system"] == "engine"}
    df["sitting"], df["cpu_model"], df["vector_ext"], df["cpus"] = sitting, cpu_model, vector_ext, cpus
    df["malloc_tunables"] = malloc_tunables   # GLIBC_TUNABLES of the sitting: every system ran under it
    ratio, speed, target, met = [], [], [], []
    for r in df.to_dict("records"):
        e = engine.get(r["op"], math.nan) if r["system"] != "engine" else math.nan
        ok = not math.isnan(e) and e > 0 and r["seconds"] > 0
        ratio.append(e / r["seconds"] if ok else math.nan)
        speed.append(r["seconds"] / e if ok else math.nan)
        t = TARGETS.get((r["system"], r["op"]), math.nan)
        target.append(t)
        met.append(pd.NA if not ok or math.isnan(t) else bool(r["seconds"] / e >= t))
    df["engine_over_anchor"], df["speedup"], df["target_speedup"] = ratio, speed, target
    df["target_met"] = pd.array(met, dtype="boolean")
    order = {s: i for i, s in enumerate(SYSTEMS)}
    ops = {o: i for i, o in enumerate(OPS)}
    df = df.assign(_s=df.system.map(lambda s: order.get(s, 99)), _o=df.op.map(lambda o: ops.get(o, 99)))
    df = df.sort_values(["_s", "_o", "op"], kind="stable").drop(columns=["_s", "_o"])
    for c in COLUMNS:
        if c not in df:
            df[c] = pd.NA
    return df[COLUMNS].reset_index(drop=True)


def read_table(path: Path) -> pd.DataFrame:
    """A combined table (``anchors.csv`` / ``results/engine_ops/engine_vs_anchors.csv``); refuses anything else in one line."""
    if not Path(path).is_file():
        raise CometError(f"{path} not found: run `make bench` (it writes outputs/bench/<stamp>/anchors.csv)")
    df = pd.read_csv(path)
    missing = [c for c in ("op", "system", "seconds", "sitting") if c not in df.columns]
    if missing:
        raise CometError(f"{path} is not a sitting's combined table (no column {', '.join(missing)}): "
                         "publish one with `python benchmarks/bench_publish.py outputs/bench/<stamp>`")
    return df


def _n(k, word: str, plural: str = "s") -> str:
    k = int(k)
    return f"{k} {word}{'' if k == 1 else plural}"


def _s(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f} s"


def _x(speedup, target) -> str:
    if speedup is None or (isinstance(speedup, float) and math.isnan(speedup)):
        return "not run"
    met = "met" if speedup >= target else "**not met**"
    return f"{speedup:.2f}x (target >= {target:g}x: {met})"


def performance_section(df: pd.DataFrame, source: str = "results/engine_ops/engine_vs_anchors.csv") -> str:
    """The README's performance section (markdown, without the markers) from a combined table."""
    sittings = sorted(set(df["sitting"].astype(str)))
    if len(sittings) != 1:
        raise CometError(f"{source} mixes sittings {sittings}: one sitting per table (ratios within it only)")
    by = {(r["system"], r["op"]): r for r in df.to_dict("records")}
    ops = [o for o in OPS if any((s, o) in by for s in SYSTEMS)] + sorted(
        {o for o in df.op if o not in OPS})
    loads = pd.concat([df.load_avg_1m_before, df.load_avg_1m_after]).astype(float)
    first = df.iloc[0]
    seen = {}
    for r in df.to_dict("records"):
        seen.setdefault(r["system"], r)
    threads = {s: seen[s] for s in SYSTEMS if s in seen}  # how each system ran (first row of each)
    run = "; ".join(f"{LABELS[s]}: {_n(r['processes'], 'process', 'es')} x {_n(r['threads_per_process'], 'thread')}, "
                    f"{_n(r['reps'], 'timed rep')}" for s, r in threads.items())
    lines = [
        f"One sitting ({sittings[0]}): {run}. CPU: {first['cpu_model']} ({first['vector_ext'] or 'no AVX'}); "
        f"1-minute load average {loads.min():.2f}-{loads.max():.2f} during the sitting. Median seconds of one op "
        "(per rep the slower party), the dealer's work inside the op in every system; x = anchor seconds / "
        "engine seconds, same sitting only."
        + (f" Every system ran with GLIBC_TUNABLES={tun} (glibc's allocator; `make bench MALLOC=` to change)."
           if (tun := str(first.get("malloc_tunables", "") or "")) and tun != "nan" else ""),
        "",
        "| op | engine | CrypTen | engine vs CrypTen | SPU | engine vs SPU |",
        "|---|---:|---:|---|---:|---|",
    ]
    for op in ops:
        e, c, s = by.get(("engine", op)), by.get(("crypten", op)), by.get(("spu", op))
        cells = [op, _s(e["seconds"] if e else None)]
        for sysname, row in (("crypten", c), ("spu", s)):
            t = TARGETS.get((sysname, op), math.nan)
            cells.append(_s(row["seconds"] if row else None))
            sp = _f(row["speedup"]) if row is not None else math.nan
            cells.append(_x(sp, t) if not math.isnan(t) else (f"{sp:.2f}x" if not math.isnan(sp) else "not run"))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Bytes (both directions between the parties) and rounds of one op:", "",
              "| op | " + " | ".join(LABELS[s] for s in SYSTEMS) + " |", "|---|" + "---:|" * len(SYSTEMS)]
    for op in ops:
        cells = [op]
        for sysname in SYSTEMS:
            r = by.get((sysname, op))
            cells.append("-" if r is None else f"{int(r['bytes']):,} B, {int(r['rounds'])} rounds")
        lines.append("| " + " | ".join(cells) + " |")
    cpus = _f(first.get("cpus"))
    if not math.isnan(cpus) and loads.max() > cpus:
        lines += ["", f"**The machine was loaded**: the load average ({loads.max():.2f}) exceeded its {int(cpus)} CPUs "
                  "during this sitting, so other work competed with the timed ops; rerun on a quiet machine."]
    missing = [LABELS[s] for s in SYSTEMS if s not in threads]
    if missing:
        lines += ["", f"Not measured in this sitting: {', '.join(missing)} (its virtualenv did not install or "
                  "its run failed; see the sitting's `sitting.json`)."]
    lines += ["", f"From `{source}`: `make bench` (one sitting into `outputs/bench/<stamp>/`), then "
              "`python benchmarks/bench_publish.py outputs/bench/<stamp>` (this section is generated; "
              "SPU rounds are party 0's send actions, an upper bound)."]
    return "\n".join(lines)


def replace_section(text: str, body: str) -> str:
    """``text`` with everything between the performance markers replaced by ``body`` (markers kept)."""
    m = re.search(re.escape(MARK_START) + r"[^\n]*-->\n(.*?)" + re.escape(MARK_END), text, re.S)
    if m is None:
        raise CometError(f"README has no performance markers ('{MARK_START} ... -->' and '{MARK_END}'); "
                         "add them where the section belongs")
    return text[:m.start(1)] + body.rstrip("\n") + "\n" + text[m.end(1):]
