"""Non-linear functions built from the arithmetic and comparison protocols (CrypTen's recipes).

Each function states its steps and its cost in terms of the primitives' cost functions; the unit
tests check these compositions against the ledger exactly. Accuracy is stated for the input
ranges where the approximations hold (see each docstring).
"""

from __future__ import annotations

import math

import torch

from comet_core.comm.ledger import Cost
from comet_core.mpc import arith, compare, fss, pairmax, ring, spline
from comet_core.mpc.engine import MPC, AShare

GELU_K = 2.0 * math.sqrt(2.0 / math.pi)  # GeLU(x) ~ x * sigmoid(K * (x + 0.044715 x^3)) (tanh form)


def _scale_pow2(x: AShare, n: int) -> AShare:
    """x / 2^n kept at scale frac_bits: a truncation by n bits. Cost: truncate_cost."""
    y = arith.truncate(x, n)
    return AShare(y.data, x.mpc, x.frac)


def exp(x: AShare) -> AShare:
    """e^x ~ (1 + x / 2^n)^(2^n), n = engine.exp_iterations (CrypTen's limit method).

    1. y = 1 + x / 2^n (a truncation by n bits).
    2. With engine.exp_clamp: y = relu(y), so that x < -2^n gives 0 instead of a huge even power
       (CrypTen omits this; real models' attention scores and gate values reach it).
    3. Square y n times.
    Accurate to ~1e-3 relative for -2^n/4 < x < 6 (and ~0 below with the clamp).
    Cost: truncate_cost(N) + [clamp] relu_cost(N) + n * square_cost(N).
    Under engine.comparison=fss within spline.applies: the spline of e^x for x <= 0 (its callers' domain:
    softmax's x - max, sigmoid's -|x|), |error| <= 5e-5 + a few LSB, 0 below -16: spline_cost (4 rounds).
    Otherwise under fss (dealer truncation, `fused_squares`) the same values in n + 1 (+ 1 clamp) rounds:
    1'. [clamp] y = relu(x + 2^n) (the clamp before the shift: the same values, 1 round).
    2'. (y, y^2) = truncate_square(y, n): y = 1 + x / 2^n and its square (1 round).
    3'. n - 1 times (y, y^2) = truncate_square(y^2, f), then y = truncate(y^2, f): one round per square.
    Cost: [clamp] relu_cost(N) + n truncate_square_cost(N) + truncate_cost(N).
    """
    mpc = x.mpc
    with mpc.ledger.protocol("exp"):
        if spline.applies(mpc, x.numel(), "exp"):
            return spline.evaluate(x, "exp")
        if fused_squares(mpc):
            n, f = mpc.fn.exp_iterations, x.frac
            y = x.add_public(float(2 ** n))
            if mpc.fn.exp_clamp:
                y = compare.relu(y)
            y, y2 = arith.truncate_square(y, n)
            y = AShare(y.data, mpc, f)
            for _ in range(n - 1):
                y, y2 = arith.truncate_square(AShare(y2.data, mpc, 2 * f), f)
            return arith.truncate(AShare(y2.data, mpc, 2 * f), f)
        y = _scale_pow2(x, mpc.fn.exp_iterations).add_public(1.0)
        if mpc.fn.exp_clamp:
            y = compare.relu(y)
        for _ in range(mpc.fn.exp_iterations):
            y = arith.square(y)
        return y


def fused_squares(mpc: MPC) -> bool:
    """Whether exp's squarings ride on their truncations' openings (arith.truncate_square): under
    engine.comparison=fss with dealer truncation (circuit keeps the published Beaver squares)."""
    return mpc.config.comparison == "fss" and mpc.config.truncation == "dealer" and mpc.fn.exp_iterations >= 1


def exp_cost(mpc: MPC, n: int) -> Cost:
    if spline.applies(mpc, n, "exp"):
        return spline.spline_cost(mpc, n, "exp")
    clamp = compare.relu_cost(mpc, n) if mpc.fn.exp_clamp else Cost()
    if fused_squares(mpc):
        k = mpc.fn.exp_iterations
        return clamp + k * arith.truncate_square_cost(mpc, n) + arith.truncate_cost(mpc, n)
    return arith.truncate_cost(mpc, n) + clamp + mpc.fn.exp_iterations * arith.square_cost(mpc, n)


