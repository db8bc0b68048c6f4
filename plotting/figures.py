"""Figure helpers for `comet plot`: grouped bars and line panels, saved as PNG and PDF (matplotlib, Agg)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class Figure:
    """A figure to draw: `kind` bars|lines, the columns it reads, axis labels (with units) and scales."""
    stem: str                     # file name without extension: results/<name>/<stem>.png|pdf
    kind: str                     # bars | lines
    data: pd.DataFrame
    x: str
    y: str
    hue: str | None = None
    panel: str | None = None      # one subplot per value of this column
    xlabel: str = ""
    ylabel: str = ""
    title: str = ""
    logx: bool = False
    logy: bool = False
    hline: float | None = None    # a reference line (e.g. speedup 1)
    band_metric: str | None = None  # shade the paper's value of this expected/<name>.csv metric
    band: tuple[float, float] | None = None   # filled in by plot.py from the expected file
    notes: list[str] = field(default_factory=list)


def _panels(fig_spec: Figure):
    if fig_spec.panel and fig_spec.panel in fig_spec.data:
        return [(v, d) for v, d in fig_spec.data.groupby(fig_spec.panel, sort=False)]
    return [(None, fig_spec.data)]


def draw(spec: Figure, out_dir: Path) -> list[Path]:
    """Draw `spec` into out_dir/<stem>.png and .pdf; returns the two paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(spec)
    n = len(panels)
    cols = min(n, 2)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7.0 * cols, 4.0 * rows), squeeze=False)
    for ax, (pv, d) in zip(axes.flat, panels):
        if spec.kind == "bars":
            _bars(ax, d, spec)
        else:
            _lines(ax, d, spec)
        ax.set_xlabel(spec.xlabel)
        ax.set_ylabel(spec.ylabel)
        if spec.logy:
            ax.set_yscale("log")
            pos = d[spec.y][d[spec.y] > 0]
            if spec.kind == "bars" and len(pos):   # bars grow from a floor below the smallest value
                ax.set_ylim(bottom=float(pos.min()) / 5)
        if spec.logx and spec.kind == "lines":
            _log_x(ax, d[spec.x], spec.x)
        if spec.logy:
            _plain_log_labels(ax.yaxis, d[spec.y])
        if spec.hline is not None:
            ax.axhline(spec.hline, color="grey", lw=0.8, ls="--")
        if spec.band is not None:
            lo, hi = spec.band
            if lo == hi:
                ax.axhline(lo, color="tab:red", lw=1.0, ls=":", label=f"paper: {lo:g}")
            else:
                ax.axhspan(lo, hi, color="tab:red", alpha=0.12, label=f"paper: {lo:g}-{hi:g}")
        if pv is not None:
            ax.set_title(f"{spec.panel} = {pv}", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        if (spec.hue or spec.band) and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, title=spec.hue, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(spec.title, fontsize=11)
    fig.tight_layout()
    paths = [out_dir / f"{spec.stem}.png", out_dir / f"{spec.stem}.pdf"]
    fig.savefig(paths[0], dpi=130)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def _bars(ax, d: pd.DataFrame, spec: Figure) -> None:
    xs = list(dict.fromkeys(d[spec.x]))
    hues = list(dict.fromkeys(d[spec.hue])) if spec.hue else [None]
    width = 0.8 / max(len(hues), 1)
    for i, h in enumerate(hues):
        dh = d if h is None else d[d[spec.hue] == h]
        vals = [dh[dh[spec.x] == x][spec.y].mean() if (dh[spec.x] == x).any() else float("nan") for x in xs]
        pos = [k + (i - (len(hues) - 1) / 2) * width for k in range(len(xs))]
        ax.bar(pos, vals, width=width, label=None if h is None else str(h))
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels([str(x) for x in xs], rotation=20 if len(xs) > 4 else 0, fontsize=8)


def _lines(ax, d: pd.DataFrame, spec: Figure) -> None:
    hues = list(dict.fromkeys(d[spec.hue])) if spec.hue else [None]
    for h in hues:
        dh = (d if h is None else d[d[spec.hue] == h]).sort_values(spec.x)
        ax.plot(dh[spec.x], dh[spec.y], marker="o", ms=3, label=None if h is None else str(h))


def _log_x(ax, xs: pd.Series, col: str) -> None:
    """Log x axis; bandwidths labelled in Mbps/Gbps, integer data (token counts) on base 2, at the data's values."""
    from matplotlib.ticker import NullFormatter

    vals = sorted(set(float(v) for v in xs.dropna()))
    if vals and col.endswith("_bps"):
        ax.set_xscale("log")
        ax.set_xticks(vals)
        ax.set_xticklabels([f"{v / 1e9:g} Gbps" if v >= 1e9 else f"{v / 1e6:g} Mbps" for v in vals], fontsize=8)
        ax.xaxis.set_minor_formatter(NullFormatter())
    elif vals and all(v == int(v) and v > 0 for v in vals) and max(vals) <= 4096:
        ax.set_xscale("log", base=2)
        ax.set_xticks(vals)
        ax.set_xticklabels([str(int(v)) for v in vals])
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_xscale("log")


def _plain_log_labels(axis, ys: pd.Series) -> None:
    """Log-axis tick labels as plain numbers (0.6, 2, 300) instead of 6x10^-1; a few minor labels on short ranges."""
    import math

    from matplotlib.ticker import FuncFormatter, NullFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(fmt)
    pos = ys[ys > 0]
    span = math.log10(float(pos.max()) / float(pos.min())) if len(pos) else 9.0
    digits = "235" if span < 0.7 else "25" if span < 2.0 else ""
    minor = FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in digits else "")
    axis.set_minor_formatter(minor if digits else NullFormatter())
