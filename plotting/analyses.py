"""One analysis per paper artifact: tidy data, derived tables, measured claims and figures.

Each analysis reads a sweep (plotting.sweeps.Sweep) and the artifact's `experiment:` block from the jobs'
config (conf/experiment/<name>.yaml: reference system, op patterns, swept key, bandwidths). Which systems
are compared is whatever the sweep ran: adding a system to an artifact is adding its name to the sweep.

Ratios ("speedup", "communication reduction") are baseline / reference, per matching row (same model and
same swept values); a ratio > 1 means the reference (Comet) is better.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from comet_core.errors import CometError
from comet_core.models.cache import REPO_ROOT
from plotting import data as pdata
from plotting.compare import points
from plotting.figures import Figure
from plotting.analysis import Analysis, Artifact  # noqa: F401 (re-exported)
from plotting.sweeps import Sweep, select_sweep

GB = 1e9


def exp_block(sweep: Sweep) -> dict:
    """The `experiment:` block of the sweep's first finished job (plain dict)."""
    for j in sweep.done_jobs or sweep.jobs:
        b = OmegaConf.select(j.cfg, "experiment", default=None)
        if b is not None:
            return OmegaConf.to_container(b, resolve=True)
    return {}


# -- helpers ---------------------------------------------------------------------------------------------

VS = {"baseline": lambda b: f"vs {b}"}


def _at_bandwidth(bw) -> str:
    from comet_core.results.units import fmt_bps

    return f"at {fmt_bps(float(bw))}"


def advantage(df: pd.DataFrame, ref: str, keys: list[str], col: str, name: str) -> pd.DataFrame:
    """Per row of every system other than `ref`: df[col] of that system / df[col] of `ref` (same keys)."""
    keys = [k for k in keys if k in df.columns]
    r = df[df.system == ref][keys + [col]].rename(columns={col: "_ref"})
    b = df[df.system != ref][keys + ["system", col]]
    if r.empty or b.empty:
        return pd.DataFrame(columns=keys + ["baseline", name])
    m = b.merge(r, on=keys, how="inner")
    m[name] = m[col] / m["_ref"]
    return m.rename(columns={"system": "baseline"})[keys + ["baseline", name]].reset_index(drop=True)


def missing_reference(df: pd.DataFrame, ref: str, what: str, artifact: str) -> list[str]:
    systems = sorted(set(df.system)) if "system" in df else []
    if ref in systems and len(systems) > 1:
        return []
    need = f"system {ref!r} and at least one other system" if ref not in systems else "a second system"
    return [f"{what} need {need} in the sweep (it ran: {', '.join(map(str, systems)) or 'nothing'}); "
            f"list them in conf/experiment/{artifact}.yaml"]


def add_config_column(sweep: Sweep, df: pd.DataFrame, key: str | None, col: str) -> pd.DataFrame:
    """Column `col` = each job's config value at `key` (NaN where absent)."""
    vals = {j.dir.name: pdata.config_value(j, key) for j in sweep.done_jobs}
    df = df.copy()
    df[col] = df.job.map(vals)
    return df


def totals(df: pd.DataFrame) -> pd.DataFrame:
    return df[df.phase == "total"].reset_index(drop=True)


def gb(df: pd.DataFrame, col: str = "online_bytes") -> pd.DataFrame:
    df = df.copy()
    df[col.replace("bytes", "GB")] = df[col] / GB
    return df


def compute_notes(t: pd.DataFrame) -> list[str]:
    """What compute_s is in a table's rows: measured, modelled (docs/compute-model.md) or absent."""
    if "compute_source" in t:
        src = set(t.compute_source.dropna())
    else:   # tables made before the compute model: exact rows measured compute, cost rows had none
        src = {"measured" if m else "none" for m in t.get("compute_measured", pd.Series([False] * len(t)))}
    if src == {"modelled"}:
        prof = ", ".join(sorted(set(t.compute_profile.dropna()))) if "compute_profile" in t else "?"
        return ["compute_s is modelled (cost mode): the runs' work counters x the unit costs of the compute profile "
                f"{prof} (docs/compute-model.md). comm_s is the communication-only time, total_s = compute_s + "
                "comm_s. speedup uses total_s, speedup_comm_only uses comm_s"]
    if not src or src == {"none"}:
        return ["compute_s is empty (cost mode without a compute model): total_s = comm_s, communication only"]
    return []


