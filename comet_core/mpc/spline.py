"""Piecewise-quadratic splines selected by FSS interval containment (engine.comparison=fss; beyond the paper).

SIGMA (Gupta et al., PETS 2024) evaluates GeLU, SiLU and exp as public splines whose piece is chosen by
DCF comparisons; here the piece comes from fss.ltz_many (one opening of x + r, one DCF key per element
evaluated at every knot), so the selection is one round whatever the number of knots. A table is a
public function's spline: knots b_1 < ... < b_K (multiples of 1/16, so exact on every engine scale),
piece 0 = (-inf, b_1) and piece K = [b_K, inf) constant tails (or, `open_top`, the last polynomial
continued), pieces j = [b_j, b_j+1) quadratics a0 + a1 u + a2 u^2 in u = x - b_j, fitted in float64
(least squares on Chebyshev nodes, knots placed greedily so that each piece's error stays below `tol`).
SiLU and GeLU are split as relu(x) + g(x) with g = f - relu decaying to 0 on both sides (0 is a knot).

Protocol `evaluate` (n inputs at scale f, K knots, S = 58 - f the coefficients' scale):
  1. L_k = [x < b_k] for every knot: fss.ltz_many (1 round).
  2. Selection (local): any per-piece public value v_j is v_K - sum_k L_k (v_k - v_k-1) (public integers
     times integer shares): the origin O, and A0 (scale S + f), A1 (scale S), A2 (scale S - f).
  3. u = x - O (local, exact). Open the square pair of u (u^2 at scale 2f, untruncated) and, for a relu
     tail, the Beaver product of [x >= 0] = 1 - L_0 with x, in one round.
  4. [A1 u, A2 u^2] in one batched Beaver product (1 round, untruncated): both at scale S + f.
  5. y = truncate(A0 + A1 u + A2 u^2, S) (1 round), + [x >= 0] x for a relu tail.
Cost: spline_cost(n): ltz_many_cost(n) + [relu tail] mul_cost(2n, 2n, 2n, untruncated)
      | square_cost(n, untruncated) + mul_cost(2n, 2n, 2n, untruncated) + truncate_cost(n): 4 rounds.
On outer pieces u is unbounded but A1 = A2 = 0 exactly (integer selections), so a wrapped u^2 is
multiplied by 0: the square's range check is suspended for that one step; the products' checks stay.
Accuracy: |spline - f| <= the table's measured `max_err` plus the fixed-point floor (a few LSB: the
coefficients' rounding and one truncation). S - f = 58 - 2f bits for A2 is why `applies` wants f <= 20.
Where: exp (x <= 0: softmax's x - max), sigmoid, SiLU, GeLU, when n K <= BUDGET evaluations (a decode
step's sizes; larger calls keep the comparison-based recipes of nonlinear.py, whose CPU is lower).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from comet_core.comm.ledger import Cost
from comet_core.mpc import arith, fss
from comet_core.mpc.engine import MPC, AShare

BUDGET = 1 << 16      # DCF evaluations (elements x knots) of one call up to which `applies` holds
MAX_FRAC = 20         # A2's scale S - f = 58 - 2f must keep >= 18 bits
GRID = 1.0 / 16       # knots lie on this grid (exact at every frac_bits >= 4)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _erf(x):
    return np.vectorize(math.erf)(x)


# name -> (function, lo, hi, abs tolerance, left tail, right tail (None: the last piece continued), relu tail)
SPECS = {
    "exp": (np.exp, -16.0, 0.0, 5e-5, 0.0, None, False),
    "sigmoid": (_sigmoid, -16.0, 16.0, 2e-4, 0.0, 1.0, False),
    "silu": (lambda x: x * _sigmoid(x) - np.maximum(x, 0.0), -16.0, 16.0, 2e-4, 0.0, 0.0, True),
    "gelu": (lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2.0))) - np.maximum(x, 0.0), -8.0, 8.0, 2e-4, 0.0, 0.0,
             True),
}


@dataclass(frozen=True)
class Table:
    """A fitted spline: knots (K,), per piece j = 0..K the origin (K + 1,) and coefficients (K + 1, 3)."""

    name: str
    knots: np.ndarray
    origins: np.ndarray
    coeffs: np.ndarray
    relu_tail: bool
    max_err: float     # measured max |spline - f| over [lo, hi] (float64, before fixed point)


def _fit_piece(f, a: float, b: float) -> tuple[np.ndarray, float]:
    u = (np.cos(np.linspace(0.0, np.pi, 32)) + 1) / 2 * (b - a)
    c = np.linalg.lstsq(np.stack([np.ones_like(u), u, u * u], 1), f(a + u), rcond=None)[0]
    ue = np.linspace(0.0, b - a, 257)
    return c, float(np.abs(c[0] + c[1] * ue + c[2] * ue * ue - f(a + ue)).max())


def _greedy(f, lo: float, hi: float, tol: float) -> list[tuple[float, np.ndarray, float]]:
    """Pieces (start, coeffs, err) covering [lo, hi): each as wide as `tol` allows (a binary search over
    the GRID steps: the error grows with the width), ends on the GRID."""
    pieces, a = [], lo
    while a < hi - 1e-12:
        steps = round((hi - a) / GRID)
        good, bad = 1, steps + 1                      # the widest fitting number of steps lies in [good, bad)
        fit = _fit_piece(f, a, a + GRID)
        while bad - good > 1:
            mid = (good + bad) // 2
            c, e = _fit_piece(f, a, a + mid * GRID)
            if e <= tol:
                good, fit = mid, (c, e)
            else:
                bad = mid
        pieces.append((a, *fit))
        a = a + good * GRID
    return pieces


@functools.lru_cache(maxsize=None)
def table(name: str) -> Table:
    """The fitted table of SPECS[name] (once per process; deterministic float64)."""
    f, lo, hi, tol, left, right, relu_tail = SPECS[name]
    spans = [(lo, 0.0), (0.0, hi)] if lo < 0 < hi else [(lo, hi)]     # 0 a knot: the relu tail's bit
    pieces = [p for a, b in spans for p in _greedy(f, a, b, tol)]
    starts = [p[0] for p in pieces]
    knots = starts + ([hi] if right is not None else [])
    coeffs = [np.array([left, 0.0, 0.0])] + [p[1] for p in pieces]
    origins = [lo] + starts
    if right is not None:
        coeffs.append(np.array([right, 0.0, 0.0]))
        origins.append(hi)
    return Table(name, np.array(knots), np.array(origins), np.array(coeffs), relu_tail,
                 max(p[2] for p in pieces))


def plain(name: str, x: torch.Tensor) -> torch.Tensor:
    """The table's spline in float64 (what `evaluate` computes, before fixed point)."""
    t = table(name)
    xv = x.double().numpy()
    j = np.searchsorted(t.knots, xv, side="right")                   # piece index: #knots <= x
    u = xv - t.origins[j]
    c = t.coeffs[j]
    y = c[..., 0] + c[..., 1] * u + c[..., 2] * u * u
    if t.relu_tail:
        y = y + np.maximum(xv, 0.0)
    return torch.from_numpy(y)


