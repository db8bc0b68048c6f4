"""From secret predictor scores to a public mask in permuted coordinates (exact), or to a profile's count
(cost): the one place where Comet's control flow learns something, so both modes share every later step.

What is revealed (module-level statement of the leakage, also in the README):
  * per layer and step, the mask of predicted-active neurons **in the request's permuted coordinates**:
    its count |S| and, across the steps of one request (one pi per request), which permuted neurons
    are active at which step (the co-activation pattern up to pi);
  * nothing about which real neurons are active: pi is known to neither server (P0 knows pi0 only,
    P1 pi1 only), and a fresh pi per request keeps requests unlinkable by position.
In a prefill of T tokens only the union over the T tokens is revealed ([sum_t m_t > 0]).
"""

from __future__ import annotations

import torch

from comet_core.comm.ledger import Cost, wire_bytes
from comet_core.mpc import compare, smallring
from comet_core.mpc.engine import MPC, AShare


def active_bits(z: AShare, threshold: float, bits: int = 64, range_log2: int = 7) -> torch.Tensor:
    """XOR shares (P, F) of [unit active] = [z > threshold] (union over rows when z has several rows).

    bits = 64 (the full ring):
    1. T = 1: ltz_bits(threshold - z)                  (7 rounds).
    2. T > 1: m = ltz(threshold - z) per token (8 rounds), s = sum_t m (local, an integer),
       union = ltz_bits(-s) = [s > 0]                     (7 more rounds).
    Cost: T = 1: ltz_bits_cost(F); T > 1: ltz_cost(T F) + ltz_bits_cost(F).
    Under engine.comparison=fss each comparison is one round (mpc/fss.py): 1 and 2 rounds.
    bits < 64 (system.predictor_bits, mpc/smallring.py): [z - threshold >= 0] on Z_2^bits after a local
    truncation of the scores by s = shift_for(f, bits, range_log2) bits; equal to the full test for
    |z - threshold| < 2^range_log2 - 2^(s-f) outside the band threshold - 2^(s-f) <= z < threshold, where a
    unit may be taken active (never lost); failure probability <= 2^(f + range_log2 + 1 - 64) per score.
    T > 1: the per-token bits as 0/1 integers (b2a; fss: additive already), summed, union = [s - 1 >= 0] on
    max(bits, bitlen(T) + 1) bits untruncated (exact). Cost: active_bits_cost(mpc, T, F, bits).
    """
    if bits < 64:
        return _active_bits_reduced(z, threshold, bits, range_log2)
    d = (-z).add_public(threshold)
    if z.shape[0] == 1:
        return compare.ltz_bits(d[0])
    m = compare.ltz(d)
    return compare.ltz_bits(-(m.sum(0)))


def _active_bits_reduced(z: AShare, threshold: float, bits: int, range_log2: int) -> torch.Tensor:
    s = smallring.shift_for(z.frac, bits, range_log2)
    d = z.add_public(-threshold)
    if z.shape[0] == 1:
        return smallring.ge_zero_bits(d[0], bits, s, "predictor score - threshold")
    m = smallring.drelu(d, bits, s, "predictor score - threshold")             # (T, F) 0/1 integers
    return smallring.ge_zero_bits(m.sum(0).add_public(-1), _union_bits(bits, z.shape[0]), 0, "active tokens - 1")


def _union_bits(bits: int, rows: int) -> int:
    return max(bits, rows.bit_length() + 1)


ltz_bits_cost = compare.ltz_bits_cost   # circuit: ltz less its daBit; fss: ltz (1 round)


def active_bits_cost(mpc: MPC, rows: int, units: int, bits: int = 64) -> Cost:
    if bits < 64:
        if rows == 1:
            return smallring.sign_bits_cost(mpc, units, bits)
        return smallring.drelu_cost(mpc, rows * units, bits) + \
            smallring.sign_bits_cost(mpc, units, _union_bits(bits, rows))
    if rows == 1:
        return ltz_bits_cost(mpc, units)
    return compare.ltz_cost(mpc, rows * units) + ltz_bits_cost(mpc, units)


def reveal_bits(mpc: MPC, bits: torch.Tensor, count: int | None = None) -> torch.Tensor:
    """Open XOR-shared mask bits to both servers (1 round, 1 bit per unit each way); returns a public
    bool mask. In cost mode there are no values: `count` active units are placed at the first
    positions (the ledger depends on the count only).
    Cost: online 2 * packed(F, 1) bytes, 1 round.
    """
    n = bits.shape[-1]
    with mpc.ledger.protocol("reveal_mask"):
        (m,) = mpc.open_raw([bits], 1, xor=True)
    if mpc.is_cost:
        out = torch.zeros(n, dtype=torch.bool)
        out[: max(0, min(n, int(count or 0)))] = True
        return out
    return m.to(torch.bool).cpu()


def reveal_bits_cost(n: int) -> Cost:
    return Cost(2 * wire_bytes(n, 1), 0, 1)
