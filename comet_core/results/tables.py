"""Tidy tables from a ledger: metrics (one row per network x stage) and per-operator costs."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pandas as pd

from comet_core.comm.network import Network

STAGES = ("setup", "prefill", "decode")  # setup: per-request work (Comet's shuffle), counted in total
OFF_PATH = ("deploy", "preprocess")      # once per deployment | per request before it arrives: rows of their own,
                                         # not in `total`; `total_amortised` = total + preprocess + deploy / N
COST_SOURCES = ("measured", "model")  # ledger cost_source: bytes of protocols that ran | of a cost model


def git_revision() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (rev or "unknown") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def stage_totals(ledger_df: pd.DataFrame, stage: str | None) -> dict:
    """Bytes by phase and direction, and online rounds, for one stage (None: every per-request stage,
    i.e. all but OFF_PATH)."""
    df = ledger_df[~ledger_df.stage.isin(OFF_PATH)] if stage is None else ledger_df[ledger_df.stage == stage]
    on = df[df.phase == "online"]
    p01 = int(on[on.sender == "P0"].bytes.sum())
    p10 = int(on[on.sender == "P1"].bytes.sum())
    split = {}
    for src in COST_SOURCES:  # real protocols (measured) vs modelled ideal functionalities (model)
        part = on[on.cost_source == src] if "cost_source" in on else on.iloc[:0]
        split[f"online_bytes_{src}"] = int(part.bytes.sum())
        split[f"rounds_{src}"] = int(part["round"].nunique())
    return dict(
        online_bytes=p01 + p10,
        **split,
        online_bytes_sent_p0=p01,
        online_bytes_sent_p1=p10,
        offline_bytes=int(df[df.phase == "offline"].bytes.sum()),
        input_bytes=int(df[df.phase == "input"].bytes.sum()),
        output_bytes=int(df[df.phase == "output"].bytes.sum()),
        rounds=int(on["round"].nunique()),
        busiest_direction_bytes=max(p01, p10),
    )


def metrics_table(ledger_df: pd.DataFrame, stage_seconds: dict[str, float], networks: list[Network],
                  labels: dict, compute_measured: bool,
                  cpu_seconds: dict[str, float] | None = None,
                  modelled_seconds: dict[str, float] | None = None, compute_profile: str = "",
                  deploy_requests: int = 1000) -> pd.DataFrame:
    """One row per network x phase (deploy, preprocess, setup, prefill, decode, total, total_amortised);
    time = compute + modelled comm. ``cpu_seconds``: the CPU time per stage beside the wall time
    (``compute_cpu_s``; NaN when not given): on a shared machine wall time grows with the load, CPU time
    much less. `total` is the request's online work (setup + prefill + decode); `total_amortised` adds
    the preprocess stage and the deploy stage divided by `deploy_requests` (bytes and seconds; its
    `rounds` are total + preprocess, the deploy rounds' share entering comm_s only).
    ``modelled_seconds``: the compute model's seconds per stage (results/compute_model.py), in the column
    ``compute_modelled_s`` in both modes; in cost mode (``compute_measured`` false) they are compute_s too,
    and ``compute_source`` says which (measured | modelled | none: cost mode without a profile).
    ``comm_s`` alone is the communication-only time; ``total_s`` = compute_s + comm_s."""
    def _sum(d, stage):
        if d is None:
            return math.nan
        return sum(d.get(s, 0.0) for s in STAGES) if stage == "total" else d.get(stage, 0.0)

    source = "measured" if compute_measured else ("modelled" if modelled_seconds is not None else "none")
    rows = []
    # the label columns as categories: each stage's masks compare integer codes, not strings (same sums)
    labels_cols = [c for c in ("stage", "phase", "sender", "cost_source") if c in ledger_df]
    keyed = ledger_df[[*labels_cols, "bytes", "round"]].astype({c: "category" for c in labels_cols})
    totals = {stage: stage_totals(keyed, None if stage == "total" else stage)
              for stage in (*OFF_PATH, *STAGES, "total")}
    for net in networks:   # the ledger's totals once per stage; only the pricing depends on the network
        for stage in (*OFF_PATH, *STAGES, "total"):
            t = totals[stage]
            modelled = _sum(modelled_seconds, stage)
            compute = _sum(stage_seconds, stage) if compute_measured else modelled
            cpu = (sum(cpu_seconds.get(s, 0.0) for s in STAGES) if stage == "total" else cpu_seconds.get(stage, 0.0)) \
                if cpu_seconds and compute_measured else math.nan
            comm = net.comm_seconds(t["rounds"], t["busiest_direction_bytes"])
            rows.append(dict(
                **labels, network=net.name, phase=stage, **t,
                compute_s=compute, compute_cpu_s=cpu, comm_s=comm,
                total_s=(0.0 if math.isnan(compute) else compute) + comm,
                compute_source=source, compute_modelled_s=modelled, compute_profile=compute_profile,
                bandwidth_bps=net.bandwidth_bps, latency_s=net.latency_s,
                compute_measured=compute_measured,
                bytes_convention="online_bytes: both directions P0<->P1; offline_bytes: dealer to both parties",
                time_convention="comm_s = rounds x one-way latency + busiest-direction bytes / bandwidth; "
                                "total_s = compute_s + comm_s",
                deploy_requests=int(deploy_requests),
            ))
        rows.append(_amortised(rows[-1], rows[-1 - len(STAGES) - 1], rows[-1 - len(STAGES) - 2], deploy_requests))
    return pd.DataFrame(rows)


AMORTISED_SUMS = ("online_bytes", "online_bytes_measured", "online_bytes_model", "online_bytes_sent_p0",
                  "online_bytes_sent_p1", "offline_bytes", "input_bytes", "output_bytes", "busiest_direction_bytes")


def _amortised(total: dict, preprocess: dict, deploy: dict, n: int) -> dict:
    """The `total_amortised` row: total + preprocess + deploy / n (bytes rounded to integers)."""
    row = dict(total, phase="total_amortised")
    for k in AMORTISED_SUMS:
        row[k] = int(total[k] + preprocess[k] + round(deploy[k] / n))
    row["rounds"] = total["rounds"] + preprocess["rounds"]
    for k in ("compute_s", "compute_cpu_s", "comm_s", "total_s"):
        row[k] = total[k] + preprocess[k] + deploy[k] / n
    return row


def ops_table(ledger_df: pd.DataFrame) -> pd.DataFrame:
    """Per (stage, layer, op, cost_source): online/offline bytes and online rounds. cost_source is
    `measured` for protocols that ran on shares, `model` for ideal functionalities priced by a formula
    (comet_core/mpc/ideal.py); an operator with both parts has two rows."""
    df = ledger_df[ledger_df.phase.isin(["online", "offline"])]
    keys = ["stage", "layer", "op", "cost_source"]
    on = df[df.phase == "online"].groupby(keys).agg(online_bytes=("bytes", "sum"), rounds=("round", "nunique"))
    off = df[df.phase == "offline"].groupby(keys).agg(offline_bytes=("bytes", "sum"))
    out = on.join(off, how="outer").fillna(0).astype({"online_bytes": "int64", "rounds": "int64",
                                                       "offline_bytes": "int64"})
    return out.reset_index().sort_values(keys).reset_index(drop=True)
