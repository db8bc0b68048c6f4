#!/usr/bin/env python3
"""Per-operator microbenchmark of every system's non-linear operators (dense and the five baselines).

Shapes as results/engine_ops/engine_vs_anchors.csv: activations (ReLU, GeLU, SiLU) 128x3072, softmax 12x128x128 along the
last dim (no mask), LayerNorm 128x768 with secret weight and bias. Each operator runs in exact mode on real
shares, both parties in one process (simulation, dealer truncation, f = 16): 1 warm-up + N timed reps,
median wall time. Inputs (fixed seed, stated in the `input_range` column):
  activations  x ~ U(-6, 6);  softmax  x ~ U(-4, 4);  LayerNorm  x ~ N(0, 1.5^2) (variance ~2.25: inside
  SecFormer's deflated Goldschmidt range, var < 12), weight ~ U(0.5, 1.5), bias ~ N(0, 1)
Columns:
  online_bytes        both directions P0 <-> P1 (ledger); online_bytes_model the part priced by a cost model
                      (Iron/BOLT ideal functionalities, cost_source=model); rounds: online rounds.
  offline_bytes       the dealer's traffic.   seconds: median wall time of one call (in-process, no network).
  max_abs_err         max |opened output - the system's own plaintext closed form| (protocol accuracy).
  max_abs_err_exact   max |opened output - the exact function| (what the approximation costs in accuracy).
  published_*         the per-element figure of shared/reference/baselines.md (CrypTen 2PC accounting,
                      bits sent by one party), converted to this table's convention (both directions:
                      2 x bits / 8 per element, + per-row terms): only where the reference gives one.
The machine is shared and loaded: the CPU model and the 1-minute load average before/after are in
every row; times are indicative only.

Usage: python benchmarks/baseline_ops.py [--reps 3] [--out results/baselines/baseline_ops.csv] [--overwrite]
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from omegaconf import OmegaConf  # noqa: E402

from comet_core.results.machine import cpu_info, refuse_existing  # noqa: E402
from comet_core.mpc.engine import MPC, EngineConfig  # noqa: E402
from comet_core.systems import SYSTEMS, load_system  # noqa: E402

log = logging.getLogger("baseline_ops")
DEFAULT_OUT = "results/baselines/baseline_ops.csv"

# published per-element costs, shared/reference/baselines.md sections 1-3 (CrypTen accounting, bits sent
# by one party per element, + per row): (bits per element, bits per row, rounds, where)
PUBLISHED = {
    ("mpcformer", "gelu"): (128, 0, 1, "baselines.md 3.1: Quad = 1 mul, 128 b, 1 r"),
    ("mpcformer", "softmax"): (128 + 64, 4032, 40, "baselines.md 3.1: 2Quad 128 b + 64 b per elem, recip 4032 b/row, ~40 r"),
    ("secformer", "gelu"): (3008, 0, 19, "baselines.md 3.2: 2 LTZ + open + 2 mul = 3008 b, 19 r"),
    ("secformer", "softmax"): (192, 3200, 28, "baselines.md 3.2: ~192 b/elem + ~3.2 kb/row, ~28 r"),
    ("puma", "gelu"): (4900, 0, 33, "baselines.md 1: CrypTen port of PUMA GeLU ~4.9 kb, ~33 r"),
    ("dense", "gelu"): (2944, 0, 26, "baselines.md 1: CrypTen tanh-GeLU ~2944 b, ~26 r"),
    ("dense", "relu"): (1472, 0, 9, "baselines.md 2: CrypTen ReLU 1472 b, 9 r"),
}

SHAPES = {"activation": (128, 3072), "softmax": (12, 128, 128), "layernorm": (128, 768)}


def _load_avg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _inputs(g: torch.Generator) -> dict:
    act = torch.rand(SHAPES["activation"], generator=g, dtype=torch.float64) * 12 - 6
    sm = torch.rand(SHAPES["softmax"], generator=g, dtype=torch.float64) * 8 - 4
    ln = torch.randn(SHAPES["layernorm"], generator=g, dtype=torch.float64) * 1.5
    w = torch.rand(768, generator=g, dtype=torch.float64) + 0.5
    b = torch.randn(768, generator=g, dtype=torch.float64)
    return dict(act=act, sm=sm, ln=ln, w=w, b=b)


def _cases(system, dense, inp):
    """(op, protocol, shape, input_range, secure(mpc), plain, exact)."""
    out = []
    for kind in ("relu", "gelu", "silu"):
        x = inp["act"]
        out.append((kind, system.act_names[kind], "128x3072", "U(-6,6)",
                    lambda m, x=x, k=kind: system.activation(m.share(x), k),
                    system.plain_activation(x, kind), dense.plain_activation(x, kind)))
    s = inp["sm"]
    out.append(("softmax", system.softmax_name, "12x128x128", "U(-4,4)",
                lambda m: system.softmax(m.share(s), None), system.plain_softmax(s, None), dense.plain_softmax(s, None)))
    h, w, b = inp["ln"], inp["w"], inp["b"]
    out.append(("layernorm", system.norm_name, "128x768", "N(0,1.5^2)",
                lambda m: system.norm(m.share(h), m.share(w, owner="model_owner"), m.share(b, owner="model_owner"),
                                      "opt", 1e-5, op="norm"),
                system.plain_norm(h, w, b, "opt", 1e-5), dense.plain_norm(h, w, b, "opt", 1e-5)))
    return out


def run(reps: int, systems: list[str]) -> pd.DataFrame:
    g = torch.Generator().manual_seed(0)
    inp = _inputs(g)
    dense = load_system(OmegaConf.load(REPO / "conf/system/dense.yaml"))
    rows = []
    load0 = _load_avg()
    for name in systems:
        system = load_system(OmegaConf.load(REPO / f"conf/system/{name}.yaml"))
        for op, proto, shape, rng, fn, plain, exact in _cases(system, dense, inp):
            times, err, err_exact, cost = [], 0.0, 0.0, None
            for rep in range(reps + 1):
                mpc = MPC(EngineConfig(), seed=rep)
                t0 = time.perf_counter()
                mark = mpc.ledger.mark()
                y = fn(mpc)
                dt_s = time.perf_counter() - t0
                led = mpc.ledger.frame().iloc[mark[0]:]
                y = mpc.reveal(y)
                err = max(err, float((y - plain).abs().max()))
                err_exact = max(err_exact, float((y - exact).abs().max()))
                if rep > 0:
                    times.append(dt_s)
                on = led[led.phase == "online"]
                cost = dict(online_bytes=int(on.bytes.sum()),
                            online_bytes_model=int(on[on.cost_source == "model"].bytes.sum()),
                            rounds=int(on["round"].nunique()),
                            offline_bytes=int(led[led.phase == "offline"].bytes.sum()))
            numel = plain.numel()
            rows_ = numel // plain.shape[-1]
            pub = PUBLISHED.get((name, op))
            pub_bytes = (2 * (pub[0] * numel + pub[1] * rows_) // 8) if pub else None
            rows.append(dict(system=name, op=op, protocol=proto, shape=shape, input_range=rng, **cost,
                             seconds=statistics.median(times), max_abs_err=err, max_abs_err_exact=err_exact,
                             published_online_bytes=pub_bytes, published_rounds=pub[2] if pub else None,
                             published_source=pub[3] if pub else "",
                             reps=reps, truncation="dealer", frac_bits=16))
            log.info("%s %s (%s): %d B, %d rounds, %.3f s, err %.2g / exact %.2g", name, op, proto,
                     cost["online_bytes"], cost["rounds"], rows[-1]["seconds"], err, err_exact)
    df = pd.DataFrame(rows)
    df["cpu"] = cpu_info()[0]
    df["cpus"] = os.cpu_count()
    df["threads"] = torch.get_num_threads()
    df["load_avg_1m_before"] = load0
    df["load_avg_1m_after"] = _load_avg()
    df["torch"] = torch.__version__
    df["python"] = platform.python_version()
    df["timestamp"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return df


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    out = Path(a.out)
    if refuse_existing(out, a.overwrite):
        return 2
    df = run(a.reps, [s for s in a.systems.split(",") if s])
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(out.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
