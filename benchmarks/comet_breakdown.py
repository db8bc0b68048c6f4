#!/usr/bin/env python3
"""Where Comet's savings come from: two run folders (dense and comet, same model, prompt and tokens)
compared part by part from their ops.csv (online bytes and rounds) and metrics.csv (modelled time).

Parts (op names of the ledger):
  ffn            dense: fc1 / gate / up, activation, gate product, fc2 / down;  comet: somm, act, simm
  ffn_predictor  comet: ffn.predict + ffn.reveal (the predictor in MPC and the mask opening)
  ffn_shuffle    comet: ffn.shuffle (per request, stage setup)
  attention      dense: q, k, v, rope / scale, scores, softmax, context, out;  comet: qkv (with merged
                 refills), rope / scale, scores, softmax, context, out, refill (naive)
  head_predictor comet: attn.predict + attn.reveal
  attn_shuffle   comet: attn.shuffle (per request)
  other          embedding, norms, LM head (the same protocols in both)
A part's saving is dense bytes - comet bytes (negative for Comet's own overheads); the shares are of the
total saving.

Usage: python benchmarks/comet_breakdown.py DENSE_DIR COMET_DIR [--out results/.../breakdown.csv]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

PARTS = {
    "ffn": ("ffn.fc1", "ffn.fc2", "ffn.gate", "ffn.up", "ffn.gate_up", "ffn.down", "ffn.gate_mul", "ffn.act", "ffn.somm", "ffn.simm",
            "ffn.select"),
    "ffn_predictor": ("ffn.predict", "ffn.reveal"),
    "ffn_shuffle": ("ffn.shuffle",),
    "attention": ("attn.q", "attn.k", "attn.v", "attn.qkv", "attn.rope", "attn.scale", "attn.scores", "attn.softmax",
                  "attn.context", "attn.out", "attn.refill"),
    "head_predictor": ("attn.predict", "attn.reveal"),
    "attn_shuffle": ("attn.shuffle",),
}


def part_of(op: str) -> str:
    for part, ops in PARTS.items():
        if op in ops:
            return part
    return "other"


def breakdown(dense_dir: Path, comet_dir: Path) -> pd.DataFrame:
    frames = []
    for name, d in (("dense", dense_dir), ("comet", comet_dir)):
        ops = pd.read_csv(d / "ops.csv")
        ops["part"] = ops.op.map(part_of)
        g = ops.groupby("part").agg(online_bytes=("online_bytes", "sum"), rounds=("rounds", "sum"))
        frames.append(g.add_prefix(f"{name}_"))
    df = pd.concat(frames, axis=1).fillna(0).astype("int64")
    df = df.reindex([*PARTS, "other"]).fillna(0).astype("int64")
    df["saving_bytes"] = df.dense_online_bytes - df.comet_online_bytes
    total = int(df.saving_bytes.sum())
    df["share_of_saving"] = df.saving_bytes / total if total else float("nan")
    df.loc["total"] = df.sum(numeric_only=True)
    df.loc["total", "share_of_saving"] = 1.0
    m = {n: pd.read_csv(d / "metrics.csv") for n, d in (("dense", dense_dir), ("comet", comet_dir))}
    for n, mm in m.items():
        tot = mm[mm.phase == "total"].set_index("network")
        for net in ("lan", "wan-100m"):
            if net in tot.index:
                df.loc["total", f"{n}_total_s_{net}"] = float(tot.loc[net, "total_s"])
    return df.reset_index().rename(columns={"index": "part"})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dense")
    ap.add_argument("comet")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    df = breakdown(Path(a.dense), Path(a.comet))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(a.out, index=False)
    with pd.option_context("display.width", 200):
        print(df.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    tot = df[df.part == "total"].iloc[0]
    print(f"online bytes: dense {tot.dense_online_bytes:,.0f}, comet {tot.comet_online_bytes:,.0f} "
          f"({tot.dense_online_bytes / tot.comet_online_bytes:.2f}x less)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
