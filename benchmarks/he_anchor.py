#!/usr/bin/env python3
"""HE/OT anchor: SecretFlow-SPU 0.9.5's CHEETAH (HE matmul + Ferret silent OT) beside SEMI2K, and the
toolkit's iron and bolt priced for the same ops, in one sitting.

Steps:
  1. Find the SPU venv's python (--spu-python, else $ANCHOR_SPU_VENV/bin/python, else
     ${TMPDIR:-/tmp}/anchor-spu-venv/bin/python). Missing: one line saying how to make it, exit 0 (skip).
  2. Per protocol (SEMI2K, CHEETAH) x case: benchmarks/he_anchor_spu.py in a subprocess (both parties in
     one process, SPU's simulator); parse SPU's profile: the setup run's and the op's "Link details"
     (rank 0 send + recv = both directions) and execution times (parse_profile). CHEETAH redoes its
     setup every run, so online_bytes, seconds and rounds (rank 0's send actions, an upper bound) are the
     op's minus the setup run's; SEMI2K's are the op's own.
  3. The toolkit's iron and bolt for the same cases, under system.ot=iknp (rows iron, bolt) and
     system.ot=silent (iron-silent, bolt-silent): the matmul their own HE product (system.linear=he, Iron's
     coefficient packing, BOLT's slot packing; comet_core/mpc/he_linear.py) run for real, its keys in
     setup_bytes (a first call), the second call's measured bytes and wall seconds; the non-linear ops their
     ideal functionalities' modelled bytes and rounds (comet_core/mpc/ideal.py), seconds blank (nothing of
     the protocol runs). Every toolkit row's `modelled_s`: the compute model's seconds for its work counters,
     priced by results/calibration/reference-host.json (left empty on another CPU model).
  4. Write --out (default results/he_anchor/he_anchor.csv; refuses to overwrite without --overwrite):
     op, shape, system, online_bytes, seconds, rounds, cpu_model, then model, tokens, max_abs_err,
     raw_bytes, setup_bytes, fxp, date, modelled_s, load_avg_1m, git_rev.

Cases (small token counts to fit the 2-core machine): BERT-base encoder at 16 tokens (d 768, FFN 3072,
12 heads) and OPT-125m decode of 1 token against a 16-token context (same widths; OPT uses ReLU, GeLU is
priced here as the issue asks).
Usage: python benchmarks/he_anchor.py [--out results/he_anchor/he_anchor.csv] [--protocols SEMI2K,CHEETAH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from comet_core.comm.ledger import wire_bytes  # noqa: E402
from comet_core.mpc import ideal  # noqa: E402
from comet_core.results.machine import cpu_info, refuse_existing  # noqa: E402

LINK_RE = re.compile(r"Link details: total send bytes (\d+), recv bytes (\d+), send actions (\d+), recv actions (\d+)")
EXEC_RE = re.compile(r"SPU execution (\S+) completed.*? execution took ([0-9.e+-]+)s")

# (model, tokens, op, shape passed to the worker, rows x n for softmax / rows x d for layernorm)
CASES = [
    ("bert-base", 16, "matmul", "16x768x3072"),
    ("bert-base", 16, "gelu", "16x3072"),
    ("bert-base", 16, "softmax", "12x16x16"),
    ("bert-base", 16, "layernorm", "16x768"),
    ("opt-125m", 1, "matmul", "1x768x3072"),
    ("opt-125m", 1, "gelu", "1x3072"),
    ("opt-125m", 1, "softmax", "12x1x16"),
    ("opt-125m", 1, "layernorm", "1x768"),
]


def spu_python(arg: str | None) -> Path | None:
    cands = [arg] if arg else [os.path.join(os.environ.get("ANCHOR_SPU_VENV", ""), "bin", "python"),
                               os.path.join(os.environ.get("TMPDIR", "/tmp"), "anchor-spu-venv", "bin", "python")]
    for c in cands:
        if c and Path(c).exists():
            return Path(c)
    return None


def parse_profile(text: str, protocol: str) -> dict:
    """The setup run's and the op's figures from the worker's output (SPU prints one "Link details" line
    and one execution time per run; each run sets its protocol up again, so the setup run is taken off:
    CHEETAH's Ferret/HE setup is ~2.4 MB and ~936 send actions per run here). SEMI2K has no setup (its
    setup run is one 1-element product): its rounds are the op's own send actions."""
    links = [tuple(map(int, m.groups())) for m in LINK_RE.finditer(text)]
    execs = [float(m.group(2)) for m in EXEC_RE.finditer(text)]
    res = [json.loads(line[7:]) for line in text.splitlines() if line.startswith("RESULT ")]
    if len(links) < 2 or len(execs) < 2 or not res:
        raise RuntimeError("no SPU profile in the worker's output")
    (s_tx, s_rx, s_act, _), (o_tx, o_rx, o_act, _) = links[0], links[1]
    setup = protocol == "CHEETAH"
    return dict(online_bytes=(o_tx + o_rx) - (s_tx + s_rx if setup else 0), raw_bytes=o_tx + o_rx,
                setup_bytes=s_tx + s_rx, seconds=round(execs[1] - (execs[0] if setup else 0.0), 4),
                rounds=o_act - (s_act if setup else 0), max_abs_err=res[0]["max_abs_err"])


