"""`comet calibrate`: time the engine's own protocols on this machine and fit one cost per work kind.

1. Each benchmark runs one protocol in exact mode (in-process simulation, as exact runs compute) on fresh
   shares in steady state; its time is the fastest of `reps` samples in wall seconds (what exact mode's
   compute_s measures and cost mode's models), its work the counters it left (comm/work.py).
2. The unit costs, in the benchmarks' order: each benchmark prices one kind (`prices`) from its time less
   what the kinds priced before it explain; benchmarks that price the same kind are fitted together.
   Tiny protocols and one row of a layer norm and a softmax price the round; a dealer-only triple the dealt
   word; openings and products of activation sizes the opened word (of 2^17 elements the large one); a
   comparison of 2^14 elements the packed bit word; a Beaver product whose weight mask is reused its
   multiply-accumulates per kernel class and the same product with a fresh mask its words; then the first
   use of a kept mask, a select, per-head products, public products, a layer's shuffle, an ideal SiLU, FSS
   comparisons, OTs. Benchmarks that price nothing are checks: their `fit_ratio` (modelled / measured)
   says how well the units add up on a protocol not used to fit them.
3. The profile (results/compute_model.py FORMAT) records the CPU model, vector flags, threads, torch and
   numpy versions, the load, every benchmark with its fitted time, and the units; written atomically to
   $COMET_CACHE/calibration/profile.json unless --out says otherwise.
`--quick` (tests): smaller sizes and fewer repetitions, a second or two. A new work kind registers a
benchmark with `register_benchmark`. `--device cuda` times the same protocols on a CUDA device
(profile-cuda.json); that path has not been run on a GPU.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

log = logging.getLogger("comet.calibrate")

SAMPLE_S = 0.04    # seconds per timed sample (a quarter with --quick)
# wall seconds, as exact mode's compute_s: process CPU counts torch's OpenMP threads spinning between
# parallel regions (1.6x the wall time of a quiet decode run, 2x of a 1x768x3072 Beaver product), which is
# no compute a run waits for; the fastest sample is the least disturbed by other processes, and a busy
# machine's profile is marked and refused for results/ (BUSY_LOAD)
CLOCK = time.perf_counter
MAX_INNER = 200    # calls per sample at most
# a 1-minute load average above this is a busy machine: other processes take cores from the samples and
# torch's OpenMP threads spin on a core another process holds (a profile made at load 2.7-6 priced
# matmul_mac 4.2 ns against 1.1 ns quiet); such a profile is marked `busy` and is refused for results/
# without --allow-busy
BUSY_LOAD = 1.0


@dataclass(frozen=True)
class Benchmark:
    name: str
    setup: Callable      # (mpc, quick) -> inputs (shared before timing)
    op: Callable         # (mpc, inputs) -> None: the timed protocol
    prices: str | None = None    # the work kind this benchmark prices (None: a check)
    config: dict | None = None   # EngineConfig overrides (e.g. comparison=fss)
    # kinds it counts but does not run (an ideal functionality's OTs, priced by the real IKNP benchmark):
    # left out of its fit and of its fit_ratio
    unrun: tuple = ()


BENCHMARKS: list[Benchmark] = []


def register_benchmark(name: str, setup: Callable, op: Callable, prices: str | None = None,
                       config: dict | None = None, unrun: tuple = ()) -> None:
    """Add a benchmark (a protocol whose time prices the work kind `prices`, after the kinds priced by the
    benchmarks before it) to every later calibration."""
    if not BENCHMARKS:
        _defaults()
    if any(b.name == name for b in BENCHMARKS):
        raise ValueError(f"benchmark {name!r} is already registered")
    BENCHMARKS.append(Benchmark(name, setup, op, prices, config, tuple(unrun)))


# -- the default benchmarks ------------------------------------------------------------------------------

def _vec(mpc, n):
    import torch

    return mpc.share(torch.randn(n, dtype=torch.float64, device=mpc.device))


def _mat(mpc, *shape):
    import torch

    return mpc.share(torch.randn(*shape, dtype=torch.float64, device=mpc.device) * 0.1)


def _weight(mpc, *shape):
    """A shared model weight (registered: its mask may be reused, MPC.register_weight)."""
    return mpc.register_weight(_mat(mpc, *shape))


def _defaults() -> None:
    import torch

    from comet_core.mpc import arith, compare, fss, ideal, nonlinear, shuffle

    n = lambda q, full, quick: 1 << (quick if q else full)   # noqa: E731
    add = lambda *a, **k: BENCHMARKS.append(Benchmark(*a, **k))   # noqa: E731
    # a round's fixed cost: tiny protocols (a multiply, a comparison, a ReLU), whose time is nearly all per round
    add("mul_1", lambda m, q: (_vec(m, 1), _vec(m, 1)), lambda m, a: arith.mul(*a), prices="round")
    add("ltz_1", lambda m, q: _vec(m, 1), lambda m, a: compare.ltz(a), prices="round")
    add("relu_1", lambda m, q: _vec(m, 1), lambda m, a: compare.relu(a), prices="round")
    # ... and a decode step's non-linear layers of one row (more local steps per round than a multiply)
    add("layernorm_row", lambda m, q: (_mat(m, 1, 256), _vec(m, 256), _vec(m, 256)),
        lambda m, a: nonlinear.layernorm(*a), prices="round")
    add("softmax_row", lambda m, q: _mat(m, 4, 1, 80), lambda m, a: nonlinear.softmax(a, -1), prices="round")
    big = lambda q: 1 << (16 if q else 17)   # noqa: E731  (messages of at least work.LARGE elements)
    add("triple_n", lambda m, q: (n(q, 14, 13),), lambda m, a: m.dealer.mul_triple((a[0],), (a[0],)),
        prices="dealer_word")
    add("triple_large", lambda m, q: (big(q),), lambda m, a: m.dealer.mul_triple((a[0],), (a[0],)),
        prices="dealer_word_large")
    # an opened word: openings and the elementwise protocols built on them, of activation sizes
    add("open_n", lambda m, q: _vec(m, n(q, 14, 14)), lambda m, a: m.open(a), prices="open_word")
    add("mul_n", lambda m, q: (_vec(m, n(q, 14, 13)),) * 2, lambda m, a: arith.mul(*a), prices="open_word")
    add("square_n", lambda m, q: _vec(m, n(q, 14, 13)), lambda m, a: arith.square(a), prices="open_word")
    add("open_large", lambda m, q: _vec(m, big(q)), lambda m, a: m.open(a), prices="open_word_large")
    add("mul_large", lambda m, q: (_vec(m, big(q)),) * 2, lambda m, a: arith.mul(*a), prices="open_word_large")
    add("square_large", lambda m, q: _vec(m, big(q)), lambda m, a: arith.square(a), prices="open_word_large")
    # a packed bit word: comparison circuits (DReLU's adder tree; ReLU adds its multiplexer)
    add("ltz_n", lambda m, q: _vec(m, n(q, 14, 11)), lambda m, a: compare.ltz(a), prices="bit_word")
    add("relu_n", lambda m, q: _vec(m, n(q, 14, 11)), lambda m, a: compare.relu(a), prices="bit_word")
    # a Beaver matmul's fixed cost per call (tiny products); then per multiply-accumulate by shape class from
    # products whose weight mask is reused (only e = x - a opened), and its words (f = y - b opened, the
    # dealer's b drawn) from the same product with a fresh mask
    reused = lambda m, a: arith.matmul(*a, reuse_mask=True)   # noqa: E731  (the counted call finds f kept)
    add("matmul_tiny", lambda m, q: (_mat(m, 1, 8), _mat(m, 8, 8)), lambda m, a: arith.matmul(*a),
        prices="matmul_call")
    few = lambda m, q: (_mat(m, 1, 512), _weight(m, 512, 1024)) if q else (_mat(m, 1, 768), _weight(m, 768, 3072))   # noqa: E731
    add("matmul_few_reused", few, reused, prices="matmul_mac_few")
    add("matmul_few", few, lambda m, a: arith.matmul(*a), prices="matmul_word")
    # a weight of at most one block (blocked.BLOCK_ELEMENTS: the whole-matrix steps, 3x the cost per
    # multiply-accumulate of the blocked kernel on the 2-core AVX-512 host)
    small = lambda m, q: (_mat(m, 1, 128), _weight(m, 128, 512)) if q else (_mat(m, 1, 256), _weight(m, 256, 1024))   # noqa: E731
    add("matmul_few_small_reused", small, reused, prices="matmul_mac_few_small")
    add("matmul_few_small", small, lambda m, a: arith.matmul(*a), prices="matmul_word_small")
    add("matmul", lambda m, q: (_mat(m, 128, 256), _mat(m, 256, 256)) if q else (_mat(m, 128, 768), _mat(m, 768, 768)),
        lambda m, a: arith.matmul(*a), prices="matmul_mac")
    # the first product of a kept mask (a registered weight seen for the first time each call; its kept
    # b and f dropped after it): 4M elements, past the allocator's 32 MiB threshold as a model's weights are
    add("matmul_kept_first", lambda m, q: (_mat(m, 1, 256), _mat(m, 256, 1024)) if q else (_mat(m, 1, 1024), _mat(m, 1024, 4096)),
        _kept_first, prices="kept_mask_word")
    # SOMM: a decode step's product with 256 of a weight's 1024 columns (the slice gathered per product)
    add("matmul_select", lambda m, q: (_mat(m, 1, 128), _mat(m, 128, 512), torch.randperm(512)[:128]) if q else
        (_mat(m, 1, 256), _mat(m, 256, 1024), torch.randperm(1024)[:256]),
        lambda m, a: arith.matmul(a[0], a[1], select=(1, a[2])), prices="select_elem")
    # a decode step's per-head scores over a KV cache of 128 positions (4 heads of 64)
    add("matmul_bmm_few", lambda m, q: (_mat(m, 4, 1, 64), _mat(m, 4, 64, 128)), lambda m, a: arith.matmul(*a),
        prices="matmul_mac_bmm_few")
    add("matmul_public", lambda m, q: (_mat(m, 16, 256), _plain(m, 256, 256)), lambda m, a: arith.matmul_public(*a),
        prices="public_mac")
    # a decode step's all-pairs maximum over 128 entries: the pairs' 0/1 shares times the public incidence
    # matrix, one row per share (pairmax._first_max_onehot)
    add("matmul_public_few", lambda m, q: (_mat(m, 1, 2016 if q else 8128), _plain(m, 2016 if q else 8128, 64 if q else 128)),
        lambda m, a: arith.matmul_public(*a), prices="public_mac_few")
    # a layer's per-request shuffle (Comet): its weights' rows joined, permuted as one, split and transposed back
    add("permute", lambda m, q: _layer_shuffle_inputs(m, 128, 512) if q else _layer_shuffle_inputs(m, 256, 1024),
        _layer_shuffle, prices="shuffle_elem")
    add("ideal_silu", lambda m, q: _vec(m, n(q, 14, 13)),
        lambda m, a: ideal.ideal_op(a, "silu", ideal.silu_steps(ideal.Params(), a.numel())), prices="float_elem",
        unrun=("ot",))
    add("fss_ltz", lambda m, q: _vec(m, n(q, 10, 9)), lambda m, a: fss.ltz(a), prices="dcf_elem",
        config={"comparison": "fss"})
    # a 1-of-2 OT of the OT-based baselines (iron, bolt: mpc/ideal.py counts their OT instances): a real IKNP
    # extension's per-OT work (mpc/iknp.py: PRG, bit transposes, correlation-robust hash; base OTs simulated)
    add("ot_iknp", lambda m, q: _ot_inputs(n(q, 15, 13)), _ot_extend, prices="ot")
    # Iron's and BOLT's HE linear layers (mpc/he_linear.py): each SEAL call as he_matmul makes it, at its
    # parameters (N = 8192, 128-bit); then the whole product of a small layer as a check of how they add up
    import importlib.util

    if importlib.util.find_spec("tenseal") is None:   # the `he` extra: without it system.linear=he cannot run either
        log.warning("TenSEAL is not installed (pip install -e '.[he]'): the HE kinds (%s) stay unpriced",
                    ", ".join(HE_KINDS))
        return
    for kind in HE_KINDS:
        add(kind, _he_inputs, lambda m, a, kind=kind: _he_op(m, a, kind), prices=kind)
    add("he_linear_bolt", lambda m, q: _he_layer(m, 4, 128, 256), lambda m, a: _he_linear(a, "bolt"), unrun=("ot",))
    add("he_linear_iron", lambda m, q: _he_layer(m, 4, 128, 256), lambda m, a: _he_linear(a, "iron"), unrun=("ot",))

def _kept_first(mpc, a) -> None:
    from comet_core.mpc import arith

    x, w = a
    w.uid = None
    arith.matmul(x, mpc.register_weight(w), reuse_mask=True)
    mpc.weight_masks.clear()
    mpc.dealer.forget_reused()


def _layer_shuffle_inputs(mpc, d: int, f: int):
    from comet_core.mpc import shuffle

    return _mat(mpc, d, f), _mat(mpc, f, d), _mat(mpc, 1, f), shuffle.Permutation(mpc, f)


def _layer_shuffle(mpc, a) -> None:
    """The data movement of comet._permute_layer around its one permutation (FFN weights W1, W2, b1)."""
    from comet_core.mpc.ashare import AShare
    from comet_core.mpc.shuffle import permute

    w_in, w_out, b, perm = a
    d = w_in.shape[0]
    rows = permute(AShare.cat([w_in, w_out.transpose(0, 1), b], 0), -1, perm)
    _ = rows[:d].contiguous(), rows[d:2 * d].transpose(0, 1).contiguous(), rows[-1]   # W1, W2, b1 as Comet keeps them


def _ot_inputs(m: int):
    import numpy as np

    rng = np.random.default_rng(0)   # message contents do not change the work
    return (rng.integers(0, 256, (m, 16), dtype=np.uint8), rng.integers(0, 256, (m, 16), dtype=np.uint8),
            rng.integers(0, 2, m, dtype=np.uint8))


def _ot_extend(mpc, a) -> None:
    from comet_core.mpc import iknp

    x0, x1, r = a
    iknp.extend(x0, x1, r, batch=min(len(r), 1 << 15))
    mpc.ledger.work.add("ot", len(r))


HE_KINDS = ("he_encrypt", "he_decrypt", "he_mul_plain", "he_mul_plain_coeff", "he_rotate", "he_ntt")
HE_CALLS = 4            # SEAL calls per benchmark call (each several milliseconds)
_HE: dict = {}          # the contexts and keys, made once per process (keygen is not the work priced)


def _he_inputs(mpc, quick: bool) -> dict:
    """A slot context (bolt) and a coefficient context (iron) at he_linear's parameters, a fresh ciphertext
    of each, full-size slot and coefficient vectors, and the Galois keys of one rotation."""
    import numpy as np

    if not _HE:   # (registered only where TenSEAL is installed: _defaults)
        from comet_core.mpc import he_bfv, he_linear, he_simd  # noqa: F401 (he_linear registers the kinds)
        slot, coeff = he_simd.SlotBFV(40), he_bfv.BFV(40)
        rng = np.random.default_rng(0)
        v = rng.integers(0, slot.p, he_simd.N, dtype=np.uint64)
        cv = rng.integers(0, 1 << 40, he_bfv.POLY_DEGREE, dtype=np.uint64)
        ct, cct = slot.seal.Ciphertext(), coeff.seal.Ciphertext()
        slot.encryptor.encrypt(slot.encode(v), ct)
        coeff.encryptor.encrypt(coeff.plaintext(cv), cct)
        ntt, cntt = slot.seal.Ciphertext(), coeff.seal.Ciphertext()   # the products' operands are in NTT form
        slot.evaluator.transform_to_ntt(ct, ntt)
        coeff.evaluator.transform_to_ntt(cct, cntt)
        _HE.update(slot=slot, coeff=coeff, v=v, cv=cv, ct=ct, cct=cct, ntt=ntt, cntt=cntt,
                   keys=slot.rotation_key(1))
    return _HE


def _he_op(mpc, h: dict, kind: str) -> None:
    """HE_CALLS of one kind's SEAL calls, as he_simd / he_bfv.he_matmul make them."""
    s, c = h["slot"], h["coeff"]
    seal = s.seal
    for _ in range(HE_CALLS):
        if kind == "he_encrypt":        # P1 packs, encrypts, serialises; P0 loads
            ct = seal.Ciphertext()
            s.encryptor.encrypt(s.encode(h["v"]), ct)
            s.from_bytes(s.to_bytes(ct))
        elif kind == "he_decrypt":      # P0 serialises a result; P1 loads, checks the noise, decrypts, decodes
            got = s.from_bytes(s.to_bytes(h["ct"]))
            s.decryptor.invariant_noise_budget(got)
            pt = seal.Plaintext()
            s.decryptor.decrypt(got, pt)
            s.decode(pt)
        elif kind == "he_mul_plain":    # a diagonal encoded into slots, to NTT form, multiplied in, accumulated
            pt, prod = seal.Plaintext(), seal.Ciphertext()
            s.evaluator.transform_to_ntt(s.encode(h["v"]), h["ntt"].parms_id(), pt)
            s.evaluator.multiply_plain(h["ntt"], pt, prod)
            s.evaluator.add_inplace(prod, h["ntt"])
        elif kind == "he_mul_plain_coeff":   # a weight block as a plaintext polynomial, to NTT form, multiplied in, accumulated
            pt, prod = c.seal.Plaintext(), c.seal.Ciphertext()
            c.evaluator.transform_to_ntt(c.plaintext(h["cv"]), h["cntt"].parms_id(), pt)
            c.evaluator.multiply_plain(h["cntt"], pt, prod)
            c.evaluator.add_inplace(prod, h["cntt"])
        elif kind == "he_ntt":          # a ciphertext to NTT form and (every other call) back
            out = seal.Ciphertext()
            if _ % 2:
                s.evaluator.transform_from_ntt(h["ntt"], out)
            else:
                s.evaluator.transform_to_ntt(h["ct"], out)
        else:                           # a row rotation
            rot = seal.Ciphertext()
            s.evaluator.rotate_rows(h["ct"], 1, h["keys"], rot)
    mpc.ledger.work.add(kind, HE_CALLS)


