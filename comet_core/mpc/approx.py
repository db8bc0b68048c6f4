"""The baselines' function approximations as 2PC protocols, each next to its plaintext closed form.

MPCFormer (Li et al., ICLR'23; DachengLi1/MPCFormer `utils.py`):
  quad             GeLU ~ 0.125 x^2 + 0.5 x + 0.25
  softmax_2quad    (x + c)^2 / sum (x + c)^2, c = 5, divided with the engine's Newton reciprocal
SecFormer (Luo et al., ACL Findings'24; jinglong696/SecFormer `efficiency/utils.py`, `operation/*.py`):
  fourier_gelu     0.5 x (1 + erf(x / sqrt 2)), erf a 7-term Fourier sine series on [-2.5, 2.5]
  softmax_2quad_goldschmidt   2Quad with a Goldschmidt division (13 iterations, deflated)
  goldschmidt_norm LayerNorm / RMSNorm with a Goldschmidt inverse square root (8 iterations, deflated)
PUMA (Dong et al., arXiv 2307.12533; secretflow/spu examples `hack_gelu`, `hack_silu`, `hack_softmax`),
ported to 2PC as the SecFormer repository did (CrypTen protocols: comparisons + Beaver powers), with that
port's two bugs fixed (its GeLU gates both polynomials with the same indicator and compares with +1.95;
its softmax subtracts the max after exp): we evaluate PUMA's own definitions.
  piecewise_poly   GeLU (4 pieces, deg 3 / deg 6) and SiLU (4 pieces, deg 2 / deg 6)
  softmax_clipped_exp   x - max, exp(x) [x > -14], divide

Every protocol returns shares at the engine's scale or a higher one (the next linear layer truncates);
every `plain_*` is its closed form in float64 torch, mirroring the iteration counts, so an exact-mode
output equals it up to fixed-point rounding (tolerances in tests/test_approx.py).
Costs are compositions of the engine's primitive costs (arith, compare, nonlinear); online bytes count
both directions, `engine.truncation` decides whether a truncation costs a round.
"""

from __future__ import annotations

import math

import torch

from comet_core.comm.ledger import Cost
from comet_core.mpc import arith, compare, nonlinear as nl
from comet_core.mpc.engine import MPC, AShare
from comet_core.mpc.shape import Shape


def _at_f(x: AShare) -> AShare:
    """x at the engine's scale (a truncation only if it carries more fractional bits)."""
    f = x.mpc.frac_bits
    return arith.truncate(x, x.frac - f) if x.frac > f else x.rescale(f)


def _at_f_cost(mpc: MPC, n: int, frac: int) -> Cost:
    return arith.truncate_cost(mpc, n) if frac > mpc.frac_bits else Cost()


def _reinterpret(x: AShare, frac: int) -> AShare:
    """The same ring integers read at another scale: a division by 2^(frac - x.frac), exact and local."""
    return AShare(x.data, x.mpc, frac)


def _ltz_batched(xs: list[AShare]) -> list[AShare]:
    """[x_i < 0] for several same-shape inputs in one comparison (8 rounds for all)."""
    bits = compare.ltz(AShare.stack(xs, 0))
    return [bits[i] for i in range(len(xs))]


# ================================== MPCFormer ===================================================

QUAD_COEFFS = (0.25, 0.5, 0.125)  # c0 + c1 x + c2 x^2 (MPCFormer `activation_quad`)


def quad(x: AShare) -> AShare:
    """MPCFormer's Quad: 0.125 x^2 + 0.5 x + 0.25.

    1. s = x^2 (square pair; truncated to scale f).
    2. out = (s + 4 x + 2) / 8: local, the integer sum read at scale f + 3 (exact).
    Cost: square_cost(n) (+ a truncation when x arrives above scale f).
    """
    with x.mpc.ledger.protocol("quad"):
        x = _at_f(x)
        s = arith.square(x)
        out = x.mpc.add_p0_(s.data + 4 * x.data, 2 << x.frac)
        return AShare(out, x.mpc, x.frac + 3)