def time_and_bytes_figures(name: str, t: pd.DataFrame, x: str = "model") -> list[Figure]:
    t = gb(t)
    return [
        Figure(f"{name}_time", "bars", t, x=x, y="total_s", hue="system", xlabel=x,
               ylabel="time per request (s)", logy=True,
               title=f"{name}: time per request (compute + modelled communication, lan)"),
        Figure(f"{name}_communication", "bars", t, x=x, y="online_GB", hue="system", xlabel=x,
               ylabel="online communication (GB, both directions)", logy=True,
               title=f"{name}: online communication per system"),
    ]


# -- artifacts -------------------------------------------------------------------------------------------

def end_to_end(sweep: Sweep, exp: dict) -> Analysis:
    return end_to_end_from_data(pdata.sweep_metrics(sweep), exp)


def end_to_end_from_data(df: pd.DataFrame, exp: dict) -> Analysis:
    ref = exp.get("reference", "comet")
    t = totals(df)
    a = Analysis(df)
    cols = ["model", "system", "online_GB", "offline_GB", "rounds", "compute_s", "compute_source", "comm_s", "total_s"]
    per_system = gb(gb(t), "offline_bytes")
    a.tables["per system (phase total, lan)"] = per_system[[c for c in cols if c in per_system]]
    a.notes += compute_notes(t)
    a.figures += time_and_bytes_figures("end_to_end", t)
    sp = advantage(t, ref, ["model"], "total_s", "speedup")
    sc = advantage(t, ref, ["model"], "comm_s", "speedup_comm_only")
    cr = advantage(t, ref, ["model"], "online_bytes", "comm_reduction")
    a.notes += missing_reference(t, ref, "speedups and communication reductions", "end_to_end")
    if not sp.empty:
        both = sp.merge(sc, on=["model", "baseline"]).merge(cr, on=["model", "baseline"])
        a.tables[f"{ref} vs each baseline (baseline / {ref})"] = both
        a.claims["speedup"] = points(sp, "speedup", "model", "baseline", fmt=VS)
        a.claims["speedup_comm_only"] = points(sc, "speedup_comm_only", "model", "baseline", fmt=VS)
        a.claims["comm_reduction"] = points(cr, "comm_reduction", "model", "baseline", fmt=VS)
        a.figures += [
            Figure("end_to_end_speedup", "bars", both, x="model", y="speedup", hue="baseline", xlabel="model",
                   ylabel=f"speedup of {ref} (x)", hline=1.0, band_metric="speedup",
                   title=f"end_to_end: {ref}'s speedup over each baseline (baseline time / {ref} time, lan)"),
            Figure("end_to_end_comm_reduction", "bars", both, x="model", y="comm_reduction", hue="baseline",
                   xlabel="model", ylabel="communication reduction (x)", hline=1.0, band_metric="comm_reduction",
                   title=f"end_to_end: {ref}'s communication reduction (baseline bytes / {ref} bytes)"),
        ]
    return a


DEFAULT_BANDWIDTHS = [1e8, 2e8, 5e8, 1e9, 2e9, 3e9, 5e9]


def bandwidth_sweep(sweep: Sweep, exp: dict) -> Analysis:
    ref = exp.get("reference", "comet")
    bws = exp.get("bandwidths_bps") if exp.get("name") == "bandwidth_sweep" else None
    bws = [float(b) for b in (bws or DEFAULT_BANDWIDTHS)]
    lat = float(exp.get("latency_s", 8e-4)) if exp.get("name") == "bandwidth_sweep" else 8e-4
    return bandwidth_sweep_from_data(pdata.reprice(pdata.sweep_metrics(sweep), bws, lat), exp)