def _he_layer(mpc, T: int, k: int, n: int):
    _he_inputs(mpc, True)
    return _mat(mpc, T, k), _mat(mpc, k, n), _vec(mpc, n)


def _he_linear(a, packing: str) -> None:
    from comet_core.mpc import he_linear, ideal

    he_linear.he_linear(*a, ideal.Params(), packing)


def _plain(mpc, *shape):
    import torch

    return torch.randn(*shape, dtype=torch.float64) * 0.1


# -- timing -------------------------------------------------------------------------------------------

def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def run_benchmark(b: Benchmark, quick: bool, reps: int, device: str = "cpu") -> dict:
    """Wall seconds (CLOCK) of one call of the protocol in steady state (as a run's thousands of calls are): on one
    engine, a first call warms up (numba compiles, buffers fault in, a reused mask is opened), a second counts
    the work; then the fastest
    of `reps` samples (the least disturbed by other processes), each of `inner` calls lasting about
    SAMPLE_S."""
    from comet_core.comm.work import work_table
    from comet_core.mpc.engine import MPC, EngineConfig

    mpc = MPC(EngineConfig(**(b.config or {})), seed=1000, device=device, mode="exact")
    inputs = b.setup(mpc, quick)
    led = mpc.ledger
    b.op(mpc, inputs)   # the first call (a reused mask is opened here): not the steady state
    led.rows.clear()
    led.work.counts.clear()
    b.op(mpc, inputs)
    w = work_table(led.frame(), led.work)
    counts = {str(k): float(v) for k, v in w.groupby("kind").amount.sum().items()}
    target = SAMPLE_S / (4 if quick else 1)
    clock = CLOCK
    best, inner = float("inf"), 1
    for i in range(reps + 1):
        led.rows.clear()   # the samples' messages are not kept (a sample may book thousands of rows)
        _sync(device)
        t0 = clock()
        for _ in range(inner):
            b.op(mpc, inputs)
        _sync(device)
        dt = (clock() - t0) / inner
        if i == 0:   # a second warm-up: how many calls make one sample
            inner = max(1, min(MAX_INNER, int(target / max(dt, 1e-7))))
            continue
        best = min(best, dt)
    led.rows.clear()
    return dict(name=b.name, seconds=best, reps=reps, inner=inner, counts=counts, unrun=list(b.unrun))

