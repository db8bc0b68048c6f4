"""Comparison protocols: LTZ / DReLU, ReLU, select, max.

LTZ (the sign bit of x) uses a dealer mask with bitwise shares and a packed comparison tree,
instead of CrypTen's A2B conversion plus a full-width adder:

  msb(x) = msb(c) xor msb(r) xor [c mod 2^63 < r mod 2^63],   where c = x + r is opened.

The comparison of the public c with the XOR-shared bits of r runs as a binary tree over 64 leaf
positions; each level halves the bits per element and opens only the bits it needs, packed, so a
level of width w opens 3 * w/2 bits per element (2 * w/2 at the last level).

Small comparisons on the CPU (up to NUMPY_MAX elements) run their local bit work in numpy, whose
per-operation overhead is a fraction of torch's: the same openings, shares and ledger rows (pinned by
tests/test_bitexact_small.py); larger ones and CUDA run the same steps in torch.

engine.comparison=fss replaces ltz, ltz_bits and relu (and so drelu, maximum, max_along, argmax and
every caller of them) with mpc/fss.py's one-round protocols on dealer-made DCF keys; the cost
functions here follow the same switch.
"""

from __future__ import annotations

import numpy as np
import torch

from comet_core.comm.ledger import Cost, wire_bytes
from comet_core.mpc import arith, fss, ring
from comet_core.mpc.engine import MPC, AShare
from comet_core.mpc.shape import Shape
from comet_core.mpc.xp import NUMPY, TORCH, ops_for

_LOW63 = (1 << 63) - 1
_LEVEL_WIDTHS = (32, 16, 8, 4, 2, 1)  # bits per element of the AND operands at each tree level


NUMPY_MAX = 1 << 14   # ltz_bits on the CPU of up to this many elements runs its local steps in numpy