def bandwidth_sweep_from_data(df: pd.DataFrame, exp: dict) -> Analysis:
    """The analysis of the re-priced rows (data.csv): the bandwidths and the latency are its columns."""
    ref = exp.get("reference", "comet")
    bws = sorted(float(b) for b in df.bandwidth_bps.unique())
    lat = float(df.latency_s.iloc[0])
    a = Analysis(df)
    if exp.get("name") != "bandwidth_sweep":
        a.notes.append(f"re-priced from a {exp.get('name')} sweep at {len(bws)} bandwidths, latency {lat:g} s")
    t = totals(df)
    a.tables["time per bandwidth (s, phase total)"] = t.pivot_table(
        index=["model", "system"], columns="bandwidth_bps", values="total_s").reset_index()
    a.figures.append(Figure("bandwidth_sweep_time", "lines", t, x="bandwidth_bps", y="total_s", hue="system",
                            panel="model", xlabel="bandwidth (bit/s)", ylabel="time per request (s)",
                            logx=True, logy=True, title=f"bandwidth_sweep: time vs bandwidth (latency {lat:g} s)"))
    sp = advantage(t, ref, ["model", "bandwidth_bps"], "total_s", "speedup")
    a.notes += missing_reference(t, ref, "speedups", "bandwidth_sweep")
    if not sp.empty:
        a.tables[f"speedup of {ref} per bandwidth"] = sp.pivot_table(
            index=["model", "baseline"], columns="bandwidth_bps", values="speedup").reset_index()
        low = sp[sp.bandwidth_bps == min(bws)]
        a.claims["speedup_at_lowest_bandwidth"] = points(low, "speedup", "model", "baseline", "bandwidth_bps",
                                                         fmt={**VS, "bandwidth_bps": _at_bandwidth})
        a.claims["speedup"] = points(sp, "speedup", "model", "baseline", "bandwidth_bps",
                                     fmt={**VS, "bandwidth_bps": _at_bandwidth})
        a.figures.append(Figure("bandwidth_sweep_speedup", "lines", sp, x="bandwidth_bps", y="speedup",
                                hue="baseline", panel="model", xlabel="bandwidth (bit/s)",
                                ylabel=f"speedup of {ref} (x)", logx=True, hline=1.0,
                                band_metric="speedup_at_lowest_bandwidth", title=f"bandwidth_sweep: {ref}'s speedup vs bandwidth"))
    return a


def ffn_sparsity(sweep: Sweep, exp: dict) -> Analysis:
    df = pdata.with_op_groups(sweep, pdata.sweep_metrics(sweep), {"ffn": exp.get("ops", "ffn.*")})
    return ffn_sparsity_from_data(add_config_column(sweep, df, exp.get("x_key"), "ffn_sparsity"), exp)


def ffn_sparsity_from_data(df: pd.DataFrame, exp: dict) -> Analysis:
    """The analysis of ffn_sparsity's data.csv (the sweep's tidy rows with their FFN op group)."""
    ref, target = exp.get("reference", "dense"), exp.get("target", "comet")
    a = Analysis(df)
    t = totals(df)
    cols = ["model", "system", "ffn_sparsity", "ffn_online_bytes", "ffn_rounds", "ffn_comm_s", "total_s"]
    a.tables["FFN cost (phase total, lan)"] = t[cols]
    if t.ffn_sparsity.notna().any():
        a.figures.append(Figure("ffn_sparsity_ffn_time", "lines", t, x="ffn_sparsity", y="ffn_comm_s", hue="system",
                                panel="model", xlabel="FFN sparsity (fraction of neurons skipped)",
                                ylabel="FFN communication time (s, lan)", logy=True,
                                title="ffn_sparsity: FFN time vs sparsity"))
    else:
        a.figures.append(Figure("ffn_sparsity_ffn_time", "bars", t, x="model", y="ffn_comm_s", hue="system",
                                xlabel="model", ylabel="FFN communication time (s, lan)", logy=True,
                                title="ffn_sparsity: FFN time per system"))
    r = t[t.system == ref][["model", "ffn_sparsity", "ffn_comm_s"]]
    g = t[t.system == target][["model", "ffn_sparsity", "ffn_comm_s"]]
    if r.empty or g.empty:
        a.notes.append(f"FFN speedups need systems {ref!r} and {target!r} in the sweep and {target}'s sparsity "
                       f"key (experiment.x_key={exp.get('x_key')}); see conf/experiment/ffn_sparsity.yaml")
        return a
    r = r.groupby("model", as_index=False).ffn_comm_s.mean().rename(columns={"ffn_comm_s": "ref_ffn_s"})
    sp = g.merge(r, on="model")
    sp["ffn_speedup"] = sp.ref_ffn_s / sp.ffn_comm_s
    a.tables[f"FFN speedup of {target} over {ref}"] = sp
    # the claim is about ~90% sparsity: the sweep's points at 90% (not 85-95%, whose 95% end is the most
    # favourable); the 95% points are quoted beside it, labelled
    at = {"ffn_sparsity": lambda x: f"at {float(x):.0%} sparsity"}
    for pct in (90, 95):
        near = sp[(sp.ffn_sparsity - pct / 100).abs() <= 0.0125]
        a.claims[f"ffn_speedup_at_{pct}"] = points(near, "ffn_speedup", "model", "ffn_sparsity", fmt=at)
    a.beside["ffn_speedup_at_90"] = ("at 95% sparsity", "ffn_speedup_at_95")
    a.claims["ffn_speedup"] = points(sp, "ffn_speedup", "model", "ffn_sparsity", fmt=at)
    a.figures.append(Figure("ffn_sparsity_speedup", "lines", sp, x="ffn_sparsity", y="ffn_speedup", hue="model",
                            xlabel="FFN sparsity (fraction of neurons skipped)",
                            ylabel="FFN speedup (x)", hline=1.0, band_metric="ffn_speedup_at_90",
                            title=f"ffn_sparsity: FFN speedup ({ref} FFN time / {target} FFN time, lan)"))
    return a