def applies(mpc: MPC, n: int, name: str) -> bool:
    """Whether `evaluate` replaces the comparison-based recipe: engine.comparison=fss, frac_bits <= MAX_FRAC,
    and n * K <= BUDGET DCF evaluations (public shapes only, so cost mode decides the same)."""
    return (mpc.config.comparison == "fss" and mpc.frac_bits <= MAX_FRAC
            and n * len(table(name).knots) <= BUDGET)


def _selection(t: Table, f: int) -> tuple[np.ndarray, ...]:
    """Per-piece integer encodings: origin (f), A0 (S + f), A1 (S), A2 (S - f)."""
    S = 58 - f
    o = np.round(t.origins * 2.0 ** f)
    a0 = np.round(t.coeffs[:, 0] * 2.0 ** (S + f))
    a1 = np.round(t.coeffs[:, 1] * 2.0 ** S)
    a2 = np.round(t.coeffs[:, 2] * 2.0 ** (S - f))
    return tuple(v.astype(np.int64) for v in (o, a0, a1, a2))


def _select(L: AShare, v: np.ndarray) -> torch.Tensor:
    """v_K - sum_k L_k (v_k - v_k-1) for every column of v (K + 1, c): the piece's public values from the
    shares L (..., K), as one integer product (local). Returns the shares (P, ..., c)."""
    d = torch.from_numpy(-np.diff(v, axis=0))                                   # (K, c)
    out = torch.matmul(L.data, d)
    return L.mpc.add_p0_(out, torch.from_numpy(v[-1]))


def evaluate(x: AShare, name: str) -> AShare:
    """The spline `name` of x at the engine's scale (steps 1-5 of the module docstring)."""
    mpc = x.mpc
    f = mpc.frac_bits
    S = 58 - f
    t = table(name)
    with mpc.ledger.protocol(f"spline_{name}"):
        x = arith.truncate(x, x.frac - f) if x.frac > f else x.rescale(f)
        thr = torch.from_numpy(np.round(t.knots * 2.0 ** f).astype(np.int64))
        L = fss.ltz_many(x, thr)                                                    # (..., K) 0/1
        sel = _select(L, np.stack(_selection(t, f), 1))                          # (P, ..., 4): O, A0, A1, A2
        u = x - AShare(sel[..., 0], mpc, f)                                         # [0, width) inside
        with mpc.ranges_unchecked():    # outer pieces: u unbounded, but A2 = 0 there (integer selection)
            if t.relu_tail:
                k0 = int(np.flatnonzero(t.knots == 0.0)[0])
                pos = AShare(mpc.add_p0_(-L[..., k0].data, 1), mpc, f)              # [x >= 0], read at f
                sq = arith.mul(AShare.stack([u, pos], 0), AShare.stack([u, x], 0), out_frac=2 * f)
                u2, relu = sq[0], AShare(sq[1].data, mpc, f)
            else:
                u2, relu = arith.square(u, out_frac=2 * f), None
        A1 = AShare(sel[..., 2], mpc, S)
        A2 = AShare(sel[..., 3], mpc, S)                                            # read at S: scale S - f
        terms = arith.mul(AShare.stack([A1, A2], 0), AShare.stack([u, AShare(u2.data, mpc, f)], 0),
                          out_frac=S + f)
        acc = terms[0] + terms[1] + AShare(sel[..., 1], mpc, S + f)
        y = arith.truncate(acc, S)
        return y + relu if relu is not None else y


def spline_cost(mpc: MPC, n: int, name: str) -> Cost:
    f = mpc.frac_bits
    step3 = (arith.mul_cost(mpc, 2 * n, 2 * n, 2 * n, frac_sum=f) if table(name).relu_tail
             else arith.square_cost(mpc, n, truncated=False))
    return (fss.ltz_many_cost(mpc, n) + step3 + arith.mul_cost(mpc, 2 * n, 2 * n, 2 * n, frac_sum=f)
            + arith.truncate_cost(mpc, n))
