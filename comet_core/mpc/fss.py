"""Comparisons from dealer-made function secret sharing (engine.comparison=fss; beyond the paper).

The approach of SIGMA (Gupta et al., PETS 2024) and Orca (Jawalkar et al., S&P 2024), on the DCF of
mpc/dcf.py: the dealer masks the input with a uniform r, the parties open x + r in one round, and a
distributed comparison function keyed on r turns that public value into shares of the comparison,
locally. Written for this engine's ring Z_2^64 (no bit-width reduction: exact for every ring word).

The sign: with c = x + r opened, y = c mod 2^63, alpha = r mod 2^63, m = c_63, s = r_63,
  x_63 = m ^ s ^ [y < alpha]    (the carry out of the low 63 bits of x + r is [y < alpha]),
and q = s ^ [y < alpha] = s + (1 - 2 s) [y < alpha] is linear in the DCF's output when its payload is
beta = 1 - 2 s: [q] = [s] + DCF(y). Then [x < 0] = m + (1 - 2 m) [q] (m public).
ReLU in the same round: x [x >= 0] = d (c - r) with d = 1 - m - (1 - 2 m) q; c is public, so only
[q] and [q r] = [s r] + (1 - 2 s) r [y < alpha] are needed: a DCF of payload (1 - 2 s, (1 - 2 s) r).

What is opened: c = x + r, r uniform over Z_2^64 and independent of everything else, so c is uniform
and independent of x (a one-time pad over the ring); the DCF keys a party holds are pseudo-random
(BCGGIKR21, Thm. 3.3: each key alone is simulatable), and every output is a share.

Many thresholds on one opening (ltz_many): x - t has the masked value c - t under the same r, so one
key per element, evaluated at the K public points c - t_k, gives [x < t_k] for every k in the same round
(BCGGIKR21's interval containment, in the form SIGMA uses for splines): the K points are public
functions of the one opened c, so the view is that of a single comparison.

Keys are made and evaluated by chunks of CHUNK elements (bounded memory); the opening is one round for
all elements.
"""

from __future__ import annotations

import numpy as np
import torch

from comet_core.comm.ledger import Cost
from comet_core.mpc import dcf
from comet_core.mpc.engine import MPC, AShare
from comet_core.mpc.shape import Shape

NB = dcf.NB          # DCF domain: the low 63 bits of c
CHUNK = 1 << 14      # elements per batch of keys (dealer and evaluation)
_LOW63 = (1 << 63) - 1


def _chunks(n: int):
    for lo in range(0, n, CHUNK):
        yield lo, min(n, lo + CHUNK)


