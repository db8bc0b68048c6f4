"""Tidy tables from a sweep's job folders: one row per job x phase, re-pricing, op-group costs.

Every job's own-network rows of metrics.csv (its `network` preset: metrics.csv prices every preset, the
job's own comes first) become rows of data.csv, with one column per swept key (the job's Hydra overrides:
`system`, `model`, `gen_tokens`, `engine.reuse_weight_masks`, `system.indexing`, ...) so adding a value to a
sweep needs no code here.

Time model (comet_core/comm/network.py, DESIGN.md 3), used to re-price and to price op groups:
    comm_s = rounds * latency_s + busiest_direction_bytes * 8 / bandwidth_bps,   total_s = compute_s + comm_s
(compute_s is NaN in cost mode and counts as 0 in total_s, as in metrics.csv).
"""

from __future__ import annotations

import fnmatch
import math
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from comet_core.comm.network import Network
from plotting.sweeps import Job, Sweep

GROUPS = ("model", "system", "network", "engine", "predictor", "experiment", "lm")
PHASES = ("prefill", "decode", "total")


def swept_values(job: Job) -> dict:
    """{key: value} of the job's overrides (typed values from its resolved config; group names as is)."""
    out = {}
    for ov in job.overrides:
        if "=" not in ov:
            continue
        key, raw = ov.split("=", 1)
        key = key.lstrip("+~")
        if key.startswith("hydra.") or key in ("experiment",):
            continue
        if key in GROUPS:
            out[key] = raw
            continue
        val = OmegaConf.select(job.cfg, key, default=raw)
        out[key] = val if not isinstance(val, (DictConfig,)) else raw
    return out


def config_value(job: Job, key: str | None):
    """A config value of the job by dotted key (NaN when absent or key is None)."""
    if not key:
        return math.nan
    v = OmegaConf.select(job.cfg, key, default=None)
    return math.nan if v is None or isinstance(v, DictConfig) else v


def job_metrics(job: Job, every_network: bool = False) -> pd.DataFrame:
    """The job's own-network rows of metrics.csv (one per phase), with its swept keys as columns.

    `every_network`: the rows of every network preset metrics.csv prices (the same ledger re-priced).
    """
    m = pd.read_csv(job.dir / "metrics.csv")
    own = OmegaConf.select(job.cfg, "network.name", default=None) or m.network.iloc[0]
    m = m.copy() if every_network else m[m.network == own].copy()
    for k, v in swept_values(job).items():
        if k not in ("model", "system", "network"):  # those three are metrics.csv columns already
            m[k] = v
    m.insert(0, "job", job.dir.name)
    return m.reset_index(drop=True)


def sweep_metrics(sweep: Sweep, every_network: bool = False) -> pd.DataFrame:
    """All finished jobs' own-network metrics rows (data.csv of run-experiment artifacts)."""
    frames = [job_metrics(j, every_network) for j in sweep.done_jobs]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def reprice(df: pd.DataFrame, bandwidths_bps, latency_s: float) -> pd.DataFrame:
    """Rows of `df` repeated for each bandwidth with comm_s/total_s from its rounds and busiest bytes."""
    out = []
    for bw in bandwidths_bps:
        net = Network(f"{float(bw):g}bps", float(bw), float(latency_s))
        d = df.copy()
        d["comm_s"] = [net.comm_seconds(int(r), int(b)) for r, b in zip(d.rounds, d.busiest_direction_bytes)]
        d["total_s"] = d.compute_s.fillna(0.0) + d.comm_s
        d["network"], d["bandwidth_bps"], d["latency_s"] = net.name, net.bandwidth_bps, net.latency_s
        out.append(d)
    return pd.concat(out, ignore_index=True)


def match_ops(names, patterns: str) -> list[str]:
    """Op names matching any of the `|`-separated fnmatch patterns."""
    pats = [p.strip() for p in str(patterns).split("|") if p.strip()]
    return [n for n in names if isinstance(n, str) and any(fnmatch.fnmatch(n, p) for p in pats)]


def op_group_cost(job: Job, patterns: str, prefix: str) -> dict[str, dict]:
    """Per phase, the online bytes, rounds, busiest-direction bytes and comm time of the ops in `patterns`.

    Busiest direction: from the job's ledger.csv.gz when saved (exact), else half of ops.csv's
    online_bytes (every dense protocol sends equal bytes each way; marked by `<prefix>_busiest_from`).
    Priced on the job's own network.
    """
    net = Network(str(job.cfg.network.name), float(job.cfg.network.bandwidth_bps), float(job.cfg.network.latency_s))
    ledger = job.dir / "ledger.csv.gz"
    res = {}
    if ledger.is_file():
        led = pd.read_csv(ledger, usecols=["phase", "stage", "op", "sender", "bytes", "round"])
        on = led[(led.phase == "online")]
        on = on[on.op.isin(match_ops(on.op.unique(), patterns))]
        src = "ledger"
        for phase in PHASES:
            d = on if phase == "total" else on[on.stage == phase]
            p0, p1 = int(d[d.sender == "P0"].bytes.sum()), int(d[d.sender == "P1"].bytes.sum())
            res[phase] = dict(online_bytes=p0 + p1, rounds=int(d["round"].nunique()), busiest=max(p0, p1))
    else:
        ops = pd.read_csv(job.dir / "ops.csv")
        ops = ops[ops.op.isin(match_ops(ops.op.unique(), patterns))]
        src = "ops_half"
        for phase in PHASES:
            d = ops if phase == "total" else ops[ops.stage == phase]
            b = int(d.online_bytes.sum())
            res[phase] = dict(online_bytes=b, rounds=int(d.rounds.sum()), busiest=b // 2)
    out = {}
    for phase, r in res.items():
        out[phase] = {f"{prefix}_online_bytes": r["online_bytes"], f"{prefix}_rounds": r["rounds"],
                      f"{prefix}_comm_s": net.comm_seconds(r["rounds"], r["busiest"]),
                      f"{prefix}_busiest_from": src}
    return out


def with_op_groups(sweep: Sweep, df: pd.DataFrame, groups: dict[str, str]) -> pd.DataFrame:
    """`df` (job x phase rows) with the cost columns of each named op group {prefix: patterns}."""
    if df.empty or not groups:
        return df
    extra = []
    for job in sweep.done_jobs:
        costs = {p: op_group_cost(job, pats, p) for p, pats in groups.items() if pats}
        for phase in PHASES:
            row = {"job": job.dir.name, "phase": phase}
            for c in costs.values():
                row.update(c[phase])
            extra.append(row)
    return df.merge(pd.DataFrame(extra), on=["job", "phase"], how="left")


def predictor_tables(sweep: Sweep) -> pd.DataFrame:
    """train-predictor jobs as one long table: source (metrics|accuracy|sweep), keys, metric, value."""
    rows = []
    for job in sweep.done_jobs:
        sw = swept_values(job)
        for src, keys in (("metrics", ["model", "layer", "kind"]), ("accuracy", ["model", "variant"]),
                          ("sweep", ["model", "kind", "target_recall"])):
            t = pd.read_csv(job.dir / f"{src}.csv")
            keys = [k for k in keys if k in t.columns]
            vals = [c for c in t.columns if c not in keys and pd.api.types.is_numeric_dtype(t[c])]
            long = t.melt(id_vars=keys, value_vars=vals, var_name="metric", value_name="value")
            long.insert(0, "source", src)
            long.insert(0, "job", job.dir.name)
            for k, v in sw.items():
                if k not in long.columns:
                    long[k] = v
            rows.append(long)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
