"""Sign tests on a reduced ring Z_2^b after a local truncation (system.predictor_bits, engine.relu_bits).

A comparison's cost grows with the ring: compare.py's circuit opens 64 bits and walks a 64-leaf tree. When
the compared value is known to be small, its sign can be decided on b < 64 bits:

  1. Local truncation by s bits (SecureML, no message): P0 t0 = x0 >> s, P1 t1 = -((-x1) >> s) (arithmetic
     shifts), so t0 + t1 = floor(x / 2^s) + e with e in {0, 1}, except with probability <= 2^(l + 1 - 64)
     per element when |x| < 2^l (the shares wrap around 2^64 between them; x0 is uniform).
  2. Reduce mod 2^b (local): [t] over Z_2^b.
  3. The sign of t in Z_2^b: t_(b-1) = c_(b-1) ^ r_(b-1) ^ [c mod 2^(b-1) < r mod 2^(b-1)] with c = t + r opened
     (r a dealer mask), the borrow from a comparison tree over the b - 1 low bits (compare.py's, on b bits).

When [t >= 0] on Z_2^b equals [x >= 0] (x a fixed-point element of scale 2^f, s >= 0):
  (a) no wrap on Z_2^b: -2^(s+b-1) <= x < 2^(s+b-1) - 2^s; `shift_for` picks s = max(0, f + e + 1 - b) from a
      public bound |x| < 2^(f+e) (e = `range_log2`, real units 2^e), so (a) holds for |x| < 2^(f+e) - 2^s;
      the simulation's range check raises a one-line RangeError outside it (never a silent wrong sign);
  (b) x outside the band [-2^s, 0): there floor(x / 2^s) = -1 and the answer is e, so a value up to
      2^(s - f) (the resolution, real units) below zero may test as >= 0; every x >= 0 tests >= 0;
  (c) step 1 does not fail (probability <= 2^(f + e + 1 - 64) per element: 2^-40 at f = 16, e = 7).
Used as [z - threshold >= 0] for the predictor (a near-threshold unit may be taken active: recall never
drops, k may grow by the band's units) and as dense's DReLU (relu(x) may pass x in [-2^(s-f), 0)).

Cost of the b-bit sign for n elements (the tree over m = b - 1 leaves: per level p = floor(w / 2) pairs of
the w blocks, an odd top block waits; the last level needs only lt):
  online  per direction: packed(n, b) + sum_levels (3 or 2 at the last) * packed(n p, 1) bytes,
  offline: 2 * packed(n, b) (r's corrections) + sum_levels (2 or 1) * packed(n p, 1),
  rounds: 1 + ceil(log2(b - 1)).   b = 8: 25 bits per element each way in 4 rounds (64-bit circuit: 252, 7).
Under engine.comparison=fss step 3 is mpc/fss.py's sign on b bits instead: open c = t + r on b bits, a DCF
over the b - 1 low bits of c keyed on r (dealer.ring_fss_mask), [t < 0] = m + (1 - 2 m)(s + DCF(y)) with
m = c_(b-1), s = r_(b-1): 1 round, packed(n, b) each way; offline packed(n, b) + 8 n + 2 n key_bytes(b - 1, 1)
(the 64-bit DCF's keys: 63 levels; b = 8: 7). Its output is an additive 0/1 share: drelu needs no daBit.
"""

from __future__ import annotations

import numpy as np
import torch

from comet_core.comm.ledger import Cost, wire_bytes
from comet_core.mpc import arith, compare, dcf
from comet_core.mpc.engine import MPC, AShare
from comet_core.mpc.shape import Shape

MIN_BITS = 3


def shift_for(frac: int, bits: int, range_log2: int) -> int:
    """Step 1's s: the b-bit window covers |x| < 2^range_log2 (real units) at resolution 2^(s - frac)."""
    return max(0, frac + int(range_log2) + 1 - bits)


