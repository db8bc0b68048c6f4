#!/usr/bin/env python3
"""KV refill ablation (Comet part 2): naive refill vs merged vs merged + prefetch, for 1-16 new tokens.

1. One exact run of `system=comet` (FFN + heads) on the model with the longest output: its revealed masks
   (sparsity.csv: FFN counts and the permuted KV-group masks) are the masks of every variant.
2. For each output length and variant, the same protocol code in cost mode replays those masks
   (`system.mask_trace=`), so the variants differ only in how missing K/V are handled: the ledger of a
   replayed run equals the exact run's for the same masks (tests/test_comet.py).
Variants: naive (one extra matmul per group with misses), merged (misses join the step's K/V product),
merged + prefetch (cost-benefit rule with the profile's reactivation; and `always`).
Columns: online bytes and rounds (whole request and attention only), modelled time on lan and wan-100m,
cache hits / misses / prefetched entries and the hit rate (hits / (hits + misses) over active groups'
past positions).

Usage: python benchmarks/kv_refill_ablation.py [--model shakespeare-opt] [--out results/kv_refill_hit_rate/shakespeare-opt.csv]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from comet_core.results.machine import refuse_existing  # noqa: E402
log = logging.getLogger("kv_ablation")

VARIANTS = {
    "naive": ("system.kv_refill=naive", "system.kv_prefetch=never"),
    "merged": ("system.kv_refill=merged", "system.kv_prefetch=never"),
    "merged+prefetch(cost_benefit)": ("system.kv_refill=merged", "system.kv_prefetch=cost_benefit"),
    "merged+prefetch(always)": ("system.kv_refill=merged", "system.kv_prefetch=always"),
}
LENGTHS = (1, 2, 4, 8, 16)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shakespeare-opt")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--out", default="results/kv_refill_hit_rate/shakespeare-opt.csv")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    out = Path(a.out)
    if refuse_existing(out, a.overwrite):
        return 2
    from hydra import compose, initialize_config_dir

    from experiments.run import run

    base = [f"model={a.model}", "system=comet", f"prompt_len={a.prompt_len}", "save_ledger=false", "seed=0"]
    rows = []
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"), tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        log.info("exact run, %d tokens: the masks every variant replays", max(LENGTHS))
        run(compose("config", overrides=[*base, f"gen_tokens={max(LENGTHS)}"]), tmp / "exact")
        trace = tmp / "exact" / "sparsity.csv"
        for n in LENGTHS:
            for name, over in VARIANTS.items():
                d = tmp / f"{n}-{len(rows)}"
                s = run(compose("config", overrides=[*base, f"gen_tokens={n}", "mode=cost", *over,
                                                     f"system.mask_trace={trace}"]), d)
                m = s["metrics"]
                ops = pd.read_csv(d / "ops.csv")
                kv = pd.read_csv(d / "kv.csv")
                attn = ops[ops.op.str.startswith("attn.")]
                row = dict(model=a.model, gen_tokens=n, variant=name)
                for net in ("lan", "wan-100m"):
                    t = m[(m.network == net) & (m.phase == "total")].iloc[0]
                    row[f"comm_s_{net}"] = float(t.comm_s)
                t = m[(m.network == "lan") & (m.phase == "total")].iloc[0]
                row.update(online_bytes=int(t.online_bytes), rounds=int(t.rounds), offline_bytes=int(t.offline_bytes),
                           attn_online_bytes=int(attn.online_bytes.sum()), attn_rounds=int(attn.rounds.sum()),
                           kv_hits=int(kv.hits.sum()), kv_misses=int(kv.misses.sum()),
                           kv_prefetched=int(kv.prefetched.sum()),
                           hit_rate=float(kv.hits.sum() / max(1, kv.hits.sum() + kv.misses.sum())))
                rows.append(row)
                log.info("%2d tokens %-30s %s bytes, %d rounds, hit rate %.3f", n, name, f"{row['online_bytes']:,}",
                         row["rounds"], row["hit_rate"])
    df = pd.DataFrame(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(df[["gen_tokens", "variant", "online_bytes", "rounds", "attn_online_bytes", "attn_rounds", "comm_s_lan",
              "comm_s_wan-100m", "hit_rate", "kv_misses", "kv_prefetched"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
