"""Readable units for people (tables in files keep raw bytes and seconds)."""

from __future__ import annotations

import math


def _num(v: float) -> str:
    return f"{v:.3g}"


def fmt_bytes(n: float) -> str:
    """1234567 -> '1.23 MB' (decimal units, as network links are quoted)."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "n/a"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{_num(n / scale)} {unit}"
    return f"{int(n)} B"


def fmt_seconds(s: float) -> str:
    """0.0008 -> '0.8ms', 12.3 -> '12.3s', 150 -> '2.5min'."""
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "n/a"
    if s == 0:
        return "0ms"
    if abs(s) < 1e-4:
        return f"{_num(s * 1e6)}us"
    if abs(s) < 1:
        return f"{_num(s * 1e3)}ms"
    if abs(s) < 120:
        return f"{_num(s)}s"
    if abs(s) < 7200:
        return f"{_num(s / 60)}min"
    return f"{_num(s / 3600)}h"


def fmt_bps(b: float) -> str:
    """5e9 -> '5Gbps', 5e7 -> '50Mbps'."""
    for unit, scale in (("Tbps", 1e12), ("Gbps", 1e9), ("Mbps", 1e6), ("kbps", 1e3)):
        if abs(b) >= scale:
            return f"{_num(b / scale)}{unit}"
    return f"{_num(b)}bps"


def readable_table(metrics) -> str:
    """The stdout cost table: bytes in kB/MB/GB, times in ms/s/min."""
    cols = ["network", "phase", "online_bytes", "offline_bytes", "rounds", "compute_s", "compute_cpu_s",
            "comm_s", "total_s"]
    df = metrics[[c for c in cols if c in metrics]].copy()
    for c in ("online_bytes", "offline_bytes"):
        df[c] = df[c].map(fmt_bytes)
    for c in ("compute_s", "compute_cpu_s", "comm_s", "total_s"):
        if c in df:
            df[c] = df[c].map(fmt_seconds)
    modelled = "compute_source" in metrics and (metrics.compute_source == "modelled").all()
    df = df.rename(columns={"online_bytes": "online", "offline_bytes": "offline",
                            "compute_s": "compute (modelled)" if modelled else "compute (wall)",
                            "compute_cpu_s": "compute (CPU)", "comm_s": "comm (modelled)", "total_s": "total"})
    return df.to_string(index=False)