def quad_cost(mpc: MPC, n: int) -> Cost:
    return arith.square_cost(mpc, n)


def plain_quad(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return 0.125 * x * x + 0.5 * x + 0.25


def softmax_2quad(x: AShare, mask: torch.Tensor | None = None, c: float = 5.0) -> AShare:
    """MPCFormer's 2Quad: q = (x + c)^2, out = q / sum q along the last dim (masked q set to 0).

    1. q = square(x + c).   2. masked positions: q = 0 (local).   3. s = sum q (local).
    4. r = 1 / s: the engine's Newton reciprocal (MPCFormer calls CrypTen's), scale hi_frac.
    5. out = q * r (broadcast Beaver multiply).
    Cost: square_cost(N) + reciprocal_cost(R) + mul_cost(N, R, N), N elements in R rows.
    """
    with x.mpc.ledger.protocol("softmax_2quad"):
        q = arith.square(_at_f(x).add_public(c))
        if mask is not None:
            q = nl._set_public(q, mask, 0.0)
        r = nl.reciprocal(arith.local_sum(q, what="2Quad row sum"))
        return arith.mul(q, r)


def softmax_2quad_cost(mpc: MPC, rows: int, n: int) -> Cost:
    big = rows * n
    return arith.square_cost(mpc, big) + nl.reciprocal_cost(mpc, rows) + arith.mul_cost(mpc, big, rows, big)


def _masked_quad(x: torch.Tensor, mask, c: float) -> torch.Tensor:
    q = (x.double() + c) ** 2
    if mask is not None:
        q = q * mask.to(q.dtype).expand(q.shape)
    return q


def plain_softmax_2quad(x: torch.Tensor, mask: torch.Tensor | None = None, c: float = 5.0) -> torch.Tensor:
    q = _masked_quad(x, mask, c)
    return q / q.sum(-1, keepdim=True)


# ================================== SecFormer ===================================================

# erf(u) ~ sum_k beta_k sin(k pi u / 10) on [-2.5, 2.5] (SecFormer `secformer_gelu`: k = 1..7, period 20)
FOURIER_BETA = (1.25772, -0.0299154, 0.382155, -0.0519123, 0.196033, -0.0624557, 0.118029)
FOURIER_PERIOD = 20        # real units: sin(k pi u / 10) has period 20 for every k
FOURIER_RANGE = 2.5        # the series is used for |u| < 2.5; erf is clamped to -1 / +1 outside
FOURIER_MASK_BITS = 60     # t uniform in [0, 2^60) ring units: x - t hides x (statistical distance |x| 2^(f-60))


def fourier_gelu(x: AShare) -> AShare:
    """SecFormer's GeLU: 0.5 x (1 + erf~(x / sqrt 2)), erf~ = -1 | Fourier series | +1.

    1. u = x / sqrt 2 (public multiply; a truncation).
    2. c0 = [u < -2.5], c1 = [u < 2.5]: one batched comparison of u + 2.5 and u - 2.5 (SecFormer makes
       two; batching them costs the same bytes in half the rounds).
    3. Dealer: t uniform in [0, 2^60) (ring units) with shares of t, sin(k w t), cos(k w t), k = 1..7,
       w = pi / 10 (dealer.fourier_mask). Open d = u - t (1 round): no wrap (|u|, t < 2^61), so
       u = d + t over the reals; d is reduced mod the period (exact integers) before sin/cos.
    4. sin(k w u) = sin(k w d) [cos k w t] + cos(k w d) [sin k w t]: public coefficients times shares,
       summed with beta_k at scale 2f, one truncation: fur = sum_k beta_k sin(k w u).
    5. erf~ = -c0 + (1 - c1) + (c1 - c0) * fur (Beaver, integer 0/1 factor: no truncation).
    6. out = x * (1 + erf~) / 2 (Beaver; the /2 is the product read one bit lower).
    Cost: truncate(n) + ltz_cost(2n) + open (2*8n, 1 round) + truncate(n) + mul_cost(n, n, n) [int]
          + mul_cost(n, n, n); offline fourier_mask: 8n (1 + 2K).
    Hiding: d = u - t with t uniform over 2^60 ring units is statistically close to uniform (distance
    <= |u| 2^(f - 60)); SecFormer's own t is uniform in [-2^10, 0) real units, far weaker.
    """
    mpc = x.mpc
    f = mpc.frac_bits
    K = len(FOURIER_BETA)
    with mpc.ledger.protocol("fourier_gelu"):
        x = _at_f(x)
        u = arith.mul_public(x, 1.0 / math.sqrt(2.0))
        c0, c1 = _ltz_batched([u.add_public(FOURIER_RANGE), u.add_public(-FOURIER_RANGE)])
        period = FOURIER_PERIOD << f
        t, sin_t, cos_t = mpc.dealer.fourier_mask(u.shape, period, K, f, FOURIER_MASK_BITS)
        (d,) = mpc.open(u._wrap(u.data - t.data))
        if d.is_meta:
            acc = Shape(u.data.shape)
        else:
            ang = torch.remainder(d, period).to(torch.float64) * (2 * math.pi / period)   # w d in [0, 2 pi)
            k = torch.arange(1, K + 1, dtype=torch.float64, device=d.device)
            beta = torch.tensor(FOURIER_BETA, dtype=torch.float64, device=d.device)
            kd = ang.unsqueeze(-1) * k                                                  # (..., K)
            cs = torch.round(beta * torch.sin(kd) * (1 << f)).to(torch.int64)           # times [cos k w t]
            cc = torch.round(beta * torch.cos(kd) * (1 << f)).to(torch.int64)           # times [sin k w t]
            acc = (cos_t.data * cs + sin_t.data * cc).sum(-1)
        fur = arith.truncate(AShare(acc, mpc, 2 * f), f)
        z1 = AShare(c1.data - c0.data, mpc, 0)
        erf = arith.mul(z1, fur)                                             # integer factor: scale f
        erf = AShare(erf.data - (c0.data << f) - (c1.data << f), mpc, f)    # - c0 - c1 (+1 below)
        one_plus = erf.add_public(2.0)                                      # 1 + (-c0 + 1 - c1 + z1 fur)
        y = arith.mul(x, one_plus, out_frac=f - 1)
        return _reinterpret(y, f)


def fourier_gelu_cost(mpc: MPC, n: int) -> Cost:
    t = arith.truncate_cost(mpc, n)
    K = len(FOURIER_BETA)
    opened = Cost(2 * 8 * n, 8 * n * (1 + 2 * K), 1)
    return (t + compare.ltz_cost(mpc, 2 * n) + opened + t
            + arith.mul_cost(mpc, n, n, n, frac_sum=mpc.frac_bits) + arith.mul_cost(mpc, n, n, n))


def plain_fourier_erf(u: torch.Tensor) -> torch.Tensor:
    u = u.double()
    k = torch.arange(1, len(FOURIER_BETA) + 1, dtype=torch.float64)
    beta = torch.tensor(FOURIER_BETA, dtype=torch.float64)
    fur = (beta * torch.sin(u.unsqueeze(-1) * k * (2 * math.pi / FOURIER_PERIOD))).sum(-1)
    return torch.where(u < -FOURIER_RANGE, -1.0, torch.where(u < FOURIER_RANGE, fur, 1.0))


def plain_fourier_gelu(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return 0.5 * x * (1 + plain_fourier_erf(x / math.sqrt(2.0)))


def _work_frac(mpc: MPC) -> int:
    """Scale of the Goldschmidt iterates: f + 8 with dealer truncation (products of iterates up to 2^14
    stay below 2^62), f with local truncation (larger words fail often, see nonlinear.hi_frac)."""
    return mpc.frac_bits + 8 if mpc.config.truncation == "dealer" else mpc.frac_bits


def _deflate_log2(n: int, quad_bound: float) -> int:
    """k with 2^k >= n * quad_bound: the public bound that brings a 2Quad row sum into (0, 2)."""
    return max(0, math.ceil(math.log2(n * quad_bound)))


def softmax_2quad_goldschmidt(x: AShare, mask: torch.Tensor | None = None, c: float = 5.0, iters: int = 13,
                              quad_bound: float = 256.0) -> AShare:
    """SecFormer's softmax: 2Quad with Goldschmidt division (SecFormer `operation/softmax.py`: 13 iterations).

    1. q = (x + c)^2 (square), masked positions 0, s = sum q (local).
    2. Deflation: y0 = s / 2^k, k = ceil(log2(n * quad_bound)) public (n = row length), so 0 < y0 < 2 while
       every (x + c)^2 <= quad_bound (SecFormer's code starts from y0 = s, which diverges for s >= 2; the
       paper deflates by a public bound). y0 is s read at scale f + k, truncated to F = f + 8 if above.
    3. Goldschmidt from x0 = 1: m = 2 - y; x <- x m; y <- y m, `iters` times (x1 = m1 is local; x and y
       are multiplied together in one batched Beaver multiply; the last step updates only x), at scale F.
       x -> 1 / y0 = 2^k / s; the residual after i steps is (1 - y0)^(2^i).
    4. out = q * x / 2^k (Beaver; the 2^-k folds into the truncation).
    Cost: [f + k > F] truncate(R) + mul_cost(R, R, R) + (iters - 2) mul_cost(2R, 2R, 2R) + mul_cost(R, R, R)
          + square_cost(N) + mul_cost(N, R, N)   (iters >= 2).
    """
    mpc = x.mpc
    f, F = mpc.frac_bits, _work_frac(mpc)
    assert iters >= 2, "Goldschmidt needs at least 2 iterations here"
    k = _deflate_log2(x.shape[-1], quad_bound)
    with mpc.ledger.protocol("softmax_goldschmidt"):
        q = arith.square(_at_f(x).add_public(c))
        if mask is not None:
            q = nl._set_public(q, mask, 0.0)
        y = _reinterpret(arith.local_sum(q, what="2Quad row sum"), f + k)
        y = arith.truncate(y, f + k - F) if f + k > F else y.rescale(F)
        m = (-y).add_public(2.0)
        xr = m                                                       # x1 = 1 * m1
        y = arith.mul(y, m, out_frac=F)
        for i in range(2, iters + 1):
            m = (-y).add_public(2.0)
            if i < iters:
                both = arith.mul(AShare.stack([xr, y], 0), AShare.stack([m, m], 0), out_frac=F)
                xr, y = both[0], both[1]
            else:
                xr = arith.mul(xr, m, out_frac=F)
        z = arith.mul(q, xr, out_frac=f + F)                         # no truncation yet: product at f + F
        return arith.truncate(_reinterpret(z, f + F + k), F + k)


def softmax_2quad_goldschmidt_cost(mpc: MPC, rows: int, n: int, iters: int = 13, quad_bound: float = 256.0) -> Cost:
    f, F = mpc.frac_bits, _work_frac(mpc)
    k = _deflate_log2(n, quad_bound)
    big = rows * n
    deflate = arith.truncate_cost(mpc, rows) if f + k > F else Cost()
    r = arith.mul_cost(mpc, rows, rows, rows)
    r2 = arith.mul_cost(mpc, 2 * rows, 2 * rows, 2 * rows)
    return (arith.square_cost(mpc, big) + deflate + r + (iters - 2) * r2 + r
            + arith.mul_cost(mpc, big, rows, big))


def plain_goldschmidt_reciprocal(s: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """1/s by SecFormer's deflated Goldschmidt iteration (float64)."""
    y = s.double() / 2.0 ** k
    xr = torch.ones_like(y)
    for i in range(1, iters + 1):
        m = 2 - y
        xr = xr * m
        if i < iters:
            y = y * m
    return xr / 2.0 ** k


def plain_softmax_2quad_goldschmidt(x: torch.Tensor, mask: torch.Tensor | None = None, c: float = 5.0,
                                    iters: int = 13, quad_bound: float = 256.0) -> torch.Tensor:
    q = _masked_quad(x, mask, c)
    k = _deflate_log2(x.shape[-1], quad_bound)
    return q * plain_goldschmidt_reciprocal(q.sum(-1, keepdim=True), k, iters)


def goldschmidt_inv_sqrt(v: AShare, iters: int = 8, deflate_log4: int = 4) -> AShare:
    """1 / sqrt(v) by SecFormer's Goldschmidt iteration, deflated by a public 4^j; result at scale F + j.

    1. x0 = v / 4^j (v read at scale f + 2j, exact; truncated to F = f + 8 if above). Converges for
       0 < x0 < 3, fast once x0 > ~0.01: the working range is about 0.01 * 4^j < v < 3 * 4^j.
    2. y0 = 1. Repeat `iters` times: m = (3 - x) / 2; y <- y m; x <- x m^2 (SecFormer
       `operation/layernorm.py`: 8 iterations). With m2 = 3 - x: [m2^2 / 2, y m2 / 2] in one batched
       Beaver multiply (the /2 is the product read one bit lower), then x <- x * (m2^2 / 2) / 2.
       y1 = m2 / 2 is local; the last iteration skips the x update.
    3. 1 / sqrt(v) = y / 2^j: y read at scale F + j (exact).
    Cost: [f + 2j > F] truncate(R) + (iters - 1) mul_cost(2R, 2R, 2R) + (iters - 2) mul_cost(R, R, R)
          + [iters = 1: nothing more]   (the first iteration is local).
    """
    mpc = v.mpc
    F = _work_frac(mpc)
    with mpc.ledger.protocol("goldschmidt_inv_sqrt"):
        x = _reinterpret(v, v.frac + 2 * deflate_log4)
        x = arith.truncate(x, x.frac - F) if x.frac > F else x.rescale(F)
        m2 = (-x).add_public(3.0)
        y = _reinterpret(m2, F + 1)                                   # y1 = m2 / 2
        if iters > 1:
            sq = _reinterpret(arith.mul(m2, m2, out_frac=F - 1), F)             # m2^2 / 2
            x = _reinterpret(arith.mul(x, sq, out_frac=F - 1), F)               # x m2^2 / 4 = x m^2
        for i in range(2, iters + 1):
            m2 = (-x).add_public(3.0)
            if i < iters:
                both = arith.mul(AShare.stack([m2, y], 0), AShare.stack([m2, m2], 0), out_frac=F - 1)
                sq, y = _reinterpret(both[0], F), _reinterpret(both[1], F)
                x = _reinterpret(arith.mul(x, sq, out_frac=F - 1), F)
            else:
                y = _reinterpret(arith.mul(y, m2, out_frac=F - 1), F)
        return _reinterpret(y, y.frac + deflate_log4)


def goldschmidt_inv_sqrt_cost(mpc: MPC, rows: int, frac_in: int, iters: int = 8, deflate_log4: int = 4) -> Cost:
    F = _work_frac(mpc)
    r = arith.mul_cost(mpc, rows, rows, rows)
    r2 = arith.mul_cost(mpc, 2 * rows, 2 * rows, 2 * rows)
    total = arith.truncate_cost(mpc, rows) if frac_in + 2 * deflate_log4 > F else Cost()
    if iters > 1:
        total = total + r + r                          # iteration 1: x * m2^2
        total = total + (iters - 2) * (r2 + r) + r     # iterations 2..iters-1, then the last (y only)
    return total


def plain_goldschmidt_inv_sqrt(v: torch.Tensor, iters: int = 8, deflate_log4: int = 4) -> torch.Tensor:
    x = v.double() / 4.0 ** deflate_log4
    y = torch.ones_like(x)
    for i in range(1, iters + 1):
        m = (3 - x) / 2
        y = y * m
        if i < iters:
            x = x * m * m
    return y / 2.0 ** deflate_log4


def goldschmidt_norm(x: AShare, weight, bias, family: str, eps: float, iters: int = 8,
                     deflate_log4: int = 4) -> AShare:
    """SecFormer's LayerNorm (OPT) or the same recipe on RMSNorm (Llama; SecFormer defines only LayerNorm).

    1. LayerNorm: xc = x - mean(x), v = mean(xc^2) + eps; RMSNorm: xc = x, v = mean(x^2) + eps.
    2. inv = goldschmidt_inv_sqrt(v).   3. y = xc * inv (broadcast Beaver).   4. affine (weight, bias).
    Cost (LayerNorm): 2 truncate(R) + square_cost(N) + goldschmidt_inv_sqrt_cost(R) + mul_cost(N, R, N)
          + affine; RMSNorm: one truncate(R) less.
    """
    with x.mpc.ledger.protocol("goldschmidt_norm"):
        xc = x - nl._mean_last(x) if family == "opt" else x
        v = nl._mean_last(arith.square(xc)).add_public(eps)
        y = arith.mul(xc, goldschmidt_inv_sqrt(v, iters, deflate_log4))
        return nl._affine(y, weight, bias if family == "opt" else None)


def goldschmidt_norm_cost(mpc: MPC, rows: int, d: int, family: str, iters: int = 8, deflate_log4: int = 4,
                          secret_weight: bool = True) -> Cost:
    n = rows * d
    t = arith.truncate_cost(mpc, rows)
    mean = t if family == "opt" else Cost()
    return (mean + arith.square_cost(mpc, n) + t
            + goldschmidt_inv_sqrt_cost(mpc, rows, mpc.frac_bits, iters, deflate_log4)
            + arith.mul_cost(mpc, n, rows, n) + nl._affine_cost(mpc, n, d, secret_weight))


def plain_goldschmidt_norm(x: torch.Tensor, weight, bias, family: str, eps: float, iters: int = 8,
                           deflate_log4: int = 4) -> torch.Tensor:
    x = x.double()
    xc = x - x.mean(-1, keepdim=True) if family == "opt" else x
    v = (xc * xc).mean(-1, keepdim=True) + eps
    y = xc * plain_goldschmidt_inv_sqrt(v, iters, deflate_log4)
    if weight is not None:
        y = y * weight.double()
    if bias is not None and family == "opt":
        y = y + bias.double()
    return y


# ==================================== PUMA =====================================================

# piecewise polynomials: breakpoints and (lo piece, mid piece) coefficient dicts {power: coeff}
PUMA_GELU = dict(  # secretflow/spu examples (bench_gpt2 `hack_gelu`), PUMA Sec. 4
    cuts=(-4.0, -1.95, 3.0),
    lo={0: -0.5054031199708174, 1: -0.42226581151983866, 2: -0.11807612951181953, 3: -0.011034134030615728},
    mid={0: 0.008526321541038084, 1: 0.5, 2: 0.3603292692789629, 4: -0.037688200365904236,
         6: 0.0018067462606141187},
)
PUMA_SILU = dict(  # secretflow/spu examples/python/ml/flax_llama7b `hack_silu`
    cuts=(-8.0, -4.0, 4.0),
    lo={0: -0.3067541139982155, 1: -0.0819767021525476, 2: -0.0055465625580307},
    mid={0: 0.0085064025895951, 1: 0.5, 2: 0.2281430841728270, 4: -0.011113046708173, 6: 0.0002743776353465},
)


COEF_FRAC = 28  # fixed-point scale of the public polynomial coefficients


def _powers(x: AShare, need: set[int]) -> dict[int, AShare]:
    """x^2 .. x^6 as needed, in three multiplicative levels (each one batched Beaver call):
    level 1: x^2 (square); level 2: x^3 = x^2 x and x^4 = x^2 x^2 together; level 3: x^6 = x^3 x^3
    (PUMA's hack_silu takes x^6 = x^2 x^4: the same depth)."""
    p = {1: x}
    p[2] = arith.square(x)
    lvl2 = [k for k in (3, 4) if k in need or (k == 3 and 6 in need)]
    if lvl2:
        both = arith.mul(AShare.stack([p[2]] * len(lvl2), 0),
                         AShare.stack([x if k == 3 else p[2] for k in lvl2], 0))
        for i, k in enumerate(lvl2):
            p[k] = both[i]
    if 6 in need:
        p[6] = arith.square(p[3])
    return p


def _powers_cost(mpc: MPC, n: int, need: set[int]) -> Cost:
    lvl2 = [k for k in (3, 4) if k in need or (k == 3 and 6 in need)]
    c = arith.square_cost(mpc, n)
    if lvl2:
        m = len(lvl2) * n
        c = c + arith.mul_cost(mpc, m, m, m)
    if 6 in need:
        c = c + arith.square_cost(mpc, n)
    return c


def piecewise_poly(x: AShare, spec: dict) -> AShare:
    """PUMA's piecewise polynomial (GeLU or SiLU), cuts a < b < c: 0 below a, lo(x) on [a, b), mid(x) on
    [b, c], x above c.

    1. [x < a], [x < b], [x > c]: one batched comparison of x - a, x - b, c - x.
    2. Powers x^2, x^3 / x^4, x^6 (three Beaver levels, see _powers).
    3. lo and mid: public coefficients (scale max(f, 28)) times powers, summed, one batched truncation.
    4. out = (b1 - b0) lo + (1 - b1 - b2) mid + b2 x: one batched Beaver multiply by the 0/1 indicators
       (integer factors: no truncation).
    Cost: ltz_cost(3n) + powers + truncate_cost(2n) + mul_cost(3n, 3n, 3n) [integer].
    """
    mpc = x.mpc
    f = mpc.frac_bits
    a, b, c = spec["cuts"]
    with mpc.ledger.protocol("piecewise_poly"):
        x = _at_f(x)
        b0, b1, b2 = _ltz_batched([x.add_public(-a), x.add_public(-b), (-x).add_public(c)])
        need = set(spec["lo"]) | set(spec["mid"])
        p = _powers(x, need)

        cf = max(f, COEF_FRAC)   # coefficients carry at least 28 fractional bits (0.00027 x^6 needs them)

        def poly(coeffs: dict) -> torch.Tensor:   # at scale f + cf, local
            acc = None
            for k, v in coeffs.items():
                if k == 0:
                    continue
                term = p[k].data * int(round(v * (1 << cf)))
                acc = term if acc is None else acc + term
            return mpc.add_p0_(acc, int(round(coeffs.get(0, 0.0) * (1 << (f + cf)))))

        polys = arith.truncate(AShare(torch.stack([poly(spec["lo"]), poly(spec["mid"])], 1), mpc, f + cf), cf)
        z_lo = AShare(b1.data - b0.data, mpc, 0)
        z_mid = AShare(mpc.add_p0_(-b1.data - b2.data, 1), mpc, 0)
        sel = arith.mul(AShare.stack([z_lo, z_mid, b2], 0), AShare.stack([polys[0], polys[1], x], 0))
        return sel[0] + sel[1] + sel[2]


def piecewise_poly_cost(mpc: MPC, n: int, spec: dict) -> Cost:
    need = set(spec["lo"]) | set(spec["mid"])
    return (compare.ltz_cost(mpc, 3 * n) + _powers_cost(mpc, n, need) + arith.truncate_cost(mpc, 2 * n)
            + arith.mul_cost(mpc, 3 * n, 3 * n, 3 * n, frac_sum=mpc.frac_bits))


def plain_piecewise_poly(x: torch.Tensor, spec: dict) -> torch.Tensor:
    x = x.double()
    a, b, c = spec["cuts"]
    lo = sum(v * x ** k for k, v in spec["lo"].items())
    mid = sum(v * x ** k for k, v in spec["mid"].items())
    return torch.where(x < a, 0.0, torch.where(x < b, lo, torch.where(x > c, x, mid)))


PUMA_EXP_CLIP = -14.0  # exp(x) is set to 0 below this (spu `hack_softmax`: b = x > -14)


def clipped_exp(x: AShare, iters: int) -> AShare:
    """PUMA's exp for x <= 0: (1 + x / 2^n)^(2^n) times [x > -14] (no engine clamp: the clip replaces it).

    Cost: ltz_cost(N) + truncate_cost(N) + n square_cost(N) + mul_cost(N, N, N) [integer factor].
    """
    mpc = x.mpc
    with mpc.ledger.protocol("clipped_exp"):
        below = compare.ltz(x.add_public(-PUMA_EXP_CLIP))
        y = nl._scale_pow2(x, iters).add_public(1.0)
        # below -2^iters (masked scores, x - max < -256) the powers leave the range, but they are multiplied
        # by keep = 0 exactly (an integer share): the range check would be a false alarm there
        with mpc.ranges_unchecked():
            for _ in range(iters):
                y = arith.square(y)
        keep = AShare(mpc.add_p0_(-below.data, 1), mpc, 0)
        return arith.mul(keep, y)


def clipped_exp_cost(mpc: MPC, n: int, iters: int) -> Cost:
    return (compare.ltz_cost(mpc, n) + arith.truncate_cost(mpc, n) + iters * arith.square_cost(mpc, n)
            + arith.mul_cost(mpc, n, n, n, frac_sum=mpc.frac_bits))


def softmax_clipped_exp(x: AShare, mask: torch.Tensor | None = None, exp_iters: int = 8) -> AShare:
    """PUMA's softmax (spu `hack_softmax`): e = exp(x - max) [x - max > -14]; out = e * (1 / sum e).

    1. Masked scores set to -2^10 (local).   2. m = max (tournament).   3. e = clipped_exp(x - m),
       masked e = 0.   4. r = reciprocal(sum e) (engine Newton; the sum is >= 1).   5. out = e * r.
    exp_iters: the limit method's squarings (8 as CrypTen in the SecFormer port; SPU's PUMA config
    runs Taylor exp with fxp_exp_iters 5).
    Cost: max_along_cost(R, n) + clipped_exp_cost(N) + reciprocal_cost(R) + mul_cost(N, R, N).
    """
    mpc = x.mpc
    with mpc.ledger.protocol("softmax_puma"):
        x = _at_f(x)
        if mask is not None:
            x = nl._set_public(x, mask, -1024.0)
        m = compare.max_along(x, -1, keepdim=True)
        e = clipped_exp(x - m, exp_iters)
        if mask is not None:
            e = nl._set_public(e, mask, 0.0)
        r = nl.reciprocal(arith.local_sum(e, what="softmax row sum"))
        return arith.mul(e, r)


def softmax_clipped_exp_cost(mpc: MPC, rows: int, n: int, exp_iters: int = 8) -> Cost:
    big = rows * n
    return (compare.max_along_cost(mpc, rows, n) + clipped_exp_cost(mpc, big, exp_iters)
            + nl.reciprocal_cost(mpc, rows) + arith.mul_cost(mpc, big, rows, big))


def plain_limit_exp(x: torch.Tensor, iters: int) -> torch.Tensor:
    return (1 + x.double() / 2.0 ** iters) ** (2 ** iters)


def plain_softmax_clipped_exp(x: torch.Tensor, mask: torch.Tensor | None = None, exp_iters: int = 8) -> torch.Tensor:
    x = x.double()
    if mask is not None:
        x = torch.where(mask.bool().expand(x.shape), x, torch.full_like(x, -1024.0))
    z = x - x.max(-1, keepdim=True).values
    e = torch.where(z < PUMA_EXP_CLIP, 0.0, plain_limit_exp(z, exp_iters))
    if mask is not None:
        e = e * mask.to(e.dtype).expand(e.shape)
    return e / e.sum(-1, keepdim=True)