def predictor_accuracy(sweep: Sweep, exp: dict) -> Analysis:
    return predictor_accuracy_from_data(pdata.predictor_tables(sweep), exp)


def predictor_accuracy_from_data(df: pd.DataFrame, exp: dict) -> Analysis:
    a = Analysis(df)
    m = df[df.source == "metrics"].pivot_table(index=["model", "kind", "layer"], columns="metric",
                                               values="value").reset_index()
    summ = m.groupby(["model", "kind"], as_index=False)[
        [c for c in ("recall", "precision", "true_sparsity", "predicted_sparsity", "threshold") if c in m]].mean()
    a.tables["per model and kind (mean over layers, test plays)"] = summ
    acc = df[df.source == "accuracy"].pivot_table(index=["model", "variant"], columns="metric",
                                                  values="value").reset_index()
    a.tables["accuracy impact"] = acc
    sw = df[df.source == "sweep"].pivot_table(index=["model", "kind", "target_recall"], columns="metric",
                                              values="value").reset_index()
    a.tables["threshold sweep"] = sw
    ffn = summ[summ.kind == "ffn"]
    a.claims["recall"] = points(ffn, "recall", "model") if "recall" in ffn else []
    pb = acc[acc.variant == "predicted-both"] if "variant" in acc else acc.iloc[0:0]
    if "acc_change_pts" in pb:
        a.claims["accuracy_loss_pts"] = points(pb.assign(loss=-pb.acc_change_pts), "loss", "model")
    a.figures += [
        Figure("predictor_accuracy_recall_layers", "bars", m, x="layer", y="recall", hue="kind", panel="model",
               xlabel="decoder layer", ylabel="recall on the test plays (fraction)",
               title="predictor_accuracy: recall per layer at the tuned threshold"),
        Figure("predictor_accuracy_tradeoff", "lines", sw, x="recall", y="predicted_sparsity", hue="kind",
               panel="model", xlabel="recall (fraction of active units kept)",
               ylabel="predicted sparsity (fraction skipped)",
               title="predictor_accuracy: threshold trade-off (sweep of target recall)"),
        Figure("predictor_accuracy_next_token", "lines", sw, x="target_recall", y="next_token_acc", hue="kind",
               panel="model", xlabel="target recall (threshold setting)", ylabel="next-token accuracy (fraction)",
               title="predictor_accuracy: accuracy vs threshold"),
    ]
    return a


def _variant_data(sweep: Sweep, exp: dict, prefix: str, default_ops: str) -> pd.DataFrame:
    df = pdata.with_op_groups(sweep, pdata.sweep_metrics(sweep), {prefix: exp.get("ops", default_ops)})
    df = add_config_column(sweep, df, exp.get("x_key"), "variant")
    df["variant"] = df.variant.map(lambda v: "(none)" if pd.isna(v) else str(v))
    return df


def _variant_ratio(sweep: Sweep, exp: dict, name: str, prefix: str, default_ops: str) -> Analysis:
    return _variant_ratio_from_data(_variant_data(sweep, exp, prefix, default_ops), exp, name, prefix, default_ops)


