"""What the revealed count of active units tells the servers: `system.count_padding=none|bucket|dp`.

none: the exact count k of predicted-active units of every (layer, step) is revealed (the mask bits in
permuted coordinates; sparse/masks.py). A server can tell prompts apart by their count profiles.
bucket: the revealed count is K = s * ceil(k / s), s = `count_padding_bucket` units (default F / 16,
at least 1): the servers learn k's bucket only. Worst-case cost: s - 1 extra units per step.
dp: the revealed count is min(k + P, F) with P = clip(t + Z, 0, 2 t), Z two-sided geometric with
parameter exp(-epsilon) (the discrete Laplace mechanism, sensitivity 1 unit), t = ceil(ln(1 / (2 delta)) /
epsilon) so that the clip changes the output with probability < delta: each revealed count is
(epsilon, delta)-DP with respect to a change of one active unit in that (layer, step) (a count
differing by c units gets (c epsilon, c delta)); counts of different layers and steps compose. Defaults
epsilon = 1, delta = 1e-6 (`count_padding_epsilon`, `count_padding_delta`). Expected cost: t extra units.
The dealer draws P (it learns nothing of the prompt) and deals it as additive shares.

Both paddings, in MPC (padded_mask), with [m] the 0/1 shares of the real mask in permuted coordinates:
  1. [m] = [z > threshold] as additive 0/1 shares (union over a prefill's T rows)   ltz (T F) (+ ltz F)
  2. [P]: bucket: [K] = s * sum_{j=0..J} [k > j s] (k = sum m, local; J + 1 = ceil(F / s) comparisons),
     P = K - k; dp: P from the dealer (free to deliver with its other correlations: 8 bytes offline).
  3. Dummies among the inactive units, the first P of them in permuted order (a uniformly random set of
     inactive units, the coordinates being secret): c = prefix sums of (1 - m) (local),
     [d] = (1 - m) * [P - c >= 0]                                                    drelu F + mul F
  4. Open m + d (64 bits per unit, 1 round): the public padded mask S.
  5. The padded units are computed and discarded: after the activation, h = act(y) * m[S] (one Beaver
     product of T |S| by |S| integers, no truncation), so exact runs equal the plaintext model with the real
     mask m (what `StepRecord.real_mask` holds).
Cost per layer and step: padded_reveal_cost; + mul_cost(T K, K, T K) in the sparse FFN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from comet_core.comm.ledger import Cost
from comet_core.errors import CometError
from comet_core.mpc import arith, compare
from comet_core.sparse import dp_noise

MODES = ("none", "bucket", "dp")
W = 8


@dataclass(frozen=True)
class CountPadding:
    mode: str = "none"
    bucket: int | None = None      # units per bucket (None: F / 16)
    epsilon: float = 1.0
    delta: float = 1e-6

    @classmethod
    def from_params(cls, p) -> "CountPadding":
        """From the typed Comet params (comet_core/config/typed.py CometParams: count_padding*)."""
        mode = str(p.count_padding)
        if mode not in MODES:
            raise CometError(f"system.count_padding must be one of {', '.join(MODES)}, got {mode!r}")
        bucket = p.count_padding_bucket
        eps, delta = float(p.count_padding_epsilon), float(p.count_padding_delta)
        if bucket is not None and (not isinstance(bucket, int) or bucket < 1):
            raise CometError(f"system.count_padding_bucket must be a positive integer (units), got {bucket!r}")
        if not (eps > 0 and math.isfinite(eps)) or not (0 < delta < 0.5):
            raise CometError(f"system.count_padding_epsilon must be > 0 and count_padding_delta in (0, 0.5); "
                             f"got {eps!r}, {delta!r}")
        return cls(mode, bucket, eps, delta)

    @property
    def active(self) -> bool:
        return self.mode != "none"

    def size(self, F: int) -> int:
        return self.bucket if self.bucket is not None else max(1, F // 16)

    def shift(self) -> int:
        return dp_noise.shift(self.epsilon, self.delta)

    def draw(self, u: tuple[float, float]) -> int:
        """P for dp from two uniforms in (0, 1] (sparse/dp_noise.py)."""
        return dp_noise.draw(self.epsilon, self.delta, u)

    def padded_count(self, k: int, F: int, p: int | None = None) -> int:
        """What the servers see for a real count k (p: the dealer's dp draw)."""
        if self.mode == "bucket":
            s = self.size(F)
            return min(F, s * math.ceil(k / s))
        if self.mode == "dp":
            return min(F, k + int(p))
        return k


def padded_mask(mpc, z, threshold: float, pad: CountPadding, count: int | None = None):
    """Steps 1-4: (public padded mask (F,) bool, [m] (F,) 0/1 shares of the real mask). `count`: cost mode's
    real count from the profile (the padded count is placed at the first positions)."""
    T, F = z.shape
    d = (-z).add_public(threshold)
    m = compare.ltz(d)                                                  # (T, F) 0/1
    if T > 1:
        m = compare.ltz(-(m.sum(0)))                                    # (F,) [sum_t m_t > 0]
    else:
        m = m[0]
    k = m.sum(0, keepdim=True)                                           # (1,) integer shares
    if pad.mode == "bucket":
        s = pad.size(F)
        J = math.ceil(F / s)
        edges = torch.arange(J, dtype=torch.float64) * s                # [k > j s] = [j s - k < 0]
        g = compare.ltz((-k).expand(J).add_public(edges))
        P = g.sum(0, keepdim=True).mul_int(s) - k
    else:
        P, p = mpc.dealer.dp_padding(pad.epsilon, pad.delta)             # (1,) shares of P, frac 0 (p: cost mode only)
    inactive = compare._one_minus(m)                                     # (F,) 1 - m
    c = inactive._wrap(torch.cumsum(inactive.data, dim=-1)) if not inactive.data.is_meta else inactive
    dummy = arith.mul(inactive, compare.drelu(P.expand(F) - c))          # (F,) integers
    padded = m + dummy
    (opened,) = mpc.open(padded)
    if mpc.is_cost:
        out = torch.zeros(F, dtype=torch.bool)
        out[: pad.padded_count(int(count or 0), F, p if pad.mode == "dp" else None)] = True
        return out, m
    return opened.cpu() != 0, m


def real_permuted_mask(mpc, m, count: int | None) -> torch.Tensor:
    """The real mask in permuted coordinates, for the run's records (sparsity.csv, the masked plaintext
    reference): a debug read of [m] in the exact simulation (not booked; MPC.peek), the profile's count at
    the first positions in cost mode; None on a tcp party, which holds one share (the real mask is what the
    padding hides from it: its records count the padded mask, the launcher's in-process check the real one)."""
    F = m.shape[0]
    if mpc.is_cost:
        out = torch.zeros(F, dtype=torch.bool)
        out[: int(count or 0)] = True
        return out
    v = mpc.peek(m)
    return None if v is None else (v > 0.5).cpu()


def padded_reveal_cost(mpc, T: int, F: int, pad: CountPadding) -> Cost:
    c = compare.ltz_cost(mpc, T * F) + (compare.ltz_cost(mpc, F) if T > 1 else Cost())
    if pad.mode == "bucket":
        c = c + compare.ltz_cost(mpc, math.ceil(F / pad.size(F)))
    else:
        c = c + Cost(0, W, 0)                                             # the dealer's [P]
    c = c + compare.drelu_cost(mpc, F) + arith.mul_cost(mpc, F, F, F, frac_sum=0)
    return c + Cost(2 * W * F, 0, 1)


def discard_cost(mpc, T: int, k: int) -> Cost:
    """Step 5: h * m[S] on the T x k activations (integer factor: no truncation)."""
    return arith.mul_cost(mpc, T * k, k, T * k, frac_sum=mpc.frac_bits)