def hi_frac(mpc: MPC) -> int:
    """Scale of reciprocal and inverse square root results: min(frac_bits + 12, 30, 50 - frac_bits)
    (28 at f = 16, 30 at f = 18..20, 26 at f = 24).

    1/sqrt(var) of a real model's LayerNorm can be ~2^-10, which has only ~6 significant bits at
    f = 16; at f + 12 it keeps ~18. The caps keep every Newton product inside 2^62: u = t * y (~1)
    at scale 2F needs F <= 30, and y * (2 - t) or y * (3 - u) with y <= 2^8 at scale F + f needs
    F + f <= 50. With local truncation the larger words would fail often (probability
    ~word / 2^63), so there the results stay at frac_bits.
    """
    f = mpc.frac_bits
    return min(f + 12, 30, 50 - f) if mpc.config.truncation == "dealer" else f


def inv_sqrt_hi(mpc: MPC) -> int:
    """The effective top of engine.inv_sqrt_range: x < 2^(hi+1) with hi = min(configured, 2 (61 - F - f) - 2).

    t = x * y (~sqrt(x)) is a product at scale f + F, so sqrt(x) 2^(f+F) must stay below 2^62:
    31 (x < 2^32) at f = 16, 20 (x < 2^21) at f = 20 and at f = 24. With local truncation the result
    stays at frac_bits and the Newton step uses y^2 = 1/x, which needs x < 2^(f - 8) to keep 8
    significant bits: hi = f - 9 (x < 256 at f = 16; measured relative error <= 4e-4 there, 4e-2 at 2^12).
    """
    f, F = mpc.frac_bits, hi_frac(mpc)
    if mpc.config.truncation == "local":  # y^2 = 1/x at frac_bits keeps >= 8 significant bits below 2^(f-8)
        return min(mpc.fn.inv_sqrt_range[1], f - 9)
    return min(mpc.fn.inv_sqrt_range[1], 2 * (61 - F - f) - 2)


def _check_domain(x: AShare, hi: int, name: str) -> None:
    """Simulation only: inputs at or above 2^(hi+1) would overflow the Newton products; say so."""
    mpc = x.mpc
    if not mpc.checking:
        return
    v = mpc.secret(x)
    top = float(v.max()) / 2.0 ** x.frac if v.numel() else 0.0
    if top >= 2.0 ** (hi + 1):
        raise mpc.range_error(f"the {name} input", top, 2.0 ** (hi + 1),
                              f"{name} holds x < 2^{hi + 1} at frac_bits={mpc.frac_bits} (docs/ranges.md)")


# engine.comparison=fss: the power-of-two guess is one round and one DCF key per value whatever its number
# of breakpoints (fss.ltz_many), so a finer guess is only local work; these are the candidates per octave
FINE_PER_OCTAVE = (8, 64, 256)
GUESS_BUDGET = 1 << 17   # DCF evaluations of one guess (values x breakpoints) up to which a finer m is taken
                         # (a 12-head 128-token softmax's 1,536 row sums: m = 8 over 9 octaves, 109k)


def _newton_error(e: float, power: float) -> float:
    """The relative error after one Newton step from e: reciprocal e^2, inverse square root 1.5 e^2 + 0.5 e^3."""
    return e * e if power == -1.0 else 1.5 * e * e + 0.5 * e ** 3


def guess_error(m: int, power: float) -> float:
    """pow2_guess's largest relative error: 2^(|power| / (2 m)) - 1 for m = 1 (the published geometric
    midpoints), (q - 1) / (q + 1) with q = 2^(|power| / m) for m > 1 (the minimax constant of each bucket)."""
    if m == 1:
        return 2.0 ** (abs(power) / 2) - 1
    q = 2.0 ** (abs(power) / m)
    return (q - 1) / (q + 1)