def _variant_ratio_from_data(df: pd.DataFrame, exp: dict, name: str, prefix: str, default_ops: str) -> Analysis:
    key = exp.get("x_key")
    df["variant"] = df.variant.map(lambda v: "(none)" if pd.isna(v) else str(v))
    a = Analysis(df)
    t = totals(df)
    cols = ["model", "system", "variant", f"{prefix}_online_bytes", f"{prefix}_rounds", f"{prefix}_comm_s",
            "online_bytes", "rounds", "total_s"]
    a.tables[f"per variant ({key}; phase total)"] = t[cols]
    if t[f"{prefix}_online_bytes"].sum() == 0:
        a.notes.append(f"no op of this sweep matches experiment.ops={exp.get('ops', default_ops)!r}: "
                       f"{prefix} costs are 0 (needs the system that has them; see conf/experiment/{name}.yaml)")
    lab = t.assign(label=t.system + " " + t.variant)
    part = lab[f"{prefix}_comm_s"]
    # variants an order of magnitude apart (shuffle vs oblivious: ~30x): a log axis, or the small bars vanish;
    # a linear one where a variant has no such cost (0 has no place on a log axis)
    log_part = bool(len(part)) and bool((part > 0).all()) and float(part.max()) > 10 * float(part.min())
    a.figures += [
        Figure(f"{name}_{prefix}_time", "bars", lab, x="model", y=f"{prefix}_comm_s", hue="label", xlabel="model",
               ylabel=f"{prefix} communication time (s, lan)", logy=log_part,
               title=f"{name}: {prefix} cost per variant"),
        Figure(f"{name}_time", "bars", lab, x="model", y="total_s", hue="label", xlabel="model",
               ylabel="time per request (s)", logy=True, title=f"{name}: end-to-end time per variant"),
    ]
    return a


def shuffle_vs_oblivious(sweep: Sweep, exp: dict) -> Analysis:
    return shuffle_vs_oblivious_from_data(_variant_data(sweep, exp, "index", "*index*|*shuffle*|*reveal*"), exp)


def shuffle_vs_oblivious_from_data(df: pd.DataFrame, exp: dict) -> Analysis:
    """The analysis of shuffle_vs_oblivious's data.csv (tidy rows with their indexing op group)."""
    a = _variant_ratio_from_data(df, exp, "shuffle_vs_oblivious", "index", "*index*|*shuffle*|*reveal*")
    ref, target = str(exp.get("reference", "oblivious")), str(exp.get("target", "shuffle"))
    t = totals(a.data)
    r = t[t.variant == ref][["model", "system", "index_comm_s", "total_s"]]
    g = t[t.variant == target][["model", "system", "index_comm_s", "total_s"]]
    m = g.merge(r, on=["model", "system"], suffixes=("", "_ref"))
    m = m[m.index_comm_s > 0]
    if m.empty:
        a.notes.append(f"indexing speedups need {exp.get('x_key')}={ref} and ={target} runs with indexing ops")
        return a
    m["indexing_speedup"] = m.index_comm_s_ref / m.index_comm_s
    m["end_to_end_speedup"] = m.total_s_ref / m.total_s
    a.tables[f"{target} vs {ref} ({ref} / {target})"] = m
    a.claims["indexing_speedup"] = points(m, "indexing_speedup", "model")
    return a


def kv_refill_ablation(sweep: Sweep, exp: dict) -> Analysis:
    return _variant_ratio(sweep, exp, "kv_refill_ablation", "refill", "*refill*|*prefetch*")


def kv_refill_ablation_from_data(df: pd.DataFrame, exp: dict) -> Analysis:
    return _variant_ratio_from_data(df, exp, "kv_refill_ablation", "refill", "*refill*|*prefetch*")


def output_length(sweep: Sweep, exp: dict) -> Analysis:
    ref = exp.get("reference", "comet")
    df = pdata.sweep_metrics(sweep)
    a = Analysis(df)
    t = totals(df)
    a.tables["time per output length (s)"] = t.pivot_table(index=["model", "system"], columns="gen_tokens",
                                                           values="total_s").reset_index()
    a.figures.append(Figure("output_length_time", "lines", t, x="gen_tokens", y="total_s", hue="system",
                            panel="model", xlabel="generated tokens", ylabel="time per request (s)",
                            logx=True, logy=True, title="output_length: time vs output length"))
    sp = advantage(t, ref, ["model", "gen_tokens"], "total_s", "speedup")
    a.notes += missing_reference(t, ref, "speedups", "output_length")
    if not sp.empty:
        a.tables[f"speedup of {ref} per output length"] = sp.pivot_table(
            index=["model", "baseline"], columns="gen_tokens", values="speedup").reset_index()
        a.claims["speedup"] = points(sp, "speedup", "model", "baseline", "gen_tokens",
                                     fmt={**VS, "gen_tokens": lambda n: f"{int(n)} tokens"})
        a.figures.append(Figure("output_length_speedup", "lines", sp, x="gen_tokens", y="speedup", hue="baseline",
                                panel="model", xlabel="generated tokens", ylabel=f"speedup of {ref} (x)", logx=True,
                                hline=1.0, title=f"output_length: {ref}'s speedup vs output length"))
    return a


