#!/usr/bin/env python3
"""The reduced-ring threshold test and ReLU (system.predictor_bits, engine.relu_bits) on one OPT-1.3B FFN block.

Cost mode (the systems' own code on shapes): d = 2048, F = 8192, one decode token (T = 1), 90% predicted
sparsity (k = 819), predictor rank 512 (d / 4) and 64, weight masks re-opened per call (`call`) or once
(`request`: the masks of every weight registered and opened before the measured step). Rows per
(masks, rank, bits): Comet's per-token step without the per-request shuffle (ffn.predict, ffn.reveal,
ffn.somm, ffn.act, ffn.simm) with the threshold test and its sparse ReLU on Z_2^bits, and dense's FFN with
its ReLU on Z_2^bits (engine.relu_bits = bits: the best Comet faces the best dense; under fss both keep the
64-bit ReLU, fss.relu's single round, which a b-bit sign plus a Beaver product cannot beat online). Columns: online bytes,
rounds, modelled time on lan (5 Gbps, 0.8 ms), the bytes of the threshold test (ffn.reveal), and the ratios;
under engine.comparison=circuit and fss.

`--flips RUN [RUN ...]`: instead, summarise exact Comet runs (one per system.predictor_bits) into flips.csv:
per run the FFN mask flips against the float predictor (sparsity.csv `flips`: units whose private mask
differs from the float predictor's on the same decoded input), their largest |score - threshold|, the
revealed active units, the mean Jaccard index against plaintext_predicted, tokens == masked plaintext, and
the run's online bytes and rounds (metrics.csv, lan, total).

Usage: python benchmarks/predictor_bits.py [--out results/predictor_bits/cost.csv] [--overwrite]
       python benchmarks/predictor_bits.py --flips RUN... [--out results/predictor_bits/flips.csv] [--overwrite]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from comet_core.comm.network import Network  # noqa: E402
from comet_core.mpc.engine import MPC, EngineConfig  # noqa: E402
from comet_core.mpc.shape import Shape  # noqa: E402
from comet_core.results.machine import refuse_existing  # noqa: E402
from comet_core.systems.comet import CometState, CometSystem, LayerRequest  # noqa: E402
from comet_core.systems.dense import DenseSystem  # noqa: E402

LAN = Network("lan", 5e9, 8e-4)
D, F, SPARSITY = 2048, 8192, 0.9


def _cost(m: MPC, fn, *args) -> dict:
    mark = m.ledger.mark()
    fn(*args)
    rows = m.ledger.rows[mark[0]:]
    on = [r for r in rows if r[0] == "online"]
    busiest = max(sum(r[9] for r in on if r[5] == s) for s in ("P0", "P1")) if on else 0
    rounds = len({r[10] for r in on})
    reveal = sum(r[9] for r in on if r[3] == "ffn.reveal")
    return dict(online_bytes=sum(r[9] for r in on), rounds=rounds, reveal_bytes=reveal,
                lan_s=LAN.comm_seconds(rounds, busiest))


def measure(masks: str, rank: int, bits: int, comparison: str) -> list[dict]:
    relu_bits = bits if comparison == "circuit" else 64   # fss: the 1-round 64-bit ReLU is the cheaper online
    m = MPC(EngineConfig(reuse_weight_masks=masks == "request", relu_bits=relu_bits, comparison=comparison), seed=0,
            mode="cost")
    f = lambda *s: m.share(Shape(s, torch.float32), owner="model_owner")  # noqa: E731
    reg = m.register_weight
    lw = dict(w1=reg(f(D, F)), b1=f(F), w2=reg(f(F, D)), b2=f(D))
    pred = dict(w1=reg(f(D, rank)), b1=f(rank), w2=reg(f(rank, F)), b2=f(F))
    k = int(round(F * (1 - SPARSITY)))
    sysm = CometSystem(None)
    sysm.predictors, sysm.thresholds, sysm.predictor_bits = [pred], [0.0], bits
    sysm.counts = lambda layer, step, n: k
    req = LayerRequest(perm=None, w_in=lw["w1"], b_in=lw["b1"], w_out=lw["w2"], p2=pred["w2"], pb2=pred["b2"])
    sysm.state = CometState(request=[req])
    dense = DenseSystem()
    meta = {"act": "relu"}
    out = []
    with m.inference():
        for step in range(2 if masks == "request" else 1):   # request: the masks opened at step 0, priced at 1
            x = m.share(Shape((1, D), torch.float32))
            c = _cost(m, sysm.ffn, x, lw, meta, 0)
            dn = _cost(m, dense.ffn, x, lw, meta, 0)
    for system, v in (("comet", c), ("dense", dn)):
        out.append(dict(comparison=comparison, masks=masks, rank=rank, bits=bits, relu_bits=relu_bits, system=system, **v))
    return out


def flips(runs: list[str]) -> pd.DataFrame:
    import yaml

    rows = []
    for run in map(Path, runs):
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        sp = pd.read_csv(run / "sparsity.csv")
        sp = sp[sp.kind == "ffn"]
        met = pd.read_csv(run / "metrics.csv")
        tot = met[(met.network == "lan") & (met.phase == "total")].iloc[0]
        rows.append(dict(model=cfg["model"]["name"], predictor_bits=int(cfg["system"].get("predictor_bits", 64)),
                         predictor_range=int(cfg["system"].get("predictor_range", 7)), gen_tokens=cfg["gen_tokens"],
                         unit_decisions=int(sp.total.sum()), flips=int(sp.flips.sum()),
                         flip_rate=float(sp.flips.sum() / sp.total.sum()),
                         max_flip_margin=float(sp.max_flip_margin.max()) if sp.flips.sum() else 0.0,
                         band=0.0 if int(cfg["system"].get("predictor_bits", 64)) == 64 else
                         2.0 ** (int(cfg["system"].get("predictor_range", 7)) + 1 - int(cfg["system"]["predictor_bits"])),
                         active=int(sp.active.sum()), jaccard_mean=float(sp.jaccard.mean()),
                         tokens_match=bool(tot.tokens_match), online_bytes=int(tot.online_bytes), rounds=int(tot.rounds),
                         run=str(run)))
    return pd.DataFrame(rows).sort_values("predictor_bits", ascending=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--flips", nargs="+", default=None, help="exact Comet run folders (one per predictor_bits)")
    a = ap.parse_args()
    out = Path(a.out or REPO / "results" / "predictor_bits" / ("flips.csv" if a.flips else "cost.csv"))
    if refuse_existing(out, a.overwrite):
        return 2
    if a.flips:
        df = flips(a.flips)
    else:
        df = _cost_table()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    df.to_csv(tmp, index=False, float_format="%.6g")
    tmp.replace(out)
    print(df.to_string(index=False))
    print(out)
    return 0


def _cost_table() -> pd.DataFrame:
    rows = [r for comparison in ("circuit", "fss") for masks in ("call", "request") for rank in (512, 64)
            for bits in (64, 16, 12, 8) for r in measure(masks, rank, bits, comparison)]
    df = pd.DataFrame(rows)
    dense = df[df.system == "dense"].set_index(["comparison", "masks", "rank", "bits"])
    key = lambda r: (r.comparison, r.masks, r.rank, r.bits)  # noqa: E731
    df["bytes_ratio_vs_dense_same_bits"] = [dense.loc[key(r), "online_bytes"] / r.online_bytes for r in df.itertuples()]
    df["lan_speedup_vs_dense_same_bits"] = [dense.loc[key(r), "lan_s"] / r.lan_s for r in df.itertuples()]
    return df


if __name__ == "__main__":
    sys.exit(main())