def guess_plan(mpc: MPC, n: int, lo: int, hi: int, power: float, configured: int) -> tuple[int, int]:
    """(breakpoints per octave m, Newton steps) for n values of x^power over [2^lo, 2^(hi+1)).

    circuit: (1, configured), as published. fss: among m = 1 and FINE_PER_OCTAVE within GUESS_BUDGET
    evaluations (n ((hi - lo + 1) m - 1)), the fewest steps (at least 1), then the smallest m, whose final
    relative error (guess 2^(|power| / (2m)) - 1, then _newton_error per step) is at most the configured
    steps' from m = 1, or 2^-(f+2) if that is larger (a quarter LSB, relative, at frac_bits).
    Reciprocal, 4 steps: m = 8 takes 2 (0.0433 -> 3.5e-6), m = 64 2 (0.0054 -> 8.6e-10), m = 256 1
    (0.00135 -> 1.8e-6); inverse square root, 3 steps: m = 64 takes 1 (0.0027 -> 1.1e-5)."""
    if mpc.config.comparison != "fss":
        return 1, configured

    def final(m: int, steps: int) -> float:
        e = guess_error(m, power)
        for _ in range(steps):
            e = _newton_error(e, power)
        return e

    target = max(final(1, configured), 2.0 ** -(mpc.frac_bits + 2))
    best = (configured, 1)
    for m in FINE_PER_OCTAVE:
        if n * ((hi - lo + 1) * m - 1) > GUESS_BUDGET:
            break
        steps = next((k for k in range(1, configured + 1) if final(m, k) <= target), configured)
        best = min(best, (steps, m))
    return best[1], best[0]


def pow2_guess(x: AShare, lo: int, hi: int, power: float, frac: int, per_octave: int = 1) -> AShare:
    """A first guess of x^power (power < 0) within a factor 2^(|power| / (2 m)), for x > 0, at scale
    `frac`, with m = per_octave breakpoints per octave.

    1. b_k = [x >= 2^(k/m)] for k = m lo + 1 .. m (hi + 1) - 1: one batched comparison of x - 2^(k/m)
       (local shifts).
    2. x in [2^(j/m), 2^((j+1)/m)) gives b_k = 1 exactly for k <= j, so the guess g(j) = 2^(power (j + 1/2)
       / m) is g(m lo) + sum_k b_k (g(k) - g(k-1)): public integer coefficients (differences of the encoded
       guesses, so the sum is exactly the encoding of g(j)) times integer shares (local). For m > 1 (fss
       only) g(j) is the minimax constant 2 / (a^-power + b^-power) of the bucket's grid values [a, b] (its
       rounded thresholds, less one LSB above), relative error <= (q - 1) / (q + 1), q = 2^(|power| / m)
       (guess_error; at the bottom of a wide range, where the rounding merges buckets, the one grid value).
    Valid for 2^lo <= x < 2^(hi+1); below, the guess saturates at g(m lo), above at g(m (hi + 1) - 1).
    Cost: drelu_cost(rows * (m (hi - lo + 1) - 1)) (m = 1: rows * (hi - lo)); under engine.comparison=fss
    step 1 is fss.ltz_many on x itself: ltz_many_cost(rows) (1 round, one key per value).
    """
    m = per_octave
    ks = torch.arange(lo * m + 1, (hi + 1) * m, dtype=torch.float64) / m
    thresholds = 2.0 ** ks
    if m > 1:   # rounded up to x's grid: x >= threshold exactly when x >= 2^(k/m) (m = 1: powers of two)
        thresholds = torch.ceil(thresholds * 2.0 ** x.frac) / 2.0 ** x.frac
    with x.mpc.ledger.protocol("pow2_guess"):
        if x.mpc.config.comparison == "fss":   # one opening, one key per value: [x < t_k] for every k
            below = fss.ltz_many(x, ring.encode(thresholds, x.frac))
            bits = AShare(x.mpc.add_p0_(-below.data, 1), x.mpc, 0)     # [x >= t_k] (..., K)
        else:
            diffs = x.unsqueeze(-1).add_public(-thresholds)              # (..., K)
            bits = compare.drelu(diffs)                                  # integer 0/1 shares
        if m == 1:   # the published geometric midpoints
            js = (torch.arange(lo * m, (hi + 1) * m, dtype=torch.float64) + 0.5) / m
            enc = torch.round(2.0 ** (power * js + frac))
        else:   # bucket j: the grid values [a_j, b_j) = [edges[j], edges[j + 1] - 2^-frac]; their minimax constant
            edges = torch.cat([torch.tensor([2.0 ** lo], dtype=torch.float64), thresholds,
                               torch.tensor([2.0 ** (hi + 1)], dtype=torch.float64)])
            a, b = edges[:-1], torch.maximum(edges[:-1], edges[1:] - 2.0 ** -x.frac)
            enc = torch.round(2.0 / (a ** -power + b ** -power) * 2.0 ** frac)
        steps = (enc[1:] - enc[:-1]).to(torch.int64)  # differences of the encoded guesses: the sum telescopes
        y = bits.mul_int(steps).sum(-1)                 # to round(g(j) 2^frac) exactly, no rounding build-up
        return AShare(y.data, x.mpc, frac).add_public(float(enc[0]) / 2.0 ** frac)