def _comm_share(df: pd.DataFrame) -> list[float]:
    return [c / (c + p) if bool(m) and (c + p) > 0 else math.nan
            for c, p, m in zip(df.comm_s, df.compute_s.fillna(0.0), df.compute_measured)]


def _companion_predictor_share(sweep: Sweep, ref: str, patterns: str, companion: str) -> pd.DataFrame:
    """Comet's predictor share from the newest complete sweep of `companion` (end_to_end: the paper's
    models in cost mode) under the same root, when this sweep has no `ref` run (exact mode at the
    paper's shapes needs trained predictors, which do not exist for them). Empty if there is none."""
    try:
        other = select_sweep(companion, (), sweep.dir.parent, None, "full", "")
    except CometError:
        return pd.DataFrame()
    df = pdata.with_op_groups(other, pdata.sweep_metrics(other), {"predictor": patterns})
    t = totals(df)
    t = t[t.system == ref].copy()
    t["predictor_share"] = t.predictor_comm_s / t.total_s
    t["source"] = f"{companion} sweep {other.dir.name} ({t['mode'].iloc[0] if len(t) else '?'} mode)"
    return t[["model", "system", "network", "mode", "predictor_comm_s", "total_s", "predictor_share", "source"]]


def time_breakdown(sweep: Sweep, exp: dict) -> Analysis:
    ref = exp.get("reference", "comet")
    patterns = exp.get("predictor_ops", "*pred*")
    df = pdata.with_op_groups(sweep, pdata.sweep_metrics(sweep), {"predictor": patterns})
    df["comm_share"] = _comm_share(df)
    df["predictor_share"] = df.predictor_comm_s / df.total_s
    a = Analysis(df)
    t = totals(df)
    net = t.network.iloc[0] if len(t) else "lan"
    a.tables[f"time breakdown (phase total, {net})"] = t[["model", "system", "compute_s", "comm_s", "total_s",
                                                          "comm_share", "predictor_comm_s", "predictor_share"]]
    # the same ledgers priced on every network preset (metrics.csv holds them all): where the claim holds
    every = totals(pdata.sweep_metrics(sweep, every_network=True))
    every["comm_share"] = _comm_share(every)
    every = every.sort_values("bandwidth_bps", ascending=False, kind="stable")   # fastest link first
    a.tables["communication share per network preset (same ledgers, measured compute)"] = every.pivot_table(
        index=["model", "system"], columns="network", values="comm_share").reset_index()
    if not t.compute_measured.all():
        a.notes.append("some jobs ran in cost mode: compute is not measured there and their comm_share is NaN")
    base = t[t.system != ref]
    a.claims["baseline_comm_share"] = points(base.dropna(subset=["comm_share"]), "comm_share", "model", "system")
    if (t.system == ref).any():
        a.claims["predictor_share"] = points(t[t.system == ref].dropna(subset=["predictor_share"]),
                                             "predictor_share", "model")
    else:
        comp = _companion_predictor_share(sweep, ref, patterns, exp.get("predictor_sweep", "end_to_end"))
        if comp.empty:
            a.notes.append(f"predictor share needs system {ref!r} in the sweep or a complete "
                           f"{exp.get('predictor_sweep', 'end_to_end')} sweep (conf/experiment/time_breakdown.yaml)")
        else:
            a.tables[f"{ref}'s predictor share (modelled communication of its predictor ops / its total time)"] = comp
            a.claims["predictor_share"] = points(comp.dropna(subset=["predictor_share"]), "predictor_share", "model")
            a.notes.append(f"predictor share from the {comp.source.iloc[0]}: cost mode, so it is a share of "
                           f"modelled communication time (compute is not measured there)")
    parts = t.rename(columns={"compute_s": "compute (measured)", "comm_s": "communication (modelled)"}).melt(
        id_vars=["model", "system"], value_vars=["compute (measured)", "communication (modelled)"],
        var_name="component", value_name="seconds")
    a.figures += [
        Figure("time_breakdown_share", "bars", every, x="network", y="comm_share", hue="system", panel="model",
               xlabel="network preset", ylabel="communication share of runtime (fraction)", band_metric=None,
               title="time_breakdown: communication share (measured compute + modelled communication)"),
        Figure("time_breakdown_seconds", "bars", parts, x="system", y="seconds", hue="component", panel="model",
               xlabel="system", ylabel="time per request (s)", title=f"time_breakdown: compute vs communication ({net})"),
    ]
    return a