def run_counts(row: dict) -> dict:
    """A benchmark's counts of the work it runs (its `unrun` kinds left out)."""
    return {k: v for k, v in row["counts"].items() if k not in row.get("unrun", ())}


def fit_units(rows: list[dict], prices: list[str | None], known: dict[str, float] | None = None) -> dict[str, float]:
    """Each kind priced in the benchmarks' order, from the benchmarks that price it together: (their
    seconds - what the kinds priced before, or `known` units, explain) / their count of that kind, never
    below 0. A benchmark's `unrun` kinds (counted, not executed) explain none of its time."""
    units: dict[str, float] = dict(known or {})
    order = list(dict.fromkeys(k for k in prices if k is not None))
    for kind in order:
        group = [r for r, k in zip(rows, prices) if k == kind and r["counts"].get(kind)]
        if not group:
            continue
        rest = sum(r["seconds"] - sum(units.get(k, 0.0) * v for k, v in run_counts(r).items() if k != kind)
                   for r in group)
        units[kind] = max(0.0, rest) / sum(r["counts"][kind] for r in group)
    return units

def set_fit_ratios(rows: list[dict], units: dict[str, float]) -> None:
    """Each benchmark's `fitted_s` (the units' price of the work it runs) and `fit_ratio` (that / its time)."""
    for r in rows:
        r["fitted_s"] = sum(units.get(k, 0.0) * v for k, v in run_counts(r).items())
        r["fit_ratio"] = r["fitted_s"] / r["seconds"]