def pow2_guess_cost(mpc: MPC, rows: int, lo: int, hi: int, per_octave: int = 1) -> Cost:
    if mpc.config.comparison == "fss":
        return fss.ltz_many_cost(mpc, rows)
    return compare.drelu_cost(mpc, rows * ((hi - lo + 1) * per_octave - 1))


def reciprocal(x: AShare, octaves: tuple | None = None) -> AShare:
    """1 / x for x > 0 by Newton-Raphson from a power-of-two guess; result at scale hi_frac.

    1. y0 = pow2_guess(x, power -1, m = guess_plan): relative error <= 2^(1/(2m)) - 1 in
       2^lo <= x < 2^(hi+1) (engine.reciprocal_range).
    2. Repeat guess_plan's steps (reciprocal_nr_iters; fewer with a fine guess, m > 1): t = x * y (~1, scale f);
       y = y * (2 - t) (scale hi_frac).
    Unlike CrypTen's exp-based guess (valid only for x < ~600) it holds across the whole range.
    `octaves` = (lo, hi) narrows the range where the caller knows it (softmax's row sums under fss).
    Cost: pow2_guess_cost(N, m) + iters * 2 * mul_cost(N, N, N).
    """
    mpc = x.mpc
    lo, hi = octaves or mpc.fn.reciprocal_range
    F, f = hi_frac(mpc), mpc.frac_bits
    m, steps = guess_plan(mpc, x.numel(), lo, hi, -1.0, mpc.fn.reciprocal_nr_iters)
    with mpc.ledger.protocol("reciprocal"):
        _check_domain(x, hi, "reciprocal")
        y = pow2_guess(x, lo, hi, -1.0, F, m)
        for _ in range(steps):
            t = arith.mul(x, y, out_frac=f)
            y = arith.mul(y, (-t).add_public(2.0), out_frac=F)
        return y


def reciprocal_cost(mpc: MPC, n: int, octaves: tuple | None = None) -> Cost:
    mc = arith.mul_cost(mpc, n, n, n)
    lo, hi = octaves or mpc.fn.reciprocal_range
    m, steps = guess_plan(mpc, n, lo, hi, -1.0, mpc.fn.reciprocal_nr_iters)
    return pow2_guess_cost(mpc, n, lo, hi, m) + steps * (mc + mc)