def plaintext_quality(sweep: Sweep, ref: str, results: Path = REPO_ROOT / "results") -> pd.DataFrame:
    """Perplexity and next-token accuracy of the plaintext model with each system's approximations or masks.

    The client sees only tokens, so quality is measured in plaintext on held-out windows of the test
    plays, from the committed results/accuracy/<model>.csv (`comet accuracy --model <model>`): every
    system on the same windows, so `quality_dense_ppl` is one number per model. A baseline's row is its
    variant `all`; Comet's is `ffn+heads` when the sweep ran Comet with system.heads, else `ffn`.
    A model without a table, or a system without its row there, gets NaN (and a note, real_models).
    """
    heads = any(bool(OmegaConf.select(j.cfg, "system.heads", default=False)) for j in sweep.done_jobs
                if str(OmegaConf.select(j.cfg, "system.name", default="")) == ref)
    comet_variant = "ffn+heads" if heads else "ffn"
    rows = []
    for f in sorted((results / "accuracy").glob("*.csv")):
        acc = pd.read_csv(f)
        model = f.stem
        for r in acc.itertuples():
            if r.variant != (comet_variant if r.system == ref else "exact" if r.system == "dense" else "all"):
                continue
            rows.append(dict(model=model, system=r.system, quality_ppl=r.perplexity,
                             quality_next_token_acc=r.next_token_accuracy, quality_dense_ppl=r.perplexity_dense,
                             quality_windows=f"{r.windows} x {r.window_tokens}",
                             quality_source=f"{f.relative_to(results.parent)} ({r.variant})"))
    q = pd.DataFrame(rows, columns=["model", "system", "quality_ppl", "quality_next_token_acc", "quality_dense_ppl",
                                    "quality_windows", "quality_source"])
    q["quality_ppl_change_pct"] = 100 * (q.quality_ppl / q.quality_dense_ppl - 1)
    return q


def real_models(sweep: Sweep, exp: dict) -> Analysis:
    ref = exp.get("reference", "comet")
    df = pdata.sweep_metrics(sweep)
    a = Analysis(df)
    t = totals(df)
    t = gb(gb(t), "offline_bytes")
    cols = [c for c in ("model", "system", "gen_tokens", "tokens_match", "max_logit_err",
                        "predicted_token_agreement", "online_GB",
                        "offline_GB", "rounds", "compute_s", "comm_s", "total_s", "plaintext_s") if c in t]
    t = t.merge(plaintext_quality(sweep, ref), on=["model", "system"], how="left")
    missing = t[t.quality_ppl.isna() & t.quality_source.isna()]
    if len(missing):
        a.notes.append("no plaintext quality for " + ", ".join(f"{r.model}/{r.system}" for r in missing.itertuples())
                       + " in results/accuracy/<model>.csv (make it with `comet accuracy --model <model>`)")
    cols += [c for c in t.columns if ("ppl" in c or "perplexity" in c or c.startswith("quality_")) and c not in cols]
    a.tables["per model and system (exact mode, lan)"] = t[cols]
    a.figures += time_and_bytes_figures("real_models", t)
    sp = advantage(t, ref, ["model"], "total_s", "speedup")
    sc = advantage(t, ref, ["model"], "comm_s", "speedup_comm_only")
    a.notes += missing_reference(t, ref, "speedups", "real_models")
    if not sp.empty:
        a.tables[f"{ref} vs each baseline"] = sp.merge(
            advantage(t, ref, ["model"], "online_bytes", "comm_reduction"), on=["model", "baseline"])
        a.claims["speedup"] = points(sp, "speedup", "model", "baseline", fmt=VS)
        a.claims["speedup_comm_only"] = points(sc, "speedup_comm_only", "model", "baseline", fmt=VS)
    return a


MIN_GAIN = 0.1   # mask_reuse: the per-call speedup gain below which its surviving fraction is not reported


