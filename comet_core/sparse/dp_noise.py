"""The DP count padding's noise (system.count_padding=dp, sparse/count_padding.py): P = clip(t + Z, 0, 2 t),
Z = G1 - G2 two-sided geometric with parameter exp(-epsilon) (the discrete Laplace mechanism, sensitivity
one unit), t = ceil(ln(1 / (2 delta)) / epsilon). Plain numbers only: the dealer draws it (mpc/dealer.py
dp_padding) without the protocols that use it."""

from __future__ import annotations

import math


def shift(epsilon: float, delta: float) -> int:
    """t: the clip changes the output with probability < delta."""
    return math.ceil(math.log(1 / (2 * delta)) / epsilon)


def draw(epsilon: float, delta: float, u: tuple[float, float]) -> int:
    """P from two uniforms in (0, 1] (G by inversion: ceil(ln u / ln(1 - q)), q = 1 - exp(-epsilon))."""
    t = shift(epsilon, delta)
    lq = -epsilon                                                   # ln(1 - q)
    g1, g2 = (max(1, math.ceil(math.log(x) / lq)) for x in u)
    return min(max(t + g1 - g2, 0), 2 * t)