def inv_sqrt(x: AShare) -> AShare:
    """1 / sqrt(x) for x > 0 by Newton-Raphson from a power-of-two guess; result at scale hi_frac.

    1. y0 = pow2_guess(x, power -1/2, m = guess_plan): relative error <= 2^(1/(4m)) - 1 in the range
       2^lo <= x < 2^(hi+1) (engine.inv_sqrt_range, hi capped by inv_sqrt_hi; CrypTen's exp-based guess holds only for
       ~0.1 < x < 20, too narrow for LayerNorm variances of real models).
    2. Repeat guess_plan's steps (inv_sqrt_nr_iters; fewer with a fine guess, m > 1): t = x * y (= sqrt(x), scale hi_frac); u = t * y (~1, scale f);
       y = y * (3 - u) / 2 (scale hi_frac). Never squares y, which would underflow for large x.
       (With local truncation, hi_frac = f and u = x * y^2, more precise at that scale for tiny x.)
    Cost: pow2_guess_cost(N, m) + iters * 3 * mul_cost(N, N, N)
          (local: iters * (square_cost(N) + 2 mul_cost(N, N, N))).
    """
    mpc = x.mpc
    lo, hi = mpc.fn.inv_sqrt_range[0], inv_sqrt_hi(mpc)
    F, f = hi_frac(mpc), mpc.frac_bits
    m, steps = guess_plan(mpc, x.numel(), lo, hi, -0.5, mpc.fn.inv_sqrt_nr_iters)
    with mpc.ledger.protocol("inv_sqrt"):
        _check_domain(x, hi, "inv_sqrt")
        y = pow2_guess(x, lo, hi, -0.5, F, m)
        for _ in range(steps):
            if F > f:
                t = arith.mul(x, y, out_frac=F)     # sqrt(x) keeps F bits for tiny x
                u = arith.mul(t, y, out_frac=f)
            else:                                   # at F = f, x * y^2 is the more precise order
                u = arith.mul(x, arith.square(y))
            y = arith.mul(y, (-u).add_public(3.0), out_frac=F - 1)
            y = AShare(y.data, mpc, F)  # the same integers read at scale F: a division by 2
        return y


def inv_sqrt_cost(mpc: MPC, n: int) -> Cost:
    m = arith.mul_cost(mpc, n, n, n)
    lo, hi = mpc.fn.inv_sqrt_range[0], inv_sqrt_hi(mpc)
    first = m if hi_frac(mpc) > mpc.frac_bits else arith.square_cost(mpc, n)
    po, steps = guess_plan(mpc, n, lo, hi, -0.5, mpc.fn.inv_sqrt_nr_iters)
    return pow2_guess_cost(mpc, n, lo, hi, po) + steps * (first + m + m)


def softmax(x: AShare, dim: int = -1, mask: torch.Tensor | None = None) -> AShare:
    """softmax along `dim` (default last), optionally with a public 0/1 `mask` (1 = attend).

    1. Masked positions are set to a public -2^10 (local), so they never win the max.
    2. m = max along dim (pairmax.max_last: all pairs in one tree for short rows such as a decode step's,
       the tournament otherwise; engine.max_method).   3. e = exp(x - m); masked positions set to 0 (local).
    4. s = sum e (local, >= 1).   5. r = reciprocal(s).   6. out = e * r (broadcast).
    Under engine.comparison=fss the reciprocal's guess covers only the sums' octaves, 2^-1 <= s < 2^(t+1),
    t = ceil(log2 n) (softmax_octaves: e(max) ~ 1 and every e <= 1, up to exp's error).
    Cost: max_last_cost(R, n) + exp_cost(N) + reciprocal_cost(R, softmax_octaves) + mul_cost(N, R, N),
    with N elements in R rows of length n.
    """
    mpc = x.mpc
    assert dim in (-1, x.dim() - 1), "softmax runs along the last dim"
    with mpc.ledger.protocol("softmax"):
        if mask is not None:
            x = _set_public(x, mask, -1024.0)
        m = pairmax.max_last(x)
        e = exp(x - m)
        if mask is not None:
            e = _set_public(e, mask, 0.0)
        r = reciprocal(arith.local_sum(e, what="softmax row sum"), softmax_octaves(mpc, x.shape[-1]))
        return arith.mul(e, r)


def softmax_octaves(mpc: MPC, n: int) -> tuple | None:
    """The reciprocal's range for softmax's row sums of n terms under fss, (-1, ceil(log2 n)); None (the
    configured range) under circuit, whose ledger stays as published."""
    return (-1, max(0, math.ceil(math.log2(n)))) if mpc.config.comparison == "fss" else None