def _compare(x: AShare, relu: bool, offsets: np.ndarray | None = None):
    """Steps shared by ltz, ltz_many and relu: the mask, the opening, the DCF outputs.

    1. Dealer: r; shares of r, s = r_63 (and s r); DCF keys by chunks (fss_mask, fss_keys).
    2. Open c = x + r (1 round, 64 bits per element each way).
    3. Evaluate the keys at y = c mod 2^63 (local); with `offsets` (K,) int64, each element's one key at
       the K points (c - t_k) mod 2^63 (by sub-chunks of about CHUNK evaluations).
    Returns (masks, c (n,) int64 numpy, u (P, n, w) int64 numpy, or (P, n, K, w) with offsets) or, in
    cost mode, (masks, None, None)."""
    mpc = x.mpc
    n = x.numel()
    P = x.data.shape[0]
    h = mpc.next_handle()
    masks = mpc.dealer.fss_mask(h, n, relu)
    K = 1 if offsets is None else len(offsets)
    mpc.ledger.work.add("dcf_elem", n * K)   # n K DCF evaluations by each party (comm/work.py)
    (c,) = mpc.open(x._wrap(x.data.reshape(P, n) + masks[0].data))
    w = 2 if relu else 1
    if c.is_meta:
        for lo, hi in _chunks(n):
            mpc.dealer.fss_keys(h, lo, hi, relu, hi == n)
        return masks, None, None
    c = c.cpu().numpy()
    pts = c[:, None] if offsets is None else c[:, None] - offsets[None, :]         # (n, K), wrapping
    y = (pts & _LOW63).view(np.uint64)
    u = np.empty((P, n, K, w), dtype=np.int64)
    step = max(1, CHUNK // K)
    for lo, hi in _chunks(n):
        seeds, cw_s, cw_t, cw_v = mpc.dealer.fss_keys(h, lo, hi, relu, hi == n)
        seeds, cw_s = seeds.numpy().view(np.uint64), cw_s[0].numpy().view(np.uint64)
        cw_t, cw_v = cw_t[0].numpy(), cw_v[0].numpy()
        if offsets is None:                    # one point per key: the dealer's arrays as they are
            u[:, lo:hi, 0] = dcf.eval_(mpc.parties, y[lo:hi, 0], dcf.Keys(seeds, cw_s, cw_t, cw_v))
            continue
        for a in range(0, hi - lo, step):      # element k's key repeated for its K points
            b = min(hi - lo, a + step)
            rep = np.repeat(np.arange(a, b), K)
            keys = dcf.Keys(*(np.take(v, rep, axis=1) for v in (seeds, cw_s, cw_t, cw_v)))   # C-contiguous
            u[:, lo + a:lo + b] = dcf.eval_(mpc.parties, y[lo + a:lo + b].reshape(-1), keys).reshape(P, b - a, K, w)
    return masks, c, (u[:, :, 0] if offsets is None else u)


def _share(mpc: MPC, a: np.ndarray, shape, frac: int) -> AShare:
    return AShare(torch.from_numpy(a).reshape(a.shape[0], *shape).to(mpc.device), mpc, frac)


def ltz(x: AShare) -> AShare:
    """[x < 0] as an additive 0/1 share (frac 0), for every x in Z_2^64.

    1-3. _compare with payload beta = 1 - 2 s: u = shares of (1 - 2 s) [y < alpha].
    4. [q] = [s] + u; [x < 0] = m + (1 - 2 m) [q], m = c_63 (local: P0 adds m).
    Cost: ltz_cost(n): 1 round, 2 * 8n bytes online; offline 2 * 8n (r, s) + 2n * key_bytes(63, 1).
    """
    mpc = x.mpc
    with mpc.ledger.protocol("ltz"):
        (r, s), c, u = _compare(x, relu=False)
        if c is None:
            return AShare(Shape((x.data.shape[0], *x.shape)), mpc, 0)
        m = (c >> 63) & 1
        out = (1 - 2 * m) * (s.data.cpu().numpy() + u[..., 0])
        if 0 in mpc.parties:
            out[0] += m
        return _share(mpc, out, x.shape, 0)


def ltz_many(x: AShare, thresholds: torch.Tensor) -> AShare:
    """[x < t_k] for K public thresholds t_k (ring integers at x's scale, |x|, |t_k| < 2^62), as additive
    0/1 shares (*shape, K) (frac 0), on one opening and one DCF key per element.

    1-3. _compare with payload beta = 1 - 2 s, evaluated at y_k = (c - t_k) mod 2^63: u_k = shares of
       (1 - 2 s) [y_k < alpha] (c - t_k = (x - t_k) + r: the same r, so the same key).
    4. [q_k] = [s] + u_k; [x - t_k < 0] = m_k + (1 - 2 m_k) [q_k], m_k = (c - t_k)_63 (local).
    Cost: ltz_many_cost(n) = ltz_cost(n) whatever K: 1 round, 2 * 8n bytes online; offline 2 * 8n (r, s)
    + 2n * key_bytes(63, 1). Local work: K DCF evaluations per element and party.
    """
    mpc = x.mpc
    t = np.asarray(torch.as_tensor(thresholds, dtype=torch.int64).cpu().numpy(), dtype=np.int64).reshape(-1)
    with mpc.ledger.protocol("ltz"):
        (r, s), c, u = _compare(x, relu=False, offsets=t)
        if c is None:
            return AShare(Shape((x.data.shape[0], *x.shape, len(t))), mpc, 0)
        ck = c[:, None] - t[None, :]                                        # (n, K)
        m = (ck >> 63) & 1
        out = (1 - 2 * m)[None] * (s.data.cpu().numpy()[..., None] + u[..., 0])
        if 0 in mpc.parties:
            out[0] += m
        return _share(mpc, out, (*x.shape, len(t)), 0)


def ltz_many_cost(mpc: MPC, n: int) -> Cost:
    return _cost(n, relu=False)


def ltz_bits(x: AShare) -> torch.Tensor:
    """[x < 0] as XOR shares (P, *shape) of one bit: the lowest bit of ltz's additive shares (additive
    shares of a bit b have low bits that XOR to b). Cost: ltz_cost(n)."""
    return ltz(x).data & 1


def relu(x: AShare) -> AShare:
    """max(x, 0) at x's scale, exact, in one round.

    1-3. _compare with payload (1 - 2 s, (1 - 2 s) r): u = shares of ((1 - 2 s) t, (1 - 2 s) r t),
       t = [y < alpha].
    4. [q] = [s] + u_0, [q r] = [s r] + u_1 (q = s ^ t = x_63 ^ m).
    5. relu = d (c - r), d = 1 - m - (1 - 2 m) q:
       [relu] = (1 - 2 m) ([q r] - c [q]) - (1 - m) [r], P0 adding c (1 - m) (local).
    Cost: relu_cost(n): 1 round, 2 * 8n bytes online; offline 3 * 8n (r, s, s r) + 2n * key_bytes(63, 2).
    """
    mpc = x.mpc
    with mpc.ledger.protocol("relu"):
        (r, s, sr), c, u = _compare(x, relu=True)
        if c is None:
            return AShare(Shape((x.data.shape[0], *x.shape)), mpc, x.frac)
        m = (c >> 63) & 1
        q = s.data.cpu().numpy() + u[..., 0]
        qr = sr.data.cpu().numpy() + u[..., 1]
        out = (1 - 2 * m) * (qr - c * q) - (1 - m) * r.data.cpu().numpy()
        if 0 in mpc.parties:
            out[0] += c * (1 - m)
        return _share(mpc, out, x.shape, x.frac)


def _cost(n: int, relu: bool) -> Cost:
    w = 2 if relu else 1
    offline = (3 if relu else 2) * 8 * n
    offline += sum(2 * (hi - lo) * dcf.key_bytes(NB, w) for lo, hi in _chunks(n))
    return Cost(2 * 8 * n, offline, 1)


def ltz_cost(mpc: MPC, n: int) -> Cost:
    return _cost(n, relu=False)


def relu_cost(mpc: MPC, n: int) -> Cost:
    return _cost(n, relu=True)
