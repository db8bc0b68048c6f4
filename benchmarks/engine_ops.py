#!/usr/bin/env python3
"""Time the 2PC engine's core operations in exact mode next to plaintext torch.

The anchors (CrypTen 0.4.1, SecretFlow-SPU 0.9.5) run beside it in one sitting through `make bench`
(benchmarks/bench_sitting.py), which also forms the ratios: this script never divides by a stored
number from another host.

Operations (the shapes of the CrypTen and SPU harnesses in ../shared/benchmarks, same input domains,
16 fractional bits like both):
  matmul   (128x768) x (768x3072), secret x secret (client's x, model owner's W), Beaver's protocol,
           the dealer's triple generation (a, b, c = a @ b) timed inside the op, as in CrypTen (TFP)
  relu     128x3072
  softmax  12x128x128 along the last dim
  ffn_decode  OPT-125m FFN for one decode token: relu(x @ W1 + b1) @ W2 + b2 with x 1x768 (client),
           W1 768x3072, b1, W2 3072x768, b2 secret (model owner). The dense system's default mask
           policy: the weight masks are drawn and W - B opened again in every call (reuse_mask=False),
           the dealer's work (masks, triples) inside the timed op, as in the CrypTen and SPU harnesses.
Each op runs in exact mode on real shares: 1 warm-up + N timed reps, median reported. Inputs are
shared once before timing and the result is opened after it (neither is timed), like CrypTen's harness.

Columns:
  online_bytes   bytes between P0 and P1 for one op, both directions. For two parties this equals
                 CrypTen's `bytes_per_party` (each party's sent + received), so the two are comparable.
  rounds         online communication rounds of one op (ledger).
  offline_bytes  the dealer's traffic to the parties (CrypTen's TFP dealer costs no messages; not comparable).
  seconds        median wall time of the op, both parties in one process (in-process channel, no network).
  dealer_seconds the part of `seconds` spent in the dealer (correlated randomness), median over reps.
  plain_seconds  median wall time of the plaintext float32 torch op.
  max_abs_err    max |opened result - float64 plaintext| over the warm-up and all reps.
  cpu_model, vector_ext  /proc/cpuinfo's model name and its vector extensions (avx2, avx512f, ...).
  malloc_tunables        the GLIBC_TUNABLES of the run (glibc.malloc.hugetlb=1 cuts page-fault time).
  omp_wait_policy        the OMP_WAIT_POLICY of the run (PASSIVE: idle OpenMP threads sleep instead of
                         spinning; on a loaded shared machine that decides the timings).
  comet_revision         the toolkit's git revision (-dirty: uncommitted changes).
Machine load matters on a shared 2-core machine: the 1-minute load average before and after each op
is written into its row.

Usage: python benchmarks/engine_ops.py [--reps 5] [--threads 2] [--out outputs/bench/engine_ops.csv] [--overwrite]
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

from comet_core.results.machine import cpu_info, refuse_existing  # noqa: E402
from comet_core.results.tables import git_revision  # noqa: E402
from comet_core.comm.ledger import Cost  # noqa: E402
from comet_core.mpc import arith, compare, nonlinear as nl  # noqa: E402
from comet_core.mpc.engine import MPC, EngineConfig  # noqa: E402

log = logging.getLogger("engine_ops")

DEFAULT_OUT = "outputs/bench/engine_ops.csv"
OPS = ("matmul", "relu", "softmax", "ffn_decode")


def _load_avg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _median_time(fn, reps: int) -> tuple[float, list[float], list]:
    """1 warm-up + reps timed calls; returns (median seconds, all timed seconds, all results)."""
    results = [fn()]
    times = []
    for _ in range(reps):
        _sync()
        t0 = time.perf_counter()
        results.append(fn())
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, results


def make_case(op: str, gen: torch.Generator):
    """(shape label, secret-input builder, protocol, plaintext float64 reference fn, float32 op, cost fn)."""
    if op == "matmul":
        x = torch.randn(128, 768, generator=gen, dtype=torch.float64)
        w = torch.randn(768, 3072, generator=gen, dtype=torch.float64) / 768 ** 0.5
        return dict(shape="128x768 @ 768x3072", inputs=[(x, "client"), (w, "model_owner")],
                    protocol=arith.matmul, ref=lambda a, b: a @ b, plain=torch.matmul,
                    cost=lambda m: arith.matmul_cost(m, x.numel(), w.numel(), 128 * 3072))
    if op == "relu":
        x = torch.randn(128, 3072, generator=gen, dtype=torch.float64)
        return dict(shape="128x3072", inputs=[(x, "client")], protocol=compare.relu,
                    ref=lambda a: a.clamp_min(0), plain=torch.relu,
                    cost=lambda m: compare.relu_cost(m, x.numel()))
    if op == "softmax":
        x = torch.randn(12, 128, 128, generator=gen, dtype=torch.float64) * 2.0
        return dict(shape="12x128x128 dim=-1", inputs=[(x, "client")], protocol=nl.softmax,
                    ref=lambda a: torch.softmax(a, -1), plain=lambda a: torch.softmax(a, -1),
                    cost=lambda m: nl.softmax_cost(m, rows=12 * 128, n=128))
    if op == "ffn_decode":
        d, ff = 768, 3072
        x = torch.randn(1, d, generator=gen, dtype=torch.float64)
        w1 = torch.randn(d, ff, generator=gen, dtype=torch.float64) / d ** 0.5
        b1 = torch.randn(ff, generator=gen, dtype=torch.float64) * 0.02
        w2 = torch.randn(ff, d, generator=gen, dtype=torch.float64) / ff ** 0.5
        b2 = torch.randn(d, generator=gen, dtype=torch.float64) * 0.02

        def ffn(x, w1, b1, w2, b2):  # masks of W1, W2 re-opened per call (the dense default)
            h = compare.relu(arith.matmul(x, w1, reuse_mask=False) + b1)
            return arith.matmul(h, w2, reuse_mask=False) + b2

        return dict(shape=f"1x{d}; fc1 {d}->{ff} +b; relu; fc2 {ff}->{d} +b",
                    inputs=[(x, "client"), (w1, "model_owner"), (b1, "model_owner"), (w2, "model_owner"),
                            (b2, "model_owner")],
                    protocol=ffn, ref=lambda x, w1, b1, w2, b2: torch.relu(x @ w1 + b1) @ w2 + b2,
                    plain=lambda x, w1, b1, w2, b2: torch.relu(x @ w1 + b1) @ w2 + b2,
                    cost=lambda m: arith.matmul_cost(m, d, d * ff, ff) + compare.relu_cost(m, ff)
                    + arith.matmul_cost(m, ff, ff * d, d))
    raise ValueError(op)


def run_op(op: str, args) -> dict:
    gen = torch.Generator().manual_seed(args.seed)
    case = make_case(op, gen)
    m = MPC(EngineConfig(frac_bits=args.frac_bits, truncation=args.truncation), seed=args.seed, mode="exact",
            device=args.device)
    shares = [m.share(x, owner=owner) for x, owner in case["inputs"]]
    plain_in = [x.to(torch.float32).to(args.device) for x, _ in case["inputs"]]
    ref = case["ref"](*[x for x, _ in case["inputs"]])

    marks = []
    dealer_time = _time_dealer(m)

    def secure():
        dealer_time.append(0.0)
        marks.append(m.ledger.mark())
        out = case["protocol"](*shares)
        marks.append(m.ledger.mark())
        return out

    log.info("%s %s: 1 warm-up + %d reps (exact mode)", op, case["shape"], args.reps)
    seconds, times, outs = _median_time(secure, args.reps)
    dealer_seconds = statistics.median(dealer_time[1:])  # per timed rep (index 0 is the warm-up)
    costs = {_cost_between(m, a, b) for a, b in zip(marks[::2], marks[1::2])}
    if len(costs) != 1:
        raise RuntimeError(f"{op}: the ledger differs between reps: {costs}")
    (cost,) = costs
    formula = case["cost"](m)
    if cost != formula:
        raise RuntimeError(f"{op}: ledger {cost} != cost formula {formula}")
    err = max(float((m.reveal(o).cpu() - ref).abs().max()) for o in outs)
    plain_seconds, _, _ = _median_time(lambda: case["plain"](*plain_in), args.reps)
    log.info("%s: %.4f s (reps %s; dealer %.4f s of it), plaintext %.5f s, max abs err %.3g", op, seconds,
             ", ".join(f"{t:.3f}" for t in times), dealer_seconds, plain_seconds, err)
    return dict(op=op, shape=case["shape"], online_bytes=cost.online_bytes, rounds=cost.rounds,
                offline_bytes=cost.offline_bytes, seconds=seconds, dealer_seconds=dealer_seconds,
                plain_seconds=plain_seconds, max_abs_err=err)


def _time_dealer(m: MPC) -> list[float]:
    """Wrap the dealer's item methods so that their time adds to the last entry of the returned list
    (the caller appends a 0.0 before each protocol call)."""
    acc: list[float] = []
    dealer = m.dealer
    for name in ("mul_triple", "matmul_triple", "square_pair", "trunc_triple", "compare_mask", "and_triples",
                 "dabit", "shuffle_pair"):
        fn = getattr(dealer, name, None)
        if fn is None:
            continue

        def timed(*a, _fn=fn, **k):
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                acc[-1] += time.perf_counter() - t0
        setattr(dealer, name, timed)
    return acc


def _cost_between(m: MPC, a, b):
    """Cost of the ledger rows between marks a and b."""
    online = sum(r[9] for r in m.ledger.rows[a[0]:b[0]] if r[0] == "online")
    offline = sum(r[9] for r in m.ledger.rows[a[0]:b[0]] if r[0] == "offline")
    return Cost(online, offline, b[1] - a[1])


def _resolve(p: str, default: str) -> Path:
    """User paths are relative to the working directory; the defaults to the repository root."""
    return (REPO / p) if p == default else Path(p).expanduser().resolve()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions after 1 warm-up (median reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--frac-bits", type=int, default=16)
    ap.add_argument("--truncation", choices=["local", "dealer"], default="local",
                    help="local = CrypTen's 2-party choice (default)")
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"CSV to write (default {DEFAULT_OUT} in the repo root)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")

    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    bad = [o for o in ops if o not in OPS]
    if bad or not ops:
        ap.error(f"unknown op(s) {bad}; choose from {', '.join(OPS)}")
    if args.reps < 1 or args.threads < 1:
        ap.error("--reps and --threads must be >= 1")
    out = _resolve(args.out, DEFAULT_OUT)
    if refuse_existing(out, args.overwrite):
        return 2
    torch.set_num_threads(args.threads)

    load_before = _load_avg()
    model, vec = cpu_info()
    log.info("torch %s, %d threads, %d CPUs (%s; %s), load average (1 min) %.2f", torch.__version__,
             torch.get_num_threads(), os.cpu_count() or 0, model, vec, load_before)
    revision = git_revision()
    rows = []
    for op in ops:
        before = _load_avg()
        rows.append(run_op(op, args))
        rows[-1].update(load_avg_1m_before=round(before, 2), load_avg_1m_after=round(_load_avg(), 2))
    load_after = _load_avg()

    for r in rows:
        r.update(device=args.device if args.device == "cpu" else torch.cuda.get_device_name(),
                 threads=args.threads, reps=args.reps, truncation=args.truncation, frac_bits=args.frac_bits,
                 cpu_model=model, vector_ext=vec, malloc_tunables=os.environ.get("GLIBC_TUNABLES", ""),
                 omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""),
                 cpus=os.cpu_count(), torch=torch.__version__, python=platform.python_version(),
                 comet_revision=revision,
                 timestamp=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    df = pd.DataFrame(rows)
    first = ["op", "shape", "online_bytes", "rounds", "offline_bytes", "seconds", "dealer_seconds", "plain_seconds",
             "max_abs_err", "device", "threads", "reps", "truncation", "frac_bits", "load_avg_1m_before", "load_avg_1m_after", "cpus",
             "torch", "python", "timestamp"]                 # the columns of earlier runs keep their order
    df = df[first + [c for c in df.columns if c not in first]]

    show = df[["op", "shape", "online_bytes", "rounds", "seconds", "dealer_seconds", "plain_seconds", "max_abs_err"]]
    print(f"# 2PC engine, exact mode, {args.threads} torch threads, {args.reps} reps (median), "
          f"truncation={args.truncation}, load average (1 min) {load_before:.2f} before / {load_after:.2f} after")
    print("# online_bytes = both directions between P0 and P1 = CrypTen's bytes per party (sent + received)")
    print(f"# {model} ({vec})")
    print(show.to_string(index=False, formatters={
        "online_bytes": "{:,}".format, "seconds": "{:.4f}".format, "dealer_seconds": "{:.4f}".format, "plain_seconds": "{:.5f}".format,
        "max_abs_err": "{:.3g}".format}))
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