def _set_public(x: AShare, keep: torch.Tensor, value: float) -> AShare:
    """Where keep == 0, replace the secret by a public value (local: P0 holds it, P1 holds 0)."""
    if x.data.is_meta:
        return x
    keep = keep.to(x.data.device, torch.bool).expand(x.shape)
    enc = int(round(value * (1 << x.frac)))
    return x._wrap(x.mpc.per_party(x.data, lambda p, s: torch.where(keep, s, torch.full_like(s, enc if p == 0 else 0))))


def softmax_cost(mpc: MPC, rows: int, n: int) -> Cost:
    big = rows * n
    return (pairmax.max_last_cost(mpc, rows, n) + exp_cost(mpc, big)
            + reciprocal_cost(mpc, rows, softmax_octaves(mpc, n)) + arith.mul_cost(mpc, big, rows, big))


NORM_EXTRA_BITS = 2  # x / sqrt(d) is held at frac_bits + 2: 4x the precision, rms range 2^(15-2) at f = 16
MEAN_BITS = 18  # significant bits of the public 1/d factor: relative error <= 2^-18 for every width d


def _mean_last(x: AShare) -> AShare:
    """mean over the last dim for any width d (not only powers of two).

    1. s = sum(x) (local; arith.local_sum bounds it before it can wrap).
    2. c = round(2^(t + MEAN_BITS) / d), t = ceil(log2 d): a public integer with MEAN_BITS significant
       bits (1/d encoded at frac_bits would be off by up to d / 2^(f+1) relative: 0.39% at d = 768).
    3. mean = (s * c) >> (t + MEAN_BITS) (local product, one truncation).
    Range: |mean| < 2^(62 - MEAN_BITS - t - f) (2^18 at d = 768, f = 16). Cost: truncate_cost(R).
    """
    mpc = x.mpc
    d = x.shape[-1]
    t = (d - 1).bit_length()
    c = round(2.0 ** (t + MEAN_BITS) / d)
    s = arith.local_sum(x, what="row sum for the mean")
    arith.check_product(s, torch.tensor(float(c)), s.frac, what=f"row sum * round(2^{t + MEAN_BITS}/d)")
    return arith.truncate(AShare(s.mul_int(c).data, mpc, s.frac + t + MEAN_BITS), t + MEAN_BITS)


def _mean_square_last(x: AShare) -> AShare:
    """mean(x^2) over the last dim, pre-scaled so that large activations cannot overflow.

    1. xs = x * (2^k / sqrt(d)) (public factor with >= 20 significant bits; one truncation to frac_bits),
       read as x / sqrt(d) at scale f + k (k = NORM_EXTRA_BITS = 2).
    2. q = xs^2 at scale 2 (f + k) (square pair, no truncation).
    3. ms = sum(q) (local, bounded by arith.local_sum: squares that each fit can sum past 2^64) = mean(x^2),
       truncated once per row back to frac_bits.
    Squaring x / sqrt(d) instead of x moves the overflow from any |x| >= 2^(31-f) (2^15 at f = 16: a
    margin of only 1.8x over SmolLM2's outliers of 17,860) to mean(x^2) >= 2^(62 - 2(f+k)), i.e.
    rms(x) < 2^(31-f-k) = 8,192 at f = 16 (any single |x| < 8,192 sqrt(d): 196,608 at d = 576). The
    truncation of xs is unbiased (stochastic rounding), so the mean square has a relative error
    ~ 2^-(f+k) / rms(x) (k buys precision for rows of small rms, at the price of range).
    Cost: truncate_cost(N) + square_cost(N, truncated=False) + truncate_cost(R).
    """
    d, k = x.shape[-1], NORM_EXTRA_BITS
    bits = 20 + (d - 1).bit_length() // 2 + 1
    xs = arith.mul_public(x, 2.0 ** k / math.sqrt(d), frac=bits)   # x 2^k / sqrt(d) at scale f ...
    xs = AShare(xs.data, x.mpc, xs.frac + k)                      # ... is x / sqrt(d) at scale f + k
    q = arith.square(xs, out_frac=2 * xs.frac)
    return arith.truncate(arith.local_sum(q, what="row sum of squares"), 2 * xs.frac - x.mpc.frac_bits)