def _levels(m: int) -> list[int]:
    """Pairs per level of the comparison tree over m leaves."""
    out = []
    while m > 1:
        out.append(m // 2)
        m = (m + 1) // 2
    return out


def _check_window(x: AShare, bits: int, shift: int, what: str) -> None:
    mpc = x.mpc
    if not mpc.checking:
        return
    v = mpc.secret(x)
    hi, lo = (1 << (shift + bits - 1)) - (1 << shift), -(1 << (shift + bits - 1))
    bad = (v >= hi) | (v < lo)
    if bool(bad.any()):
        i = int(bad.flatten().nonzero()[0])
        raise mpc.range_error(f"{what} on {bits} bits", float(v.flatten()[i]) / 2.0 ** x.frac, hi / 2.0 ** x.frac,
                              "raise the range (system.predictor_range / engine.relu_range, log2) or the bits")


def _truncate_reduce(x: AShare, bits: int, shift: int) -> torch.Tensor:
    """Steps 1-2: party-stacked shares (P, n) of floor(x / 2^s) + e mod 2^bits (local)."""
    low = (1 << bits) - 1
    data = x.data.reshape(x.data.shape[0], -1)
    if data.is_meta:
        return Shape(tuple(data.shape))
    return x.mpc.per_party(data, lambda p, v: (v >> shift if p == 0 else -((-v) >> shift)) & low)


def _and_round(mpc: MPC, left, rights: list, count: int) -> list:
    """[left & r] for XOR-shared 0/1 values (P, count), one round: compare._and_shared_left on the values
    packed 64 per word (one Beaver AND triple per right sharing a; open d = left ^ a and e_i = r_i ^ b_i,
    1 bit each; left & r_i = c_i ^ (d & b_i) ^ (e_i & a) ^ (d & e_i, P0)), unpacked again.
    Cost: online 2 * (1 + len(rights)) * count bits; offline len(rights) * count bits."""
    if isinstance(left, Shape):
        mpc.dealer.and_triples((count,), count, 1, len(rights))
        mpc.open_raw([left] * (1 + len(rights)), 1, xor=True)
        return list(rights)
    outs = compare._and_shared_left(mpc, compare._pack_bits(left), [compare._pack_bits(r) for r in rights], count, 1)
    return [compare._unpack_bits(o, count) for o in outs]


def _msb_bits(mpc: MPC, t, bits: int) -> torch.Tensor:
    """Step 3: XOR shares (P, n) of bit bits - 1 of the Z_2^bits secret shared by t (P, n)."""
    low = (1 << bits) - 1
    P, n = t.shape[0], t.shape[1]
    m = bits - 1
    ra, rb = mpc.dealer.ring_compare_mask((n,), bits)
    if isinstance(t, Shape):
        mpc.open_raw([t], bits)
        for i, p in enumerate(_levels(m)):
            words = Shape((P, n * p))
            _and_round(mpc, words, [words] * (1 if i == len(_levels(m)) - 1 else 2), n * p)
        return Shape((P, n))
    (c,) = mpc.open_raw([(t + ra) & low], bits)
    c = c & low                                                       # (n,) public
    pos = torch.arange(m, device=c.device)
    cb = (c[:, None] >> pos) & 1                                      # (n, m)
    rbits = (rb[:, :, None] >> pos) & 1                               # (P, n, m) XOR shares of r's low bits
    lt = rbits & (1 - cb)                                             # [r_i = 1, c_i = 0]
    eq = mpc.xor_p0_(rbits.clone(), 1 - cb)                           # [r_i = c_i] = r_i ^ c_i ^ 1
    levels = _levels(m)
    for i, p in enumerate(levels):
        w = lt.shape[-1]
        last = i == len(levels) - 1
        lo_lt, hi_lt, lo_eq, hi_eq = lt[..., 0:2 * p:2], lt[..., 1:2 * p:2], eq[..., 0:2 * p:2], eq[..., 1:2 * p:2]
        flat = lambda v: v.reshape(P, n * p)   # noqa: E731
        ands = _and_round(mpc, flat(hi_eq), [flat(lo_lt)] if last else [flat(lo_lt), flat(lo_eq)], n * p)
        new_lt = hi_lt ^ ands[0].reshape(P, n, p)
        new_eq = None if last else ands[1].reshape(P, n, p)
        if w % 2:   # the odd top block waits for the next level
            new_lt = torch.cat([new_lt, lt[..., -1:]], -1)
            new_eq = torch.cat([new_eq, eq[..., -1:]], -1)
        lt, eq = new_lt, new_eq
    msb = lt[..., 0] ^ ((rb >> m) & 1)
    return mpc.xor_p0_(msb, (c >> m) & 1)


def _msb_fss(mpc: MPC, t, bits: int):
    """Step 3 under engine.comparison=fss: additive 0/1 shares (P, n) of bit bits - 1 of the Z_2^bits secret t."""
    low, nb = (1 << bits) - 1, bits - 1
    P, n = t.shape[0], t.shape[1]
    ra, sa, seeds, cw_s, cw_t, cw_v = mpc.dealer.ring_fss_mask(n, bits)
    if isinstance(t, Shape):
        mpc.open_raw([t], bits)
        return Shape((P, n))
    (c,) = mpc.open_raw([(t + ra.to(t.device)) & low], bits)
    c = (c & low).cpu().numpy()
    keys = dcf.Keys(seeds.numpy().view(np.uint64), cw_s[0].numpy().view(np.uint64), cw_t[0].numpy(), cw_v[0].numpy())
    u = dcf.eval_(mpc.parties, (c & ((1 << nb) - 1)).view(np.uint64), keys)[..., 0]    # (1 - 2 s)[y < alpha]
    m = (c >> nb) & 1
    out = (1 - 2 * m) * (sa.cpu().numpy() + u)                                          # m ^ (s ^ [y < alpha])
    if 0 in mpc.parties:
        out[0] += m
    return torch.from_numpy(out).to(t.device)


def _sign(x: AShare, bits: int, shift: int, what: str):
    """[x < 0] on Z_2^bits: XOR shares (circuit) or additive 0/1 shares (fss), (P, n)."""
    mpc = x.mpc
    _check_window(x, bits, shift, what)
    with mpc.ledger.protocol("ltz"):
        t = _truncate_reduce(x, bits, shift)
        return _msb_fss(mpc, t, bits) if mpc.config.comparison == "fss" else _msb_bits(mpc, t, bits)


def ge_zero_bits(x: AShare, bits: int, shift: int, what: str = "comparison") -> torch.Tensor:
    """XOR shares (P, *shape) of [x >= 0] decided on Z_2^bits after truncating by `shift` (module docstring:
    exact under (a)-(c)). Cost: sign_bits_cost."""
    neg = _sign(x, bits, shift, what)
    P = x.data.shape[0]
    if isinstance(neg, Shape):
        return Shape((P, *x.shape))
    if x.mpc.config.comparison == "fss":
        neg = neg & 1                     # additive shares of a bit: their low bits XOR to it
    return x.mpc.xor_p0_(neg, 1).reshape(P, *x.shape)


def drelu(x: AShare, bits: int, shift: int, what: str = "comparison") -> AShare:
    """[x >= 0] as an additive 0/1 share (frac 0): ge_zero_bits, then compare.b2a_bit (1 round, 1 bit); under
    fss 1 - [x < 0] from the additive sign directly."""
    mpc = x.mpc
    if mpc.config.comparison != "fss":
        return compare.b2a_bit(mpc, ge_zero_bits(x, bits, shift, what))
    neg = _sign(x, bits, shift, what)
    if isinstance(neg, Shape):
        return AShare(Shape((x.data.shape[0], *x.shape)), mpc, 0)
    return AShare(mpc.add_p0_(-neg, 1).reshape(neg.shape[0], *x.shape), mpc, 0)


def relu(x: AShare, bits: int, shift: int) -> AShare:
    """x [x >= 0] with the sign on Z_2^bits, the product on Z_2^64 (Beaver, integer d: no truncation)."""
    with x.mpc.ledger.protocol("relu"):
        return arith.mul(x, drelu(x, bits, shift, "ReLU input"))


def sign_bits_cost(mpc: MPC, n: int, bits: int) -> Cost:
    """ge_zero_bits / the b-bit sign of n elements (module docstring)."""
    if mpc.config.comparison == "fss":
        return Cost(2 * wire_bytes(n, bits), wire_bytes(n, bits) + 8 * n + 2 * n * dcf.key_bytes(bits - 1, 1), 1)
    levels = _levels(bits - 1)
    on = wire_bytes(n, bits) + sum((2 if i == len(levels) - 1 else 3) * wire_bytes(n * p, 1)
                                   for i, p in enumerate(levels))
    off = 2 * wire_bytes(n, bits) + sum((1 if i == len(levels) - 1 else 2) * wire_bytes(n * p, 1)
                                        for i, p in enumerate(levels))
    return Cost(2 * on, off, 1 + len(levels))


def drelu_cost(mpc: MPC, n: int, bits: int) -> Cost:
    if mpc.config.comparison == "fss":
        return sign_bits_cost(mpc, n, bits)
    b2a = Cost(2 * wire_bytes(n, 1), 8 * n + wire_bytes(n, 1), 1)
    return sign_bits_cost(mpc, n, bits) + b2a


def relu_cost(mpc: MPC, n: int, bits: int) -> Cost:
    return drelu_cost(mpc, n, bits) + arith.mul_cost(mpc, n, n, n, frac_sum=0)


# ---- the activation ReLU under engine.relu_bits (dense's and Comet's FFN: systems/operators.py) ----------

def activation_relu(x: AShare) -> AShare:
    """The FFN's ReLU: compare.relu at engine.relu_bits = 64 (the default), else `relu` on Z_2^relu_bits with
    the window 2^relu_range (|error| < 2^(relu_range + 1 - relu_bits), on inputs just below 0 only)."""
    cfg = x.mpc.config
    if cfg.relu_bits >= 64:
        return compare.relu(x)
    return relu(x, cfg.relu_bits, shift_for(x.frac, cfg.relu_bits, cfg.relu_range))


def activation_relu_cost(mpc: MPC, n: int) -> Cost:
    if mpc.config.relu_bits >= 64:
        return compare.relu_cost(mpc, n)
    return relu_cost(mpc, n, mpc.config.relu_bits)


# ---- the plaintext model of the reduced test (the accuracy side: experiments/cost_accuracy.py) -------------

def plain_ge_zero(x: torch.Tensor, bits: int, frac: int, range_log2: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """What ge_zero_bits decides for real values x (any shape, float), drawn as the protocol draws it.

    X = round(x 2^frac), s = shift_for(frac, bits, range_log2). Step 1 gives floor(X / 2^s) + e with e = 1 iff
    P0's low s bits r0 are below X mod 2^s (P1's are r0 - X mod 2^s), so for a uniform share
    P(e = 1) = (X mod 2^s) / 2^s. Hence: X >= 0 tests >= 0; -2^s < X < 0 (the band) tests >= 0 with
    probability (X + 2^s) / 2^s; X <= -2^s tests < 0. Values outside window (a) take their true sign here
    (an exact run refuses them with a RangeError; `outside_window` counts them). bits >= 64: [x >= 0]."""
    X = torch.round(x.double() * 2.0 ** frac)
    if bits >= 64:
        return X >= 0
    band = float(2 ** shift_for(frac, bits, range_log2))
    u = torch.rand(X.shape, generator=generator, dtype=torch.float64)
    return (X >= 0) | ((X > -band) & (u * band < X + band))


def outside_window(x: torch.Tensor, bits: int, frac: int, range_log2: int) -> torch.Tensor:
    """[x outside window (a)]: the values an exact run at `bits` refuses (module docstring)."""
    if bits >= 64:
        return torch.zeros(x.shape, dtype=torch.bool)
    s = shift_for(frac, bits, range_log2)
    X = torch.round(x.double() * 2.0 ** frac)
    return (X >= 2.0 ** (s + bits - 1) - 2.0 ** s) | (X < -2.0 ** (s + bits - 1))
