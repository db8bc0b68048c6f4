#!/usr/bin/env python3
"""Measured wall time over an emulated link vs the network model, for the default model (issue 13).

The parties run as separate processes (`transport=tcp`); P0 and P1 sit in two network namespaces whose
veth link the kernel shapes (tbf, both directions) and whose one-way latency netem adds where the kernel
has it, else the parties' shaper (`transport.emulate=netns`, comet_core/comm/netns.py). Runs, in order:

1. baseline: the same tcp run without emulation (all roles on loopback): P0's measured time per stage
   is the *compute* of the tcp setting (computation, serialisation, TLS, loopback copies);
2. one run per emulated network (default: emu-100m-10ms, emu-1g-1ms): P0's measured time per stage;
3. the baseline again (the machine is shared: the two baselines bracket the emulated runs; their mean
   is the compute term and their difference is reported as `compute_spread_s`).

Per network and stage (prefill, decode, total):
    model_s    = compute_s + rounds * latency_s + busiest_direction_bytes * 8 / bandwidth_bps
                 (the toolkit's own comm_s for that network, from the emulated run's metrics.csv)
    measured_s = P0's wall time of the stage over the emulated link
    gap_pct    = 100 * (measured_s / model_s - 1); comm_gap_pct the same for the network part alone
                 (measured_s - compute_s vs the modelled comm_s).
The machine is shared and the compute of two runs can differ by more than the network time; so each
run also measures, in P0, the time spent inside the P0-P1 link's send/recv per stage (`wait_s`: shaper
sleep, transfer, waiting for P1), and the same-run model replaces the baselines' compute by this run's own:
    model_same_run_s = (measured_s - wait_s) + baseline_wait_s + comm_s
(baseline_wait_s: the baselines' mean wait, i.e. P1 being slower and the loopback transfer, which an
unshaped link has too); gap_same_run_pct = 100 * (measured_s / model_same_run_s - 1).
The CSV also records rounds and bytes (equal in every run: same seed, a check), the bytes tbf passed,
the time the shaper slept, who added the latency, the CPU, the load average before and after, and
every command. It refuses to overwrite an existing file. Needs root (network namespaces).

With --raw-link it measures the link alone instead (no comet run; default --out results/emulated_link/link_alone.csv):
per network preset, plain TCP transfers of --raw-bytes each way across the tbf-shaped link, and the same link
unshaped as the control; payload_bps against the preset's rate (tbf counts the 66 header bytes of each
1514-byte frame, so ~95% is the ceiling), the tbf counters, the CPU and the load. This is the measurement
tests/test_netns.py leaves out (a busy machine slows a transfer; the test checks the kernel's counters).

Usage: python benchmarks/emulated_link.py [--networks emu-100m-10ms,emu-1g-1ms] [--out results/emulated_link/comet_runs.csv]
       [--model shakespeare-opt] [--extra key=value ...]
       python benchmarks/emulated_link.py --raw-link [--raw-bytes 4000000] [--networks ...] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from comet_core.results.machine import cpu_info, refuse_existing  # noqa: E402

log = logging.getLogger("emulated_link")
PHASES = ("prefill", "decode", "total")


def run_once(name: str, overrides: list[str], runs_dir: Path) -> tuple[Path, str]:
    """One `comet run-experiment transport=tcp ...`; returns its output folder and the command."""
    out = runs_dir / name
    cmd = [sys.executable, "-m", "cli.main", "run-experiment", *overrides, f"output_dir={out}"]
    shown = "comet run-experiment " + " ".join(shlex.quote(o) for o in overrides)
    log.info("%s: %s", name, shown)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + os.environ["PYTHONPATH"]
                                                    if os.environ.get("PYTHONPATH") else "")}
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        tail = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error")] or r.stderr.strip().splitlines()[-3:]
        raise SystemExit(f"error: run {name} failed ({' '.join(tail)}); command: {shown}")
    log.info("%s: done in %.0f s", name, time.perf_counter() - t0)
    return out, shown


def waits(folder: Path) -> dict:
    """P0's seconds inside the P0-P1 link's send/recv per stage, and their total."""
    info = json.loads((folder / "run_info.json").read_text())
    w = ((info.get("transport") or {}).get("link_wait_s_by_stage") or {}).get("p0") or {}
    return {**w, "total": sum(w.values())}


def stage_rows(folder: Path, network: str) -> pd.DataFrame:
    m = pd.read_csv(folder / "metrics.csv")
    m = m[(m.network == network) & m.phase.isin(PHASES)].set_index("phase")
    if m.empty:
        raise SystemExit(f"error: {folder}/metrics.csv has no rows for network {network}")
    return m


def raw_link_rows(nets: list[str], nbytes: int) -> list[dict]:
    """One row per network and direction (and the unshaped control): the payload rate of a plain TCP transfer."""
    from omegaconf import OmegaConf

    from comet_core.comm.netns import EmulatedLink, tcp_throughput

    cpu, _ = cpu_info()
    rows = []
    for net in nets:
        rate = float(OmegaConf.load(REPO / "conf" / "network" / f"{net}.yaml").bandwidth_bps)
        with EmulatedLink(None) as link:
            load = os.getloadavg()
            runs = [("unshaped", "p0", "p1", tcp_throughput(link, nbytes, "p0", "p1"))]
            link.set_rate(rate)
            runs += [("shaped", s, d, tcp_throughput(link, nbytes, s, d)) for s, d in (("p0", "p1"), ("p1", "p0"))]
            qdisc = link.qdiscs()
        for kind, src, dst, bps in runs:
            rows.append(dict(network=net, link=kind, src=src, dst=dst, bytes=nbytes, rate_bps=rate,
                             payload_bps=round(bps), payload_over_rate=round(bps / rate, 4),
                             tbf_after=" | ".join(ln.strip() for ln in qdisc.splitlines() if ln.strip()),
                             cpu=cpu, cpu_count=os.cpu_count(), load_before=" ".join(f"{x:.2f}" for x in load),
                             load_after=" ".join(f"{x:.2f}" for x in os.getloadavg()),
                             command=f"python benchmarks/emulated_link.py --raw-link --raw-bytes {nbytes} "
                                     f"--networks {','.join(nets)}"))
        log.info("%s: %s", net, ", ".join(f"{k} {s}->{d} {b / 1e6:.1f} Mbit/s" for k, s, d, b in runs))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", default="emu-100m-10ms,emu-1g-1ms", help="network presets to emulate (conf/network)")
    ap.add_argument("--model", default="shakespeare-opt")
    ap.add_argument("--out", default="results/emulated_link/comet_runs.csv")
    ap.add_argument("--runs-dir", default=None, help="where the run folders go (default outputs/emulated_link/<time>)")
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides for every run (e.g. gen_tokens=2)")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--raw-link", action="store_true", help="measure the shaped link alone (no comet run)")
    ap.add_argument("--raw-bytes", type=int, default=4_000_000, help="bytes per --raw-link transfer")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", stream=sys.stderr)
    if a.raw_link and a.out == ap.get_default("out"):
        a.out = "results/emulated_link/link_alone.csv"
    out = Path(a.out)
    if refuse_existing(out, a.overwrite):
        return 2
    from comet_core.comm.netns import LinkError, check_prerequisites

    try:
        check_prerequisites()
    except LinkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.raw_link:
        df = pd.DataFrame(raw_link_rows([n for n in a.networks.split(",") if n], a.raw_bytes))
        out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(out, index=False)
        print(df[["network", "link", "src", "dst", "rate_bps", "payload_bps", "payload_over_rate"]].to_string(index=False))
        print(f"wrote {out}")
        return 0
    runs_dir = Path(a.runs_dir or REPO / "outputs" / "emulated_link" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    runs_dir.mkdir(parents=True, exist_ok=True)
    # seed=0: the runs' ledgers must be equal (a check), so the seed stays: reproducible and INSECURE
    base = [f"model={a.model}", "transport=tcp", "transport.check_inprocess=false", "save_ledger=false", "seed=0",
            "transport.insecure_seed=true", *a.extra]
    nets = [n for n in a.networks.split(",") if n]
    load_before = os.getloadavg()
    folders, commands = {}, {}
    folders["baseline1"], commands["baseline1"] = run_once("baseline1", [*base, "network=lan"], runs_dir)
    for net in nets:
        folders[net], commands[net] = run_once(net, [*base, "transport.emulate=netns", f"network={net}"], runs_dir)
    folders["baseline2"], commands["baseline2"] = run_once("baseline2", [*base, "network=lan"], runs_dir)
    load_after = os.getloadavg()

    b1, b2 = stage_rows(folders["baseline1"], "lan"), stage_rows(folders["baseline2"], "lan")
    bw1, bw2 = waits(folders["baseline1"]), waits(folders["baseline2"])
    cpu, ext = cpu_info()
    rows = []
    for net in nets:
        m = stage_rows(folders[net], net)
        info = json.loads((folders[net] / "run_info.json").read_text())
        t = info.get("transport") or {}
        link = t.get("link") or {}
        shaper = (t.get("shaper") or {}).get("p0") or {}
        w = waits(folders[net])
        tbf_sent = sum(int(ln.split()[1]) for ln in (link.get("qdisc_after") or "").splitlines()
                       if ln.strip().startswith("Sent"))
        for ph in PHASES:
            r = m.loc[ph]
            for b in (b1, b2):
                if (int(b.loc[ph].rounds), int(b.loc[ph].online_bytes)) != (int(r.rounds), int(r.online_bytes)):
                    raise SystemExit(f"error: the baseline's {ph} ledger differs from {net}'s (rounds/bytes): "
                                     "the runs are not the same computation")
            compute = (float(b1.loc[ph].compute_s) + float(b2.loc[ph].compute_s)) / 2
            model_comm = float(r.comm_s)
            measured = float(r.compute_s)            # tcp runs: P0's measured wall time of the stage
            model = compute + model_comm
            base_wait = (bw1.get(ph, 0.0) + bw2.get(ph, 0.0)) / 2
            same_run = measured - w.get(ph, 0.0) + base_wait + model_comm
            rows.append(dict(
                network=net, bandwidth_bps=float(r.bandwidth_bps), latency_s=float(r.latency_s),
                latency_by=link.get("latency_by"), phase=ph, rounds=int(r.rounds),
                online_bytes=int(r.online_bytes), busiest_direction_bytes=int(r.busiest_direction_bytes),
                socket_bytes=int(r.socket_bytes) if "socket_bytes" in r and pd.notna(r.socket_bytes) else None,
                compute_s=round(compute, 3),
                compute_spread_s=round(abs(float(b1.loc[ph].compute_s) - float(b2.loc[ph].compute_s)), 3),
                model_comm_s=round(model_comm, 3), model_s=round(model, 3), measured_s=round(measured, 3),
                gap_pct=round(100 * (measured / model - 1), 2),
                measured_comm_s=round(measured - compute, 3),
                comm_gap_pct=round(100 * ((measured - compute) / model_comm - 1), 2) if model_comm > 0 else None,
                wait_s=round(w.get(ph, 0.0), 3), baseline_wait_s=round(base_wait, 3),
                model_same_run_s=round(same_run, 3), gap_same_run_pct=round(100 * (measured / same_run - 1), 2),
                shaper_slept_s=shaper.get("delayed_s") if ph == "total" else None,
                shaper_messages=shaper.get("messages") if ph == "total" else None,
                tbf_sent_bytes=tbf_sent if ph == "total" else None,
                tbf=json.dumps(link.get("tbf")) if link else None,
                cpu=cpu, cpu_count=os.cpu_count(), load_before=" ".join(f"{x:.2f}" for x in load_before),
                load_after=" ".join(f"{x:.2f}" for x in load_after),
                command=commands[net], baseline_command=commands["baseline1"],
                git_rev=str(pd.read_csv(folders[net] / "metrics.csv").git_rev.iloc[0]),
            ))
    df = pd.DataFrame(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(df[["network", "phase", "rounds", "compute_s", "compute_spread_s", "model_comm_s", "model_s", "measured_s",
              "gap_pct", "comm_gap_pct", "wait_s", "baseline_wait_s", "model_same_run_s",
              "gap_same_run_pct"]].to_string(index=False))
    print(f"wrote {out} (run folders in {runs_dir})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
