"""Compare an artifact's measured claims with the paper's values in experiments/expected/<name>.csv.

expected/<name>.csv columns:
    claim             the paper's claim in words
    metric            the name of a measured quantity the artifact's analysis returns (analyses.py)
    stat              how the measured values (one per model x baseline, ...) are reduced: range | max |
                      min | mean
    paper_value_lo/hi the paper's value: a range (lo < hi), a point (lo == hi), or a bound (one side empty)
    unit              x | fraction | pct_points ...
    tolerance         OUR tolerance (not the paper's), relative (tolerance_kind=rel) or absolute (abs)
    tolerance_kind    rel | abs
    tolerance_reason  why that tolerance
    source            the line of shared/reference/paper-notes.md the value comes from, with its tag
    note              a sentence on the deviation and its cause (README), filled once measured

Judgement (ours vs the paper, widened by the tolerance t; rel: v * (1 -/+ t), abs: v -/+ t):
- stat=range: our minimum must lie within t of lo and our maximum within t of hi;
- otherwise: the reduced value must lie in [lo - t, hi + t] (a missing side is unbounded).
Status: ok | OUTSIDE | not measured.

Each measured value may name the point it comes from (``Point``: a float with a label such as
``llama2-7b at 90% sparsity``); ``compare`` writes the point(s) the reduced value quotes into the
``point`` column (the max's point, a range's two ends, a mean's count), and ``beside`` quotes a second
metric next to it (e.g. the 95%-sparsity value beside the 90% one), so that the README's "ours" cell
says which point of the sweep it shows.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from comet_core.errors import CometError
from experiments.artifacts import EXPECTED_DIR
COLUMNS = ["claim", "metric", "stat", "paper_value_lo", "paper_value_hi", "unit", "tolerance", "tolerance_kind",
           "tolerance_reason", "source", "note"]


class Point(float):
    """A measured value with the sweep point it comes from (model, setting, ...)."""

    label: str = ""

    def __new__(cls, value: float, label: str = ""):
        obj = super().__new__(cls, value)
        obj.label = label
        return obj


def points(df: pd.DataFrame, col: str, *label_cols: str, fmt: dict | None = None) -> list[Point]:
    """The values of df[col], each labelled by its row's label_cols (``fmt``: column -> value formatter)."""
    fmt = fmt or {}
    out = []
    for _, r in df.iterrows():
        parts = [fmt.get(c, str)(r[c]) for c in label_cols if c in df.columns]
        out.append(Point(float(r[col]), " ".join(p for p in parts if p)))
    return out


def _label(v) -> str:
    return getattr(v, "label", "")