def _mean_square_cost(mpc: MPC, rows: int, n: int) -> Cost:
    t = arith.truncate_cost
    return t(mpc, n) + arith.square_cost(mpc, n, truncated=False) + t(mpc, rows)


def layernorm(x: AShare, weight: AShare | torch.Tensor | None, bias: AShare | torch.Tensor | None,
              eps: float = 1e-5) -> AShare:
    """LayerNorm over the last dim; weight/bias secret (model privacy) or public.

    1. mu = _mean_last(x) (one truncation per row, exact 1/d for any d).   2. xc = x - mu.
    3. var = _mean_square_last(xc) (pre-scaled by 1/sqrt(d): rms(xc) < 8,192 at f = 16).   4. inv = inv_sqrt(var + eps) per row.
    5. y = xc * inv (broadcast).   6. y * weight + bias (secret weight: Beaver; public: local).
    Cost: truncate(R) + [truncate(N) + square_cost(N, untruncated) + truncate(R)] + inv_sqrt_cost(R)
          + mul_cost(N, R, N) + [secret weight] mul_cost(N, d, N) | [public] truncate_cost(N).
    """
    with x.mpc.ledger.protocol("layernorm"):
        xc = x - _mean_last(x)
        var = _mean_square_last(xc)
        y = arith.mul(xc, inv_sqrt(var.add_public(eps)))
        return _affine(y, weight, bias)


def rmsnorm(x: AShare, weight: AShare | torch.Tensor | None, eps: float = 1e-6) -> AShare:
    """RMSNorm over the last dim: x / sqrt(mean(x^2) + eps) * weight.

    1. ms = _mean_square_last(x).   2. inv = inv_sqrt(ms + eps).   3. y = x * inv.   4. y * weight.
    Cost: [truncate(N) + square_cost(N, untruncated) + truncate(R)] + inv_sqrt_cost(R)
          + mul_cost(N, R, N) + weight term.
    """
    with x.mpc.ledger.protocol("rmsnorm"):
        ms = _mean_square_last(x)
        y = arith.mul(x, inv_sqrt(ms.add_public(eps)))
        return _affine(y, weight, None)


def _affine(y: AShare, weight, bias) -> AShare:
    if weight is not None:
        y = arith.mul(y, weight) if isinstance(weight, AShare) else arith.mul_public(y, weight)
    if bias is not None:
        y = y + bias if isinstance(bias, AShare) else y.add_public(bias)
    return y


def _affine_cost(mpc: MPC, n: int, d: int, secret_weight: bool) -> Cost:
    return arith.mul_cost(mpc, n, d, n) if secret_weight else arith.truncate_cost(mpc, n)


def layernorm_cost(mpc: MPC, rows: int, d: int, secret_weight: bool = True) -> Cost:
    n = rows * d
    return (arith.truncate_cost(mpc, rows) + _mean_square_cost(mpc, rows, n) + inv_sqrt_cost(mpc, rows)
            + arith.mul_cost(mpc, n, rows, n) + _affine_cost(mpc, n, d, secret_weight))


def rmsnorm_cost(mpc: MPC, rows: int, d: int, secret_weight: bool = True) -> Cost:
    n = rows * d
    return (_mean_square_cost(mpc, rows, n) + inv_sqrt_cost(mpc, rows)
            + arith.mul_cost(mpc, n, rows, n) + _affine_cost(mpc, n, d, secret_weight))