def _and_shared_left(mpc: MPC, left, rights: list, n: int, bits: int):
    """[left & r for r in rights] on XOR-shared packed words, one round.

    The words pack n elements of `bits` bits each; only those bits go on the wire.
    1. Dealer: a, b_i, c_i = a & b_i (one a shared by all right operands).
    2. Open d = left ^ a and e_i = r_i ^ b_i together.
    3. left & r_i = c_i ^ (d & b_i) ^ (e_i & a) ^ (d & e_i on P0).
    Cost: online 2 * (1 + len(rights)) * packed(n, bits); offline len(rights) * packed(n, bits).
    The operands are torch tensors, or numpy arrays (ltz_bits' small inputs on the CPU): one definition
    over either (mpc/xp.py), the same values and messages; the results are of the operands' kind.
    """
    if not isinstance(left, np.ndarray) and left.is_meta:
        mpc.dealer.and_triples(tuple(left.shape[1:]), n, bits, len(rights))
        mpc.open_raw([left] * (1 + len(rights)), bits, xor=True, packed=n)
        return list(rights)
    xp = NUMPY if isinstance(left, np.ndarray) else TORCH
    if left.dtype.itemsize == 8:   # int64 words
        words = tuple(left.shape[1:])
    else:   # strided int32 / int16 / int8 halves (ltz_bits): their dense packing is this many words
        words = (left.shape[-1] * left.dtype.itemsize // 8,)
    a, bs, cs = mpc.dealer.and_triples(words, n, bits, len(rights))
    a, bs, cs = xp.arr(a), [xp.arr(b) for b in bs], [xp.arr(c) for c in cs]
    d, *es = xp.open_xor_masked(mpc, [(left, a), *zip(rights, bs)], bits, packed=n)
    outs, tmp = [], None
    for e, b, c in zip(es, bs, cs):   # step 3 in c's buffer (the dealer's, fresh for this call)
        tmp = xp.and_into(b, d, tmp)
        c ^= tmp
        c ^= xp.and_into(a, e, tmp)
        e &= d
        outs.append(xp.xor_p0(mpc, c, e))
    return outs


def _pack_pairs(x):
    """(..., nw) words with 32-bit payloads -> (..., ceil(nw/2)) full words, element order kept
    (a torch tensor or a numpy array)."""
    nw = x.shape[-1]
    if nw < 2:
        return x
    if nw % 2:
        if isinstance(x, np.ndarray):
            x = np.concatenate([x, np.zeros_like(x[..., :1])], axis=-1)
        else:
            x = torch.cat([x, torch.zeros_like(x[..., :1])], dim=-1)
    return x[..., 0::2] | (x[..., 1::2] << 32)


# levels 32 / 16 / 8 of the tree: a field's low and high halves are whole units of these types (leaf order)
_HALF_DTYPES = {32: torch.int32, 16: torch.int16, 8: torch.int8}
_HALF_NP = {32: np.int32, 16: np.int16, 8: np.int8}


def _pack_bits(v: torch.Tensor) -> torch.Tensor:
    """(P, n) 0/1 int64 -> (P, ceil(n/64)) words, _unpack_bits' layout (element 64 i + p at bit p of word i),
    for values held one per element (the reduced-ring circuit, mpc/smallring.py)."""
    P, n = v.shape
    w = -(-n // 64)
    if w * 64 != n:
        v = torch.cat([v, v.new_zeros((P, w * 64 - n))], 1)
    return (v.reshape(P, w, 64) << torch.arange(64, device=v.device)).sum(-1)   # distinct bits: sum = OR


def _unpack_bits(x, n: int):
    """(P, nw) words holding one bit per element (element 64*i + p at bit p of word i) -> (P, n)."""
    if isinstance(x, np.ndarray):
        pos = np.arange(64, dtype=np.int64)
    elif x.is_meta:
        return Shape((x.shape[0], n))
    else:
        pos = torch.arange(64, device=x.device)
    return ((x[..., None] >> pos) & 1).reshape(x.shape[0], -1)[:, :n]


def ltz(x: AShare) -> AShare:
    """[x < 0] as an additive share of a 0/1 integer (frac 0): ltz_bits then b2a_bit.

    1. Dealer: random r with additive shares and XOR shares of its bits, in the tree's leaf order
       (ring.leaf_order, a fixed bit permutation that keeps bit 63; the parties put c in the same order).
    2. Open c = x + r (1 round, 64 bits).
    3. Leaves: lt = r_low & ~c_low, eq = ~(r_low ^ c_low) over the 63 low bits (local).
    4. Six tree levels (64 -> 1 bits per element), each pairing two adjacent blocks of leaves (the high
       one more significant): lt = lt_hi ^ (eq_hi & lt_lo), eq = eq_hi & eq_lo (one round of ANDs). The
       halves are split locally and packed densely in element order: levels 32/16/8 take the low and high
       int32/int16/int8 halves of every field (one strided copy, thanks to the leaf order), levels 4/2/1
       the even and odd bits (bit compaction).
    5. msb = c_63 ^ r_63 ^ lt (local).
    6. B2A with a daBit: open msb ^ b (1 round, 1 bit), [msb] = d + (1 - 2d) [b].
    Cost per element, per direction: 64 + 3*(32+16+8+4+2) + 2*1 + 1 = 253 bits in 8 rounds
    (CrypTen: 1344 bits, 8 rounds); offline 64+64 + 2*(32+16+8+4+2)+1 + 65 bits.
    """
    mpc = x.mpc
    if mpc.config.comparison == "fss":
        return fss.ltz(x)
    with mpc.ledger.protocol("ltz"):
        return b2a_bit(mpc, ltz_bits(x))


def ltz_bits(x: AShare) -> torch.Tensor:
    """[x < 0] as XOR shares of one bit per element, (P, *shape): steps 1-5 of `ltz` (7 rounds).
    Cost: ltz_cost less the daBit (online 2 * packed(n, 1), offline 8n + packed(n, 1)), 7 rounds.
    Under engine.comparison=fss: fss.ltz_bits (1 round)."""
    mpc = x.mpc
    if mpc.config.comparison == "fss":
        return fss.ltz_bits(x)
    shape = x.shape
    n = x.numel()
    with mpc.ledger.protocol("ltz"):
        r_a, r_b = mpc.dealer.compare_mask(shape)
        (c,) = mpc.open(x._wrap(x.data + r_a.data))  # c = x + r (raw ring elements)
        P = x.data.shape[0]
        if c.is_meta:  # cost mode: the same dealer items and messages, no local bit work
            nw = n
            for w in _LEVEL_WIDTHS:
                nw = (nw + 1) // 2 if nw >= 2 else nw
                words = Shape((P, nw))
                _and_shared_left(mpc, words, [words] * (2 if w > 1 else 1), n, w)
            return Shape((P, *shape))
        c = c.reshape(n)
        r_b = r_b.reshape(P, n)              # XOR shares of ring.leaf_order(r) (the dealer's)
        is_np = n <= NUMPY_MAX and c.device.type == "cpu"
        if is_np:   # small inputs: the local steps in numpy (a fraction of torch's per-operation overhead)
            c, r_b = c.numpy(), r_b.numpy()
        xp, halves = (np, _HALF_NP) if is_np else (torch, _HALF_DTYPES)
        c_low = ~(ring.leaf_order(c) & _LOW63)                            # ~c, same leaf order
        # state (2, P, m): [lt; eq] of every element, one word each, padded with zero words to even m
        st = xp.zeros((2, P, n + n % 2), dtype=xp.int64) if is_np else \
            torch.zeros((2, P, n + n % 2), dtype=torch.int64, device=c.device)
        r_low = st[1, :, :n]
        r_low[...] = r_b & _LOW63
        st[0, :, :n] = r_low & c_low       # lt = r & ~c: public AND, share-wise
        if 0 in mpc.parties:
            r_low[0] ^= c_low              # eq = r ^ ~c: P0 folds in the public part
        both = None                        # bit levels: the stacked [lt; eq] (2, P, m)
        for w in _LEVEL_WIDTHS:
            if w >= 8:    # fields of 2w bits -> w: the halves are strided int32 / int16 / int8 views
                dt = halves[w]
                v = st.view(dt).reshape(2, P, -1, 2)             # (2 [lt, eq], P, fields, 2 [lo, hi])
                lt_lo, lt_hi, eq_lo, eq_hi = v[0, ..., 0], v[0, ..., 1], v[1, ..., 0], v[1, ..., 1]
            else:         # bit levels: even / odd bits of each field of lt and eq at once, compacted and packed
                if both is None:
                    both = st
                lo, hi = _pack_pairs(ring.even_bits(both, 64)), _pack_pairs(ring.odd_bits(both, 64))
                lt_lo, eq_lo, lt_hi, eq_hi = lo[0], lo[1], hi[0], hi[1]
            if w > 1:
                t_lt, t_eq = _and_shared_left(mpc, eq_hi, [lt_lo, eq_lo], n, w)
                if w >= 8:   # lt = lt_hi ^ t_lt, eq = t_eq as dense words: the next state, padded to even
                    mw = t_lt.shape[-1]
                    st = xp.zeros((2, P, mw + mw % 2), dtype=xp.int64) if is_np else \
                        torch.zeros((2, P, mw + mw % 2), dtype=torch.int64, device=c.device)
                    xp.bitwise_xor(lt_hi, t_lt.view(dt), out=st[0, :, :mw].view(dt))
                    st[1, :, :mw] = t_eq
                else:
                    both = xp.stack([lt_hi ^ t_lt, t_eq])
            else:
                (t_lt,) = _and_shared_left(mpc, eq_hi, [lt_lo], n, w)
                lt = lt_hi ^ t_lt
        msb = _unpack_bits(lt, n)
        msb ^= (r_b >> 63) & 1               # r's top bit, share-wise
        if 0 in mpc.parties:
            msb[0] ^= (c >> 63) & 1          # public top bit of c
        msb = msb.reshape(P, *shape)
        return torch.from_numpy(msb) if is_np else msb


def b2a_bit(mpc: MPC, bit: torch.Tensor) -> AShare:
    """XOR-shared bit (P, ...) -> additive 0/1 share, with a daBit.

    1. Dealer: random bit b as XOR and additive shares.
    2. Open d = bit ^ b (1 round, 1 bit per element).
    3. [bit] = d + (1 - 2d) [b]   (P0 adds d).
    Cost: online 2 * packed(n, 1); offline 8n + packed(n, 1).
    """
    with mpc.ledger.protocol("b2a"):
        bx, ba = mpc.dealer.dabit(bit.shape[1:])
        xp = ops_for(bit, bx, ba.data)                       # numpy for a few elements (mpc/xp.py)
        (d,) = xp.open(mpc, [xp.arr(bit) ^ xp.arr(bx)], 1, xor=True)
        out = xp.add_p0(mpc, xp.arr(ba.data) * (1 - 2 * d), d)
        return AShare(xp.tensor(out), mpc, 0)


def _ltz_online_bytes(n: int) -> int:
    per_dir = 8 * n
    for w in _LEVEL_WIDTHS:
        per_dir += (3 if w > 1 else 2) * wire_bytes(n, w)
    per_dir += wire_bytes(n, 1)
    return 2 * per_dir


def ltz_cost(mpc: MPC, n: int) -> Cost:
    if mpc.config.comparison == "fss":
        return fss.ltz_cost(mpc, n)
    offline = 16 * n                                          # r: additive + XOR corrections
    offline += sum((2 if w > 1 else 1) * wire_bytes(n, w) for w in _LEVEL_WIDTHS)
    offline += 8 * n + wire_bytes(n, 1)                       # daBit
    return Cost(_ltz_online_bytes(n), offline, 1 + len(_LEVEL_WIDTHS) + 1)


def ltz_bits_cost(mpc: MPC, n: int) -> Cost:
    """ltz_bits: ltz_cost less the daBit's round and bytes (circuit); ltz_cost (fss)."""
    full = ltz_cost(mpc, n)
    if mpc.config.comparison == "fss":
        return full
    return Cost(full.online_bytes - 2 * wire_bytes(n, 1), full.offline_bytes - 8 * n - wire_bytes(n, 1),
                full.rounds - 1)


def drelu(x: AShare) -> AShare:
    """[x >= 0] = 1 - [x < 0]. Cost: ltz_cost."""
    return _one_minus(ltz(x))


def _one_minus(bit: AShare) -> AShare:
    return AShare(bit.mpc.add_p0_(-bit.data, 1), bit.mpc, 0)


def drelu_cost(mpc: MPC, n: int) -> Cost:
    return ltz_cost(mpc, n)


def relu(x: AShare) -> AShare:
    """max(x, 0) = x * [x >= 0].

    1. d = drelu(x) (8 rounds).   2. x * d by Beaver (1 round; d is an integer, no truncation).
    Cost: ltz_cost(n) + mul_cost(n, n, n) = 253 + 128 bits per element per direction, 9 rounds.
    Under engine.comparison=fss: fss.relu, 64 bits per element per direction in 1 round.
    """
    if x.mpc.config.comparison == "fss":
        return fss.relu(x)
    with x.mpc.ledger.protocol("relu"):
        return arith.mul(x, drelu(x))


def relu_cost(mpc: MPC, n: int) -> Cost:
    if mpc.config.comparison == "fss":
        return fss.relu_cost(mpc, n)
    return ltz_cost(mpc, n) + arith.mul_cost(mpc, n, n, n, frac_sum=mpc.frac_bits)


def select(cond: AShare, a: AShare, b: AShare) -> AShare:
    """cond ? a : b for a 0/1 share cond: b + cond * (a - b). Cost: mul_cost (1 round)."""
    with a.mpc.ledger.protocol("select"):
        return b + arith.mul(cond, a - b)


def maximum(a: AShare, b: AShare) -> AShare:
    """max(a, b) = b + relu(a - b). Cost: relu_cost(n)."""
    return b + relu(a - b)


def max_along(x: AShare, dim: int = -1, keepdim: bool = False) -> AShare:
    """max over `dim` by a pairwise tournament: ceil(log2 n) levels of `maximum`.

    At each level the first half is compared with the second half (an odd element waits).
    Cost: sum over levels of relu_cost(pairs * rest) -> 9 * ceil(log2 n) rounds.
    """
    with x.mpc.ledger.protocol("max"):
        x = x.transpose(dim, -1) if dim not in (-1, x.dim() - 1) else x
        while x.shape[-1] > 1:
            n = x.shape[-1]
            h = n // 2
            m = maximum(x[..., :h], x[..., h:2 * h])
            x = AShare.cat([m, x[..., 2 * h:]], -1) if n % 2 else m
        if dim not in (-1, x.dim() - 1):
            x = x.transpose(dim, -1)
        return x if keepdim else _squeeze(x, dim)


def _squeeze(x: AShare, dim: int) -> AShare:
    return x._wrap(x.data.squeeze(dim + 1 if dim >= 0 else dim))


def max_along_cost(mpc: MPC, rest: int, n: int) -> Cost:
    total = Cost()
    while n > 1:
        total = total + relu_cost(mpc, rest * (n // 2))
        n = n - n // 2
    return total


def argmax(x: AShare) -> AShare:
    """Index of the largest entry along the last dim, as a share (exact integer index at x's scale: the
    index i is held as i * 2^frac, so `reveal` gives i); ties go to the lowest index, as torch.argmax.

    A tournament over adjacent pairs that carries (value, index), so that only the index need be opened:
    1. State: (x_i, i) for every position i (the indices are public: P0 holds them, local).
    2. Per level, pair positions 2j and 2j+1 (an odd last entry waits for the next level; adjacent
       pairing keeps every pair's left entry the lower index, hence the tie rule).
    3. b_j = [x_2j >= x_2j+1] = drelu(x_2j - x_2j+1)   (ltz: 8 rounds).
    4. (value, index)_j = right + b_j * (left - right): one Beaver product of the integer b with the
       stacked (value, index) differences (1 round, no truncation).
    5. After ceil(log2 n) levels one pair is left; its index share is the result.
    Cost, with p_l = rows * floor(n_l / 2) pairs at level l:
      sum_l drelu_cost(p_l) + mul_cost(p_l, 2 p_l, 2 p_l, untruncated)  -> 9 ceil(log2 n) rounds.
    """
    mpc = x.mpc
    with mpc.ledger.protocol("argmax"):
        n = x.shape[-1]
        idx = torch.arange(n, dtype=torch.int64, device=mpc.device if not mpc.is_cost else "cpu")
        if mpc.is_cost:
            idx_share = AShare(Shape((len(mpc.parties), *x.shape)), mpc, 0)
        else:
            idx_share = AShare(mpc.public_share(idx.expand(x.shape).contiguous()), mpc, 0)
        s = AShare.stack([x, idx_share], -1)                       # (..., n, 2) at x's scale
        while n > 1:
            h = n // 2
            left, right = s[..., 0:2 * h:2, :], s[..., 1:2 * h:2, :]  # (..., h, 2)
            b = drelu(left[..., 0] - right[..., 0])                # (..., h) integer 0/1
            win = right + arith.mul(b.unsqueeze(-1), left - right, out_frac=s.frac)
            s = AShare.cat([win, s[..., 2 * h:, :]], -2) if n % 2 else win
            n = n - h
        return s[..., 0, 1]


def argmax_cost(mpc: MPC, rows: int, n: int) -> Cost:
    total = Cost()
    while n > 1:
        p = rows * (n // 2)
        total = total + drelu_cost(mpc, p) + arith.mul_cost(mpc, p, 2 * p, 2 * p, frac_sum=0)
        n = n - n // 2
    return total