def point_text(stat: str, values: list) -> str:
    """Which point(s) the reduced value quotes: the max's (min's) label, a range's ends, a mean's count."""
    vals = [v for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return ""
    if stat in ("max", "min"):
        v = (max if stat == "max" else min)(vals, key=float)
        lab = _label(v)
        return f"{stat} of {len(vals)}: {lab}" if lab else f"{stat} of {len(vals)} values"
    if stat == "range":
        lo, hi = min(vals, key=float), max(vals, key=float)
        if _label(lo) and _label(hi):
            return f"{len(vals)} values; lowest {_label(lo)}, highest {_label(hi)}"
        return f"range of {len(vals)} values"
    labs = sorted({_label(v) for v in vals if _label(v)})
    return f"mean of {len(vals)}" + (f": {', '.join(labs)}" if labs and len(labs) <= 4 else "")


def load_expected(name: str, expected_dir: Path = EXPECTED_DIR) -> pd.DataFrame | None:
    """The expected values of artifact `name` (None when the paper gives none)."""
    p = Path(expected_dir) / f"{name}.csv"
    if not p.is_file():
        return None
    df = pd.read_csv(p, keep_default_na=False, na_values=[""])
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise CometError(f"{p} lacks columns {', '.join(missing)}; see plotting/compare.py")
    return df


def _widen(v: float, t: float, kind: str, side: int) -> float:
    if kind == "abs":
        return v + side * t
    return v * (1 + side * t)


def _near(x: float, v: float, t: float, kind: str) -> bool:
    lo, hi = sorted((_widen(v, t, kind, -1), _widen(v, t, kind, +1)))
    return lo <= x <= hi


def judge(stat: str, values: list[float], lo: float, hi: float, tol: float, kind: str = "rel"):
    """(our value as text, status) for one expected row."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return "", "not measured"
    if stat == "range":
        a, b = min(vals), max(vals)
        ok = (math.isnan(lo) or _near(a, lo, tol, kind)) and (math.isnan(hi) or _near(b, hi, tol, kind))
        return f"{a:.3g}-{b:.3g}", "ok" if ok else "OUTSIDE"
    agg = {"max": max, "min": min, "mean": lambda v: sum(v) / len(v)}.get(stat)
    if agg is None:
        raise CometError(f"unknown stat {stat!r} in an expected file (use range, max, min or mean)")
    x = agg(vals)
    ok = (math.isnan(lo) or x >= min(_widen(lo, tol, kind, -1), lo)) and \
         (math.isnan(hi) or x <= max(_widen(hi, tol, kind, +1), hi))
    return f"{x:.3g}", "ok" if ok else "OUTSIDE"


def paper_text(lo: float, hi: float) -> str:
    if math.isnan(lo):
        return f"< {hi:g}"
    if math.isnan(hi):
        return f"> {lo:g}"
    return f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"


def compare(name: str, claims: dict[str, list[float]], expected_dir: Path = EXPECTED_DIR,
            beside: dict[str, tuple[str, str]] | None = None) -> pd.DataFrame:
    """One row per expected claim: paper, ours, the point(s) ours quotes, tolerance, status (empty frame
    without an expected file). ``beside``: metric -> (caption, other metric) quoted next to ours."""
    exp = load_expected(name, expected_dir)
    if exp is None:
        return pd.DataFrame(columns=["claim", "metric", "paper", "ours", "point", "beside", "tolerance", "status",
                                     "source", "note"])
    rows = []
    for r in exp.itertuples(index=False):
        lo, hi = float(r.paper_value_lo), float(r.paper_value_hi)
        kind = str(r.tolerance_kind or "rel")
        values = claims.get(str(r.metric), [])
        ours, status = judge(str(r.stat), values, lo, hi, float(r.tolerance), kind)
        tol = f"±{float(r.tolerance):g}" + (" (relative)" if kind == "rel" else f" {r.unit}")
        side = ""
        if beside and str(r.metric) in beside:
            caption, other = beside[str(r.metric)]
            o_vals = claims.get(other, [])
            o_text, _ = judge(str(r.stat), o_vals, lo, hi, float(r.tolerance), kind)
            if o_text:
                side = f"{caption}: {o_text} {r.unit} ({point_text(str(r.stat), o_vals)})"
        rows.append(dict(claim=r.claim, metric=r.metric, stat=r.stat, paper=paper_text(lo, hi), ours=ours,
                         point=point_text(str(r.stat), values), beside=side,
                         unit=r.unit, tolerance=tol, status=status, source=r.source,
                         note="" if pd.isna(r.note) else str(r.note)))
    return pd.DataFrame(rows)


def comparison_text(name: str, cmp: pd.DataFrame, preset: str) -> str:
    """The comparison as printed by `comet plot`."""
    if cmp.empty:
        return f"{name}: the paper gives no value for this artifact (no experiments/expected/{name}.csv)"
    head = f"{name}: ours vs the paper (experiments/expected/{name}.csv; tolerances are ours)"
    if preset != "full":
        head += f"\n  [{preset} preset: tiny shapes, a pipeline check; the values are not a reproduction]"
    lines = [head]
    for r in cmp.itertuples(index=False):
        flag = {"ok": "ok", "OUTSIDE": "OUTSIDE TOLERANCE", "not measured": "not measured"}[r.status]
        where = f" ({r.point})" if getattr(r, "point", "") else ""
        side = f"; {r.beside}" if getattr(r, "beside", "") else ""
        lines.append(f"  {flag:>17}  {r.metric} ({r.stat}): ours {r.ours or '-'}{where}{side} vs paper {r.paper} "
                     f"{r.unit} [{r.tolerance}]  {r.claim}")
    return "\n".join(lines)
