"""One OPT-1.3B FFN block priced with each measured predictor of a cost_accuracy.csv (issue 25, 1a / 1c).

Per row (labels, rank, bits, block) of shakespeare-opt's table: the same predictor shape at OPT-1.3B's
size (rank scaled by d: r x 2048 / 256, so rank / d is what was measured), one decode token (T = 1),
weight masks opened on every call, no online shuffle (the permutation paid before the request), the
true FFN density 10% (the paper's 90% sparsity) times the measured predicted / true density of the row;
k rounded up to whole blocks. Comet's bytes and rounds are `ffn_step_cost` (pinned to the ledger by
tests/test_comet.py and tests/test_comet_block.py), dense's `dense_ffn_cost`.

    python -m experiments.predictor_cost results/predictor/shakespeare-opt/cost_accuracy.csv \
        --out results/predictor/shakespeare-opt/opt-1.3b_ffn_cost.csv
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

D, F, TRUE_DENSITY = 2048, 8192, 0.10   # OPT-1.3B's FFN; the paper's ~90% FFN sparsity


def price(rows, d_measured: int = 256):
    """The priced table (a DataFrame) for rows with rank, block, predicted_sparsity, true_sparsity."""
    import pandas as pd
    import torch  # noqa: F401  (the engine's cost mode runs on shapes)

    from comet_core.mpc.engine import MPC, EngineConfig
    from comet_core.systems.comet import ffn_step_cost
    from comet_core.systems.dense import dense_ffn_cost

    m = MPC(EngineConfig(), seed=0, mode="cost")
    dense = dense_ffn_cost(m, 1, D, F, "relu")
    out = []
    for r in rows.itertuples():
        rank = int(round(int(r.rank) * D / d_measured))
        b = int(r.block)
        density = min(1.0, TRUE_DENSITY * (1 - float(r.predicted_sparsity)) / (1 - float(r.true_sparsity)))
        k = min(F, b * math.ceil(F * density / b))
        c = ffn_step_cost(m, 1, D, F, rank, k, False, block=b)
        pred = ffn_step_cost(m, 1, D, F, rank, 0, False, block=b)     # predictor + threshold test + reveal only
        out.append(dict(labels=r.labels, rank=int(r.rank), bits=int(r.bits), block=b, recall=float(r.recall),
                        predicted_sparsity=float(r.predicted_sparsity), opt13b_rank=rank,
                        predicted_density_at_90=k / F, active_neurons=k, comet_online_bytes=c.online_bytes,
                        dense_online_bytes=dense.online_bytes, bytes_ratio=dense.online_bytes / c.online_bytes,
                        comet_rounds=c.rounds, dense_rounds=dense.rounds,
                        predictor_share=pred.online_bytes / c.online_bytes))
    return pd.DataFrame(out)


def main(argv=None) -> int:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    if not a.table.is_file():
        print(f"error: {a.table} does not exist (make it with comet predictor-tradeoff)", file=sys.stderr)
        return 2
    if a.out.exists() and not a.overwrite:
        print(f"error: {a.out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    df = pd.read_csv(a.table)
    df = price(df[df.bits == 64])
    tmp = a.out.with_name(f".{a.out.name}.partial")
    df.to_csv(tmp, index=False, float_format="%.6g")
    tmp.replace(a.out)
    print(df[["labels", "rank", "block", "recall", "opt13b_rank", "predicted_density_at_90", "bytes_ratio",
              "predictor_share"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