def mask_reuse(sweep: Sweep, exp: dict) -> Analysis:
    ref = exp.get("reference", "comet")
    key = exp.get("x_key", "engine.reuse_weight_masks")
    df = add_config_column(sweep, pdata.sweep_metrics(sweep), key, "reuse_weight_masks")
    a = Analysis(df)
    t = gb(totals(df))
    a.tables["per system and mask policy (phase total, lan)"] = t[["model", "system", "reuse_weight_masks",
                                                                   "online_GB", "rounds", "total_s"]]
    own = t.pivot_table(index=["model", "system"], columns="reuse_weight_masks", values="total_s").reset_index()
    if True in own.columns and False in own.columns:
        own["reuse_speedup"] = own[False] / own[True]
        own = own.rename(columns={False: "masks per call (s)", True: "masks once (s)"})
        a.tables["each system's own gain from opening weight masks once (time per call / time once)"] = own
    t["policy"] = t.reuse_weight_masks.map({True: "masks once per request", False: "masks per call"})
    a.figures.append(Figure("mask_reuse_time", "bars", t, x="system", y="total_s", hue="policy", panel="model",
                            xlabel="system", ylabel="time per request (s)", logy=True,
                            title="mask_reuse: weight masks per call vs once per request"))
    sp = advantage(t, ref, ["model", "reuse_weight_masks"], "total_s", "speedup")
    a.notes += missing_reference(t, ref, "Comet's advantage", "mask_reuse")
    if not sp.empty:
        piv = sp.pivot_table(index=["model", "baseline"], columns="reuse_weight_masks", values="speedup").reset_index()
        if True in piv.columns and False in piv.columns:
            # a fraction of a gain below MIN_GAIN is noise over a near-zero denominator (44x of a 0.99x)
            gain = piv[False] - 1
            piv["surviving_fraction"] = ((piv[True] - 1) / gain).where(gain >= MIN_GAIN)
        piv = piv.rename(columns={False: "speedup, masks per call", True: "speedup, masks once"})
        a.tables[f"speedup of {ref} per mask policy (surviving_fraction = (speedup once - 1) / "
                 f"(speedup per call - 1), empty where the gain per call is below {MIN_GAIN:.0%})"] = piv
        a.claims["speedup_reuse"] = points(sp[sp.reuse_weight_masks == True], "speedup", "model", "baseline",  # noqa: E712
                                           fmt=VS)
        sp["policy"] = sp.reuse_weight_masks.map({True: "masks once per request", False: "masks per call"})
        a.figures.append(Figure("mask_reuse_speedup", "bars", sp, x="baseline", y="speedup", hue="policy",
                                panel="model", xlabel="baseline", ylabel=f"speedup of {ref} (x)", hline=1.0,
                                title=f"mask_reuse: {ref}'s speedup with per-call vs per-request masks"))
    return a


from plotting.design_space import design_space, design_space_from_data  # noqa: E402 (its own module)

ARTIFACTS: dict[str, Artifact] = {a.name: a for a in (
    Artifact("end_to_end", "End-to-end speedup and communication vs six systems, four LLMs", end_to_end,
             from_data=end_to_end_from_data),
    Artifact("bandwidth_sweep", "Speedup across bandwidths 100 Mbps - 5 Gbps", bandwidth_sweep,
             accepts=("end_to_end",), from_data=bandwidth_sweep_from_data),
    Artifact("ffn_sparsity", "FFN speedup vs FFN sparsity", ffn_sparsity, from_data=ffn_sparsity_from_data),
    Artifact("predictor_accuracy", "Predictor recall, threshold and accuracy", predictor_accuracy,
             from_data=predictor_accuracy_from_data),
    Artifact("shuffle_vs_oblivious", "Shuffle-based vs oblivious indexing", shuffle_vs_oblivious,
             from_data=shuffle_vs_oblivious_from_data),
    Artifact("kv_refill_ablation", "KV-cache refill: naive, merged, merged + prefetch", kv_refill_ablation,
             from_data=kv_refill_ablation_from_data),
    Artifact("output_length", "Output length 1-16 tokens", output_length),
    Artifact("time_breakdown", "Communication share of runtime; predictor share", time_breakdown),
    Artifact("real_models", "Real models in exact mode", real_models),
    Artifact("mask_reuse", "Weight masks opened once per request (beyond the paper)", mask_reuse),
    Artifact("design_space", "Comet's deployment regimes against the strongest dense (beyond the paper)",
             design_space, from_data=design_space_from_data),
)}