def host_record(device: str) -> dict:
    import numpy as np
    import torch

    from comet_core.results.machine import cpu_info

    model, flags = cpu_info()
    rec = dict(cpu_model=model, flags=flags, cores=os.cpu_count(), threads=torch.get_num_threads(),
               torch=torch.__version__, numpy=np.__version__, python=platform.python_version(),
               platform=platform.platform(), hostname=platform.node())
    if device == "cuda":
        rec["gpu"] = torch.cuda.get_device_name(0)
    return rec


def calibrate(quick: bool = False, device: str = "cpu", reps: int | None = None) -> dict:
    """Every benchmark timed, the units fitted; the profile as a dict (not yet written)."""
    from comet_core.comm.work import KINDS
    from comet_core.results.compute_model import FORMAT
    from comet_core.results.tables import git_revision

    if not BENCHMARKS:
        _defaults()
    reps = reps or (3 if quick else 7)
    load0 = os.getloadavg()
    if load0[0] > BUSY_LOAD:
        log.warning("load average %.1f (above %.1f): other processes inflate the unit costs (torch's threads "
                    "spin for a core); calibrate on a quiet machine for a profile to publish", load0[0], BUSY_LOAD)
    t0 = time.perf_counter()
    rows = [run_benchmark(b, quick, reps, device) for b in BENCHMARKS]
    units = fit_units(rows, [b.prices for b in BENCHMARKS])
    load1 = os.getloadavg()
    if load1[0] > BUSY_LOAD:
        log.warning("load average %.1f after calibrating (above %.1f): the profile is marked busy", load1[0], BUSY_LOAD)
    set_fit_ratios(rows, units)
    unpriced = sorted(set(KINDS) - set(units))
    if unpriced:
        log.warning("no benchmark exercises %s: runs that count them cannot be priced", ", ".join(unpriced))
    return dict(format=FORMAT, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                command="comet calibrate" + (" --quick" if quick else "") + (f" --device {device}" if device != "cpu" else ""),
                git_rev=git_revision(), device=device, quick=quick, host=host_record(device),
                load_avg_before=list(load0), load_avg_after=list(load1),
                busy=bool(max(load0[0], load1[0]) > BUSY_LOAD),
                seconds=time.perf_counter() - t0, clock="wall",
                units_s=units,
                kinds={k: KINDS[k].unit for k in units if k in KINDS}, benchmarks=rows)