def run_spu(py: Path, protocol: str, op: str, shape: str, fxp: int, timeout: int) -> dict:
    cmd = [str(py), str(REPO / "benchmarks" / "he_anchor_spu.py"), "--protocol", protocol, "--op", op,
           "--shape", shape, "--fxp", str(fxp)]
    env = dict(os.environ, YACL_NUM_THREADS="1", OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    out = p.stdout + p.stderr
    try:
        if p.returncode != 0:
            raise RuntimeError("worker failed")
        return parse_profile(out, protocol)
    except RuntimeError as e:
        tail = out.strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{protocol} {op} {shape}: exit {p.returncode}, {e}: {tail[0][:200]}") from None


PROFILE = REPO / "results" / "calibration" / "reference-host.json"   # prices the toolkit's work (same CPU model)


def _modelled_s(mpc, profile) -> float:
    """The compute model's seconds for the work `mpc` counted (comet_core/results/compute_model.py)."""
    from comet_core.comm.work import work_table
    from comet_core.results.compute_model import priced

    w = work_table(mpc.ledger.frame(), mpc.ledger.work)
    return float(priced(w, profile).modelled_s.sum()) if profile is not None and not w.empty else float("nan")


def _he_matmul(system: str, m: int, k: int, n: int, ot: str, profile) -> dict:
    """iron's / bolt's own HE matrix product (system.linear=he, their default packing) run for real: a first
    call makes and sends P1's keys (setup_bytes), the second is timed (wall seconds) and booked."""
    import time

    import torch

    from comet_core.mpc import he_linear
    from comet_core.mpc.engine import MPC

    p = ideal.Params(ot=ot)
    packing = "bolt" if system == "bolt" else "iron"
    g = torch.Generator().manual_seed(0)
    mpc = MPC(seed=0)
    x = mpc.share(torch.randn(m, k, generator=g, dtype=torch.float64) * 0.5)
    w = mpc.share(torch.randn(k, n, generator=g, dtype=torch.float64) * 0.05, owner="model_owner", to_p0=True)
    mark = mpc.ledger.mark()
    he_linear.he_linear(x, w, None, p, packing)                     # keys made and sent here
    first = mpc.ledger.cost_since(mark)
    mpc.ledger.rows.clear()
    mpc.ledger.work.counts.clear()
    mark = mpc.ledger.mark()
    t0 = time.perf_counter()
    he_linear.he_linear(x, w, None, p, packing)
    seconds = time.perf_counter() - t0
    c = mpc.ledger.cost_since(mark)
    return dict(online_bytes=c.online_bytes, rounds=c.rounds, seconds=round(seconds, 4),
                modelled_s=round(_modelled_s(mpc, profile), 4), setup_bytes=first.online_bytes - c.online_bytes)


def toolkit_rows(system: str, op: str, shape: str, ot: str = "iknp", profile=None) -> dict:
    """The toolkit's iron or bolt for one case under OT flavour `ot`: the matmul their HE product, run (bytes
    measured, wall seconds, modelled seconds); the non-linear ops their ideal functionalities' modelled bytes,
    rounds and compute (no seconds: nothing runs but the trusted party's float64 function)."""
    from comet_core.mpc.engine import MPC
    from comet_core.mpc.shape import Shape

    import torch

    p = ideal.Params(ot=ot) if system == "bolt" else ideal.Params(gelu_ell=37, gelu_scale=12, ot=ot)
    dims = [int(v) for v in shape.split("x")]
    if op == "matmul":
        return _he_matmul(system, *dims, ot, profile)
    if op == "gelu":
        n = dims[0] * dims[1]
        steps, fn, x = (ideal.bolt_gelu_steps(p, n), "bolt_gelu", (n,)) if system == "bolt" else \
            (ideal.iron_gelu_steps(p, n), "gelu_tanh", (n,))
    elif op == "softmax":
        rows, n = dims[0] * dims[1], dims[2]
        steps, fn, x = (ideal.bolt_softmax_steps(p, rows, n), "bolt_softmax", (rows, n)) if system == "bolt" else \
            (ideal.iron_softmax_steps(p, rows, n), "softmax", (rows, n))
    else:
        steps, fn, x = ideal.layernorm_steps(p, dims[0], dims[1]), "normalize", (dims[0], dims[1])
    mpc = MPC(mode="cost", seed=0)
    ideal.ideal_op(mpc.share(Shape(x, torch.float64)), fn, steps)
    c = ideal.steps_cost(steps)
    return dict(online_bytes=c.online_bytes, rounds=c.rounds, modelled_s=round(_modelled_s(mpc, profile), 4))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "results" / "he_anchor" / "he_anchor.csv"))
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--spu-python")
    ap.add_argument("--protocols", default="SEMI2K,CHEETAH")
    ap.add_argument("--fxp", type=int, default=16)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per SPU case")
    a = ap.parse_args()
    out = Path(a.out)
    if refuse_existing(out, a.overwrite):
        return 2
    protocols = [s for s in a.protocols.split(",") if s]
    bad = set(protocols) - {"SEMI2K", "CHEETAH"}
    if bad:
        print(f"error: unknown --protocols {sorted(bad)}; valid: SEMI2K, CHEETAH", file=sys.stderr)
        return 2
    py = spu_python(a.spu_python)
    if py is None:
        print("skip: no SPU 0.9.5 venv (python3 -m venv /tmp/anchor-spu-venv && /tmp/anchor-spu-venv/bin/pip "
              "install spu==0.9.5, or pass --spu-python / set ANCHOR_SPU_VENV); he_anchor not run")
        return 0
    cpu, _ = cpu_info()
    from comet_core.results.compute_model import read_profile

    profile = read_profile(PROFILE) if json.loads(PROFILE.read_text()).get("host", {}).get("cpu_model") == cpu else None
    if profile is None:
        print(f"warning: {PROFILE} is another CPU's profile: modelled_s left empty", file=sys.stderr)
    load0 = os.getloadavg()[0]
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    rows = []
    for model, tokens, op, shape in CASES:
        base = dict(op=op, shape=shape, cpu_model=cpu, model=model, tokens=tokens, fxp=a.fxp, date=date)
        for proto in protocols:
            try:
                r = run_spu(py, proto, op, shape, a.fxp, a.timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                print(f"warning: {e}", file=sys.stderr)
                continue
            rows.append({**base, "system": f"spu-{proto.lower()}", **r})
            print(f"{proto:8s} {model:9s} {op:9s} {shape:12s} {r['online_bytes']:>12,d} B {r['seconds']:8.3f} s",
                  flush=True)
        for system in ("iron", "bolt"):
            for ot in ideal.OT_FLAVOURS:
                name = system if ot == "iknp" else f"{system}-{ot}"
                rows.append({**base, "system": name, **toolkit_rows(system, op, shape, ot, profile)})
    cols = ["op", "shape", "system", "online_bytes", "seconds", "rounds", "cpu_model", "model", "tokens",
            "max_abs_err", "raw_bytes", "setup_bytes", "fxp", "date", "modelled_s", "load_avg_1m", "git_rev"]
    from comet_core.results.tables import git_revision

    df = pd.DataFrame(rows).assign(load_avg_1m=round(max(load0, os.getloadavg()[0]), 2), git_rev=git_revision())
    df = df.reindex(columns=cols)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(out)
    print(out.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
