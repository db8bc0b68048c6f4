#!/usr/bin/env python3
"""One FFN block of OPT-1.3B shape under Comet vs dense, exact mode, at controlled predicted sparsity.

Shape: d = 2048, F = 8192 (OPT-1.3B), ReLU, secret weights and predictor (rank r = d / 4 = 512, as conf/system/comet.yaml), one
decode token (T = 1) and a 32-token prefill (T = 32), predicted sparsity 0.5 / 0.7 / 0.9 / 0.95.
The predictor's weights are set so that exactly (1 - s) F real neurons score above its threshold
(W2 = 0, b2 = +-1): its matmuls, comparison and reveal run and cost exactly what a trained one would.

Rows (system):
  dense              the engine's dense FFN (Beaver matmuls, ReLU on all F neurons)
  comet              Comet's step (predict, reveal, SOMM, sparse ReLU, SIMM), shuffle indexing
  comet_oblivious    the oblivious-indexing baseline (CometSystem._ffn_oblivious, sparse/oblivious.py: a fresh
                     shuffle-then-reveal compaction per step): COST MODE (the same protocol code on shapes):
                     bytes and rounds exact, compute not measured
  comet_setup        the per-request oblivious permutation of this FFN's weights (once per request)
Columns: online/offline bytes, rounds, measured compute (both parties in one process, the dealer's work
included), modelled communication and total time on `lan` (5 Gbps, 0.8 ms) and `wan-100m`
(100 Mbps, 80 ms), the speedup over dense, the ceiling 1 / (1 - s) (zero overhead), and the part of
Comet's bytes spent in the predictor and the reveal. The weight masks are re-opened on every call in
both systems (engine.reuse_weight_masks=false, the published baselines' policy).

Usage: python benchmarks/comet_ffn.py [--out results/comet_ffn/opt-1.3b.csv] [--overwrite] [--d 2048 --ffn 8192]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from comet_core.results.machine import cpu_info, refuse_existing  # noqa: E402
from comet_core.comm.network import Network  # noqa: E402
from comet_core.mpc.engine import MPC, EngineConfig  # noqa: E402
from comet_core.mpc.shape import Shape  # noqa: E402
from comet_core.predictor.model import LowRankPredictor  # noqa: E402
from comet_core.systems.comet import CometState, CometSystem  # noqa: E402
from comet_core.systems.dense import DenseSystem  # noqa: E402

log = logging.getLogger("comet_ffn")
NETS = (Network("lan", 5e9, 8e-4), Network("wan-100m", 1e8, 8e-2))
SPARSITIES = (0.5, 0.7, 0.9, 0.95)


def _measure(m: MPC, fn, *args):
    """(result, online bytes, offline bytes, rounds, busiest-direction bytes, seconds, per-op bytes)."""
    mark = m.ledger.mark()
    t0 = time.perf_counter()
    out = fn(*args)
    dt = time.perf_counter() - t0
    rows = m.ledger.rows[mark[0]:]
    on = [r for r in rows if r[0] == "online"]
    p01 = sum(r[9] for r in on if r[5] == "P0")
    p10 = sum(r[9] for r in on if r[5] == "P1")
    by_op: dict[str, int] = {}
    for r in on:
        by_op[r[3]] = by_op.get(r[3], 0) + r[9]
    off = sum(r[9] for r in rows if r[0] == "offline")
    return out, p01 + p10, off, m.ledger.round - mark[1], max(p01, p10), dt, by_op


def build(m: MPC, d: int, F: int, r: int, active: torch.Tensor | None, gen: torch.Generator):
    """Shared FFN weights (OPT layout) and a comet system whose predictor marks `active` neurons."""
    def t(*s, scale=0.02):
        if m.is_cost:
            return Shape(s, torch.float32)
        return torch.randn(*s, generator=gen, dtype=torch.float64) * scale
    sh = lambda v: m.register_weight(m.share(v, owner="model_owner", phase="setup"))  # noqa: E731
    lw = dict(w1=sh(t(d, F)), b1=sh(t(F)), w2=sh(t(F, d)), b2=sh(t(d)))
    sysm = CometSystem(None)
    p = LowRankPredictor(d, r, F).double()
    with torch.no_grad():
        p.w1.weight.normal_(0, 0.02, generator=gen)
        p.w1.bias.zero_()
        p.w2.weight.zero_()
        if active is not None:
            p.w2.bias.copy_(torch.where(active, 1.0, -1.0))
    sysm.plain_predictors = [p.float()]
    sysm.thresholds = [0.0]
    plain = dict(w1=p.w1.weight.detach().t(), b1=p.w1.bias.detach(), w2=p.w2.weight.detach().t(),
                 b2=p.w2.bias.detach())
    if m.is_cost:
        plain = {k: Shape(tuple(v.shape), torch.float32) for k, v in plain.items()}
    sysm.predictors = [{k: sh(v) for k, v in plain.items()}]
    return lw, sysm


class _Decoder:  # what start_request reads: .w.layers
    def __init__(self, lw):
        self.w = type("W", (), {"layers": [lw]})()


def run(d: int, F: int, r: int, reps: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    meta = {"act": "relu"}
    rows = []
    for T in (1, 32):
        x_plain = torch.randn(T, d, generator=gen, dtype=torch.float64)
        # dense
        m = MPC(EngineConfig(), seed=1)
        lw, _ = build(m, d, F, r, None, gen)
        x = m.share(x_plain)
        best = None
        for _ in range(reps):
            res = _measure(m, DenseSystem().ffn, x, lw, meta, 0)
            best = res if best is None or res[5] < best[5] else best
        rows.append(_row("dense", T, None, best, d, F, r))
        dense = rows[-1]
        for s in SPARSITIES:
            k = int(round((1 - s) * F))
            active = torch.zeros(F, dtype=torch.bool)
            active[torch.randperm(F, generator=gen)[:k]] = True
            m = MPC(EngineConfig(), seed=2)
            lw, sysm = build(m, d, F, r, active, gen)
            x = m.share(x_plain)
            with m.inference():
                setup = _measure(m, sysm.start_request, m, _Decoder(lw))
                sysm.start_step(0 if T > 1 else 1, T)
                best = None
                for _ in range(reps):
                    sysm.state.records.clear()
                    res = _measure(m, sysm.ffn, x, lw, meta, 0)
                    best = res if best is None or res[5] < best[5] else best
            got = sysm.state.records[-1].active
            assert got == k, f"revealed {got} active neurons, expected {k}"
            rows.append(_row("comet", T, s, best, d, F, r, dense))
            rows.append(_row("comet_setup", T, s, setup, d, F, r))
            # the oblivious variant, cost mode (same code on shapes)
            mc = MPC(EngineConfig(), seed=3, mode="cost")
            lwc, sc = build(mc, d, F, r, None, gen)
            sc.indexing = "oblivious"
            sc.counts = lambda layer, step, n, k=k: k
            sc.state = CometState()
            res = _measure(mc, sc.ffn, mc.share(Shape((T, d), torch.float32)), lwc, meta, 0)
            rows.append(_row("comet_oblivious", T, s, res[:5] + (float("nan"), res[6]), d, F, r, dense))
            log.info("T=%d s=%.2f: comet %.1f MB vs dense %.1f MB; oblivious %.1f MB", T, s,
                     rows[-3]["online_bytes"] / 1e6, dense["online_bytes"] / 1e6, rows[-1]["online_bytes"] / 1e6)
    return rows


def _row(system, T, s, res, d, F, r, dense=None) -> dict:
    _, on, off, rounds, busiest, secs, by_op = res
    row = dict(d=d, ffn_dim=F, predictor_rank=r, tokens=T, stage="decode" if T == 1 else "prefill",
               sparsity=s, system=system, online_bytes=on, offline_bytes=off, rounds=rounds, compute_s=secs,
               predict_bytes=by_op.get("ffn.predict", 0), reveal_bytes=by_op.get("ffn.reveal", 0),
               select_bytes=by_op.get("ffn.select", 0), ceiling=(1 / (1 - s)) if s is not None else float("nan"))
    for net in NETS:
        comm = net.comm_seconds(rounds, busiest)
        row[f"comm_s_{net.name}"] = comm
        row[f"total_s_{net.name}"] = comm + (0.0 if secs != secs else secs)
        if dense is not None:   # no speedup where compute was not measured (cost-mode rows)
            row[f"speedup_{net.name}"] = (dense[f"total_s_{net.name}"] / row[f"total_s_{net.name}"]
                                          if secs == secs else float("nan"))
            row[f"comm_reduction_{net.name}"] = dense[f"comm_s_{net.name}"] / comm
    if dense is not None:
        row["bytes_reduction"] = dense["online_bytes"] / on
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=8192)
    ap.add_argument("--rank", type=int, default=None, help="predictor rank (default d / 4)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/comet_ffn/opt-1.3b.csv")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    out = Path(a.out)
    if refuse_existing(out, a.overwrite):
        return 2
    torch.set_num_threads(a.threads)
    load0 = os.getloadavg()[0]
    rows = run(a.d, a.ffn, a.rank or a.d // 4, a.reps)
    df = pd.DataFrame(rows)
    df["cpu"], df["vector_ext"] = cpu_info()
    df["threads"] = a.threads
    df["load_before"], df["load_after"] = load0, os.getloadavg()[0]
    com = df[df.system == "comet"].set_index(["tokens", "sparsity"])
    obl = df[df.system == "comet_oblivious"].set_index(["tokens", "sparsity"])
    ratio = (obl.online_bytes / com.online_bytes).rename("oblivious_over_shuffle_bytes")
    df = df.merge(ratio.reset_index(), on=["tokens", "sparsity"], how="left")
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    cols = ["tokens", "sparsity", "system", "online_bytes", "rounds", "compute_s", "total_s_lan", "speedup_lan",
            "speedup_wan-100m", "bytes_reduction", "ceiling", "oblivious_over_shuffle_bytes"]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(out.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