def amend(profile: dict, kinds: list[str], quick: bool = False, device: str = "cpu", reps: int | None = None) -> dict:
    """`profile` with the units of `kinds` added or replaced: only the benchmarks that price them are timed
    (and the checks that count them), fitted against the profile's other units, which stay as they were.
    The profile must be this machine's (the same CPU model); the amendment is recorded in `amended`."""
    from comet_core.comm.work import KINDS
    from comet_core.errors import CometError
    from comet_core.results.tables import git_revision

    if not BENCHMARKS:
        _defaults()
    host = host_record(device)
    if profile.get("host", {}).get("cpu_model") != host["cpu_model"]:
        raise CometError(f"the profile was made on {profile.get('host', {}).get('cpu_model')!r}, this machine is "
                         f"{host['cpu_model']!r}: amend a profile on the machine that made it")
    if not kinds:
        raise CometError("--amend needs at least one work kind (KIND[,KIND])")
    priced = {b.prices for b in BENCHMARKS}
    unknown = sorted(set(kinds) - priced)
    if unknown:
        raise CometError(f"no benchmark prices {', '.join(unknown)}; kinds with benchmarks: "
                         f"{', '.join(sorted(k for k in priced if k))}")
    reps = reps or (3 if quick else 7)
    load0 = os.getloadavg()
    bench = [b for b in BENCHMARKS if b.prices in kinds or b.prices is None]
    rows = [run_benchmark(b, quick, reps, device) for b in bench]
    keep = [(r, b) for r, b in zip(rows, bench) if b.prices is not None or set(r["counts"]) & set(kinds)]
    known = {k: v for k, v in profile["units_s"].items() if k not in kinds}
    units = fit_units([r for r, _ in keep], [b.prices for _, b in keep], known)
    set_fit_ratios([r for r, _ in keep], units)
    load1 = os.getloadavg()
    busy = bool(max(load0[0], load1[0]) > BUSY_LOAD)
    out = dict(profile, units_s=units, kinds={k: KINDS[k].unit for k in units if k in KINDS},
               busy=bool(profile.get("busy")) or busy)   # a busy amendment marks the whole profile busy
    names = {r["name"] for r, _ in keep}
    out["benchmarks"] = [r for r in profile.get("benchmarks", []) if r["name"] not in names] + [r for r, _ in keep]
    out["amended"] = list(profile.get("amended", [])) + [dict(
        kinds=list(kinds), created=datetime.now(timezone.utc).isoformat(timespec="seconds"), git_rev=git_revision(),
        command=f"comet calibrate --amend {','.join(kinds)}" + (" --quick" if quick else ""),
        load_avg_before=list(load0), load_avg_after=list(load1), busy=busy)]
    return out