def sigmoid(x: AShare) -> AShare:
    """1 / (1 + e^-x) by the reciprocal method (CrypTen).

    1. s = [x < 0].   2. a = x * (1 - 2s) = |x|.   3. d = 1 + exp(-a), in (1, 2].
    4. p = 1/d by sigmoid_nr_iters Newton steps from the public guess 0.75 (2 muls each).
    5. out = select(s, 1 - p, p).
    Cost: ltz_cost(N) + mul_cost(N,N,N) [no trunc] + exp_cost(N)
          + (2 iters - 1) mul_cost(N,N,N) [first x*y0 is public] + mul_cost(N,N,N) [select].
    Under engine.comparison=fss within spline.applies: the spline of sigmoid (|error| <= 2e-4 + a few LSB,
    0 below -16 and 1 above 16): spline_cost (4 rounds).
    """
    mpc = x.mpc
    with mpc.ledger.protocol("sigmoid"):
        if spline.applies(mpc, x.numel(), "sigmoid"):
            return spline.evaluate(x, "sigmoid")
        s = compare.ltz(x)
        sign = s.mul_int(-2)
        mpc.add_p0_(sign.data, 1)
        a = arith.mul(x, sign)
        d = exp(-a).add_public(1.0)
        # Newton for 1/d from y0 = 0.75: the first step's d * y0 is a public multiplication
        y = None
        for i in range(mpc.fn.sigmoid_nr_iters):
            if y is None:
                y = (-arith.mul_public(d, 0.75)).add_public(2.0)
                y = arith.mul_public(y, 0.75)
            else:
                y = arith.mul(y, (-arith.mul(d, y)).add_public(2.0))
        return compare.select(s, (-y).add_public(1.0), y)


def sigmoid_cost(mpc: MPC, n: int) -> Cost:
    if spline.applies(mpc, n, "sigmoid"):
        return spline.spline_cost(mpc, n, "sigmoid")
    m = arith.mul_cost(mpc, n, n, n)
    t = arith.truncate_cost(mpc, n)
    iters = mpc.fn.sigmoid_nr_iters
    newton = (t + t) + (iters - 1) * (m + m) if iters >= 1 else Cost()
    return (compare.ltz_cost(mpc, n) + arith.mul_cost(mpc, n, n, n, frac_sum=mpc.frac_bits)
            + exp_cost(mpc, n) + newton + arith.mul_cost(mpc, n, n, n, frac_sum=mpc.frac_bits))


def silu(x: AShare) -> AShare:
    """x * sigmoid(x). Cost: sigmoid_cost(N) + mul_cost(N, N, N).
    Under engine.comparison=fss within spline.applies: relu(x) + the spline of silu - relu (|error| <= 2e-4
    + a few LSB): spline_cost (4 rounds)."""
    with x.mpc.ledger.protocol("silu"):
        if spline.applies(x.mpc, x.numel(), "silu"):
            return spline.evaluate(x, "silu")
        return arith.mul(x, sigmoid(x))


def silu_cost(mpc: MPC, n: int) -> Cost:
    if spline.applies(mpc, n, "silu"):
        return spline.spline_cost(mpc, n, "silu")
    return sigmoid_cost(mpc, n) + arith.mul_cost(mpc, n, n, n)


def gelu(x: AShare) -> AShare:
    """GeLU, tanh form: x * sigmoid(K (x + 0.044715 x^3)), K = 2 sqrt(2/pi) (|error| < 1e-3 vs erf).

    Cost: square_cost(N) + mul_cost(N,N,N) + truncate(N) [x 0.044715] + truncate(N) [x K]
          + sigmoid_cost(N) + mul_cost(N,N,N).
    Under engine.comparison=fss within spline.applies: relu(x) + the spline of GeLU (erf form) - relu
    (|error| <= 2e-4 + a few LSB against the erf GeLU): spline_cost (4 rounds).
    """
    with x.mpc.ledger.protocol("gelu"):
        if spline.applies(x.mpc, x.numel(), "gelu"):
            return spline.evaluate(x, "gelu")
        x3 = arith.mul(arith.square(x), x)
        z = arith.mul_public(x + arith.mul_public(x3, 0.044715), GELU_K)
        return arith.mul(x, sigmoid(z))


def gelu_cost(mpc: MPC, n: int) -> Cost:
    if spline.applies(mpc, n, "gelu"):
        return spline.spline_cost(mpc, n, "gelu")
    m = arith.mul_cost(mpc, n, n, n)
    t = arith.truncate_cost(mpc, n)
    return arith.square_cost(mpc, n) + m + t + t + sigmoid_cost(mpc, n) + m