def publishing(out: Path) -> bool:
    """Whether `out` lies under the repository's results/ (a published profile, such as the reference host's)."""
    from comet_core.results.compute_model import REPO_ROOT

    return Path(out).resolve().is_relative_to((REPO_ROOT / "results").resolve())


def write_profile(profile: dict, out: Path) -> Path:
    """Atomically (a temporary file renamed into place)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(profile, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, out)
    return out


def summary_lines(profile: dict) -> list[str]:
    h = profile["host"]
    lines = [f"{h['cpu_model']} ({h['flags'] or 'no vector flags'}), {h['threads']} torch threads, torch "
             f"{h['torch']}, numpy {h['numpy']}; load {profile['load_avg_before'][0]:.1f}",
             f"{'kind':<20}{'ns per count':>14}  unit"]
    for k, v in sorted(profile["units_s"].items()):
        lines.append(f"{k:<20}{v * 1e9:>14.4g}  {profile['kinds'].get(k, '')}")
    rows = profile["benchmarks"]
    worst = max(rows, key=lambda r: max(r["fit_ratio"], 1 / max(r["fit_ratio"], 1e-12)))
    unrun = sorted({k for r in rows for k in r.get("unrun", ())})
    lines.append(f"fit: worst benchmark {worst['name']} at {worst['fit_ratio']:.2f}x its measured time"
                 + (f" (of the work each runs: {', '.join(unrun)} of ideal functionalities left out)" if unrun else ""))
    if profile.get("busy"):
        lines.append(f"busy: load {max(profile['load_avg_before'][0], profile['load_avg_after'][0]):.1f} "
                     f"(above {BUSY_LOAD}): the units are inflated; calibrate on a quiet machine to publish")
    return lines
