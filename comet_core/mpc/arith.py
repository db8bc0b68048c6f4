"""Arithmetic protocols on additive shares: truncation, Beaver multiply, square, matrix multiply.

Costs use `Cost(online_bytes, offline_bytes, rounds)`: online bytes count both directions between
P0 and P1, offline bytes the dealer's corrections (see dealer.py). n = elements.
"""

from __future__ import annotations

import contextlib

import math
import weakref
from types import SimpleNamespace

import torch

from comet_core.comm.ledger import Cost
from comet_core.mpc import matmul as mm
from comet_core.mpc import ring, weight_masks
from comet_core.mpc.engine import MPC, AShare, _lift, _np_open, _small_cpu
from comet_core.mpc.xp import ops_for

W = ring.BYTES_PER_ELEMENT  # bytes of one ring element on the wire
TRUNC_LIMIT = 1 << 62        # dealer truncation is exact for |x| < 2^62 (secret ring elements)
WORD_LIMIT = 1 << 63         # a product that needs no truncation must not wrap: |x| < 2^63


# ---- the simulation's range check (no messages: only the in-process simulation holds both shares) ---

def check_ring_range(x: AShare, what: str = "truncation input", limit: int = TRUNC_LIMIT) -> None:
    """Raise RangeError if a secret ring element of x lies outside [-limit, limit) (simulation only)."""
    mpc = x.mpc
    if not mpc.checking:
        return
    lo, hi = _secret_minmax(x.data)
    if lo < -limit or hi >= limit:   # only then the whole secret, to name the first offending element
        v = mpc.secret(x)
        i = int(((v >= limit) | (v < -limit)).flatten().nonzero()[0])
        raise mpc.range_error(what, float(v.flatten()[i]) / 2.0 ** x.frac, limit / 2.0 ** x.frac)


_ABS_BLOCK = 1 << 17   # elements per block of _secret_minmax (1 MiB of int64: stays in cache)


def _secret_minmax(data: torch.Tensor) -> tuple[int, int]:
    """(min, max) of the secret ring elements x0 + x1 (signed, exact) of party-stacked shares (2, ...).

    In blocks of _ABS_BLOCK elements through one small buffer: the secret is never formed whole, so the
    simulation's range checks read the two shares once and write nothing large (was: an n-sized sum,
    then an n-sized abs or two n-sized comparisons)."""
    flat = data.reshape(data.shape[0], -1)
    n = flat.shape[1]
    if n == 0:
        return 0, 0
    if _small_cpu(flat):   # numpy: the same (min, max) at a fraction of torch's per-call overhead
        v = _np_open(flat.numpy(), False)
        return int(v.min()), int(v.max())
    buf = torch.empty(min(n, _ABS_BLOCK), dtype=torch.int64, device=data.device)
    lo = hi = None
    for s in range(0, n, _ABS_BLOCK):
        e = min(n, s + _ABS_BLOCK)
        v = torch.add(flat[0, s:e], flat[1, s:e], out=buf[:e - s])
        mn, mx = torch.aminmax(v)
        lo = mn if lo is None else torch.minimum(lo, mn)
        hi = mx if hi is None else torch.maximum(hi, mx)
    return int(lo), int(hi)


def _secret_abs_max(data: torch.Tensor) -> int:
    """max |x0 + x1| over party-stacked shares (exact; |-2^63| counts as 2^63), by _secret_minmax."""
    lo, hi = _secret_minmax(data)
    return max(hi, -lo)


_SEEN_MIN = 1 << 16     # secrets with at least this many elements have max |y| remembered while unchanged
_SEEN: dict[int, tuple] = {}   # id(share tensor) -> (weak reference to it, its version, max |y| as an int)


def _seen_abs_max(data: torch.Tensor) -> int | None:
    hit = _SEEN.get(id(data))
    return hit[2] if hit is not None and hit[0]() is data and hit[1] == data._version else None


def _remember_abs_max(data: torch.Tensor, value: int) -> None:
    key = id(data)
    _SEEN[key] = (weakref.ref(data, lambda _r, key=key: _SEEN.pop(key, None)), data._version, value)


def _abs_max(mpc: MPC, y) -> float:
    """max |y| of a secret or a public tensor. Cached per registered weight (weights do not change), and
    for any large share tensor while it is unchanged (same tensor object, same in-place version counter;
    held weakly: the cache never keeps a tensor alive), e.g. an unregistered weight used in every call."""
    if not isinstance(y, AShare):
        return float(torch.as_tensor(y, dtype=torch.float64).abs().max())
    if y.uid is not None and y.uid in mpc.weight_abs_max:
        return mpc.weight_abs_max[y.uid]
    big = y.numel() >= _SEEN_MIN
    v = _seen_abs_max(y.data) if big else None
    if v is None:
        v = _secret_abs_max(y.data)
        if big:
            _remember_abs_max(y.data, v)
    m = v / 2.0 ** y.frac
    if y.uid is not None:
        mpc.weight_abs_max[y.uid] = m
    return m


def check_product(x: AShare, y, frac_sum: int, truncated: bool = True, matrix: bool = False,
                  what: str = "x * y") -> None:
    """Raise RangeError if the exact product of x's secret and y (an AShare's secret or a public float
    tensor) would leave the ring range at scale 2^frac_sum (simulation only).

    1. A cheap bound: max|x| * max|y| (elementwise), or max row-L1(x) * max|y| (matrix product).
    2. Only if the bound exceeds the limit: the exact float64 product, whose largest entry is named.
    """
    mpc = x.mpc
    if not mpc.checking:
        return
    limit = (TRUNC_LIMIT if truncated else WORD_LIMIT) / 2.0 ** frac_sum
    if x.numel() == 0 or (isinstance(y, AShare) and y.numel() == 0):
        return
    xs = None
    if matrix:  # row L1 norms in float64 (an int64 sum of large words could wrap)
        xs = mpc.secret(x)
        xa = float(ring.decode(xs, x.frac).abs().sum(-1).max())
    else:       # int64 abs-max in blocks: no n-sized copy
        xa = _secret_abs_max(x.data) / 2.0 ** x.frac
    ya = xa if y is x and not matrix else _abs_max(mpc, y)
    if xa * ya < limit:
        return
    xv = ring.decode(mpc.secret(x) if xs is None else xs, x.frac)
    yv = ring.decode(mpc.secret(y), y.frac) if isinstance(y, AShare) else torch.as_tensor(y, dtype=torch.float64)
    yv = yv.to(xv.device)
    p = torch.matmul(xv, yv) if matrix else xv * yv
    i = int(p.abs().flatten().argmax())
    if abs(float(p.flatten()[i])) >= limit:
        raise mpc.range_error(f"the product {what}", float(p.flatten()[i]), limit)


def local_sum(x: AShare, dim: int = -1, what: str = "row sum", limit: int = TRUNC_LIMIT) -> AShare:
    """x.sum(dim, keepdim=True) (local, no messages), whose secret must stay inside [-limit, limit)
    (simulation only): a sum of terms that each fit can still wrap mod 2^64, and a wrapped sum looks
    small to the truncation that follows (its own check would pass).

    1. A cheap bound: n * max|x| < limit.   2. Only if it fails: the float64 sum of the secret (exact to
    its 53 bits: enough to place it against the limit), whose largest row is named.
    """
    mpc = x.mpc
    if mpc.checking and x.numel():
        n = x.shape[dim]
        if n * _secret_abs_max(x.data) >= limit:
            v = mpc.secret(x).to(torch.float64).sum(dim)        # float64: cannot wrap
            i = int(v.abs().flatten().argmax())
            if abs(float(v.flatten()[i])) >= limit:
                raise mpc.range_error(f"the local {what} (of {n} terms)", float(v.flatten()[i]) / 2.0 ** x.frac,
                                      limit / 2.0 ** x.frac)
    return x.sum(dim, keepdim=True)


# ---- truncation ------------------------------------------------------------------------------

def truncate(x: AShare, shift: int) -> AShare:
    """Divide the secret by 2^shift (fixed-point rescale), result scale x.frac - shift.

    dealer (default; exact up to 1 LSB for every |x| < 2^62, perfectly hiding):
      1. Dealer: uniform r in Z_2^64, shares of r, of r >> s (logical) and of its top bit r_63.
      2. P0 adds 2^62, so x' = x + 2^62 lies in [0, 2^63). Open c = x' + r (1 round).
      3. The addition wrapped iff r_63 = 1 and c_63 = 0, so the wrap bit is w = (1 - c_63) r_63:
         x' >> s = (c >> s) - (r >> s) + w 2^(64 - s) (- a borrow bit, the 1-LSB error).
      4. Subtract 2^(62 - s) (P0).
      Cost: online 2*8n bytes, 1 round; offline 3*8n bytes.
    local (SecureML / CrypTen):
      1. P0 computes x0 >> s; P1 computes -((-x1) >> s).
      Cost: 0 bytes, 0 rounds. Error <= 1 LSB, except with probability ~|x| / 2^63 per element,
      when the result is off by ~2^(64 - s): with squared activations of a few hundred this happens
      in real models, so it is an option (CrypTen's choice), not the default.
    """
    if shift == 0:
        return x
    mpc = x.mpc
    with mpc.ledger.protocol("truncate"):
        check_ring_range(x)
        if mpc.config.truncation == "local":
            if x.data.is_meta:
                return AShare(x.data, mpc, x.frac - shift)
            out = torch.empty_like(x.data)   # P0: x0 >> s; P1: -((-x1) >> s), each in its slot
            for i, p in enumerate(mpc.parties):
                if p == 0:
                    torch.bitwise_right_shift(x.data[i], shift, out=out[i])
                else:
                    torch.neg(x.data[i], out=out[i]).bitwise_right_shift_(shift).neg_()
            return AShare(out, mpc, x.frac - shift)
        r, r_shift, r_top = mpc.dealer.trunc_triple(x.shape, shift)
        xp = ops_for(x.data, r.data, r_shift.data, r_top.data)       # numpy for a few elements
        out = _truncate_steps(xp, mpc, *(xp.arr(t.data) for t in (x, r, r_shift, r_top)), shift)
        return AShare(xp.tensor(out), mpc, x.frac - shift)


def _truncate_steps(xp, mpc, x, r, r_shift, r_top, shift: int):
    """Steps 2-4 of truncate's dealer protocol on party-stacked arrays of namespace xp (mpc/xp.py)."""
    masked = xp.add_p0(mpc, x + r, 1 << 62)           # raw ring elements (r is not a fixed-point value)
    (c,) = xp.open(mpc, [masked])
    c_top = (c >> 63) & 1
    out = r_top * ((1 - c_top) << (64 - shift))
    out = out - r_shift
    return xp.add_p0(mpc, out, ((c >> shift) & ((1 << (64 - shift)) - 1)) - (1 << (62 - shift)))


def truncate_cost(mpc: MPC, n: int) -> Cost:
    if mpc.config.truncation == "local":
        return Cost()
    return Cost(2 * W * n, 3 * W * n, 1)


def truncate_square(x: AShare, shift: int) -> tuple[AShare, AShare]:
    """t = truncate(x, shift) and t^2 (untruncated, scale 2 (x.frac - shift)) in truncate's one round.

    The dealer truncation's output is t = A + B [r_63] - [r >> s] with A = (c >> s) - 2^(62 - s) and
    B = (1 - c_63) 2^(64 - s) public (c the opened x + 2^62 + r), so its square is linear in dealer items:
      t^2 = A^2 + 2 A B [r_63] - 2 A [r >> s] - 2 B [r_63 (r >> s)] + [(r >> s)^2]
    (B^2 = 0 mod 2^64 for s <= 32; r_63^2 = r_63). The same word t t as a Beaver square of t, with no
    second opening: a chain of squarings (exp's) costs one round per square instead of two.
      1. Dealer: trunc_square_triple (r, r >> s, r_63, (r >> s)^2, r_63 (r >> s)).
      2. Open c = x + 2^62 + r (1 round), as truncate.   3. t and t^2 as above (local).
    Cost: truncate_square_cost(n): online 2*8n, 1 round; offline 5*8n.
    Dealer truncation only (truncate's steps; `local` truncation has no opening to reuse)."""
    mpc = x.mpc
    if mpc.config.truncation != "dealer" or not 0 < shift <= 32:
        raise ValueError(f"truncate_square needs dealer truncation and 0 < shift <= 32, got "
                         f"{mpc.config.truncation}, {shift}")
    with mpc.ledger.protocol("truncate"):
        check_ring_range(x)
        items = mpc.dealer.trunc_square_triple(x.shape, shift)
        xp = ops_for(x.data, *(t.data for t in items))
        xd, r, rs, top, rs2, trs = (xp.arr(t.data) for t in (x, *items))
        (c,) = xp.open(mpc, [xp.add_p0(mpc, xd + r, 1 << 62)])
        a = ((c >> shift) & ((1 << (64 - shift)) - 1)) - (1 << (62 - shift))    # public
        b = (1 - ((c >> 63) & 1)) << (64 - shift)                              # public
        t = xp.add_p0(mpc, top * b - rs, a)
        t2 = rs2 + 2 * a * (b * top - rs) - 2 * b * trs
        t2 = xp.add_p0(mpc, t2, a * a)
        return AShare(xp.tensor(t), mpc, x.frac - shift), AShare(xp.tensor(t2), mpc, 2 * (x.frac - shift))


def truncate_square_cost(mpc: MPC, n: int) -> Cost:
    return Cost(2 * W * n, 5 * W * n, 1)


def _rescale_to_f(z: AShare, out_frac: int | None = None) -> AShare:
    """Bring a product back to `out_frac` (default: the engine's scale) by truncating the surplus."""
    f = z.mpc.frac_bits if out_frac is None else out_frac
    return truncate(z, z.frac - f) if z.frac > f else z


# ---- public multiplications --------------------------------------------------------------------

def mul_public(x: AShare, t, frac: int | None = None) -> AShare:
    """x * t for a public real tensor or scalar t.

    1. Encode t at `frac` bits (default frac_bits); each party multiplies its share (local).
    2. Truncate back to max(x.frac, frac_bits) (nothing to do for an integer or 0/1 x).
    Cost: truncate_cost(n), or 0 when no truncation is needed.
    """
    mpc = x.mpc
    frac = mpc.frac_bits if frac is None else frac
    t = torch.as_tensor(t, dtype=torch.float64)
    enc = ring.encode(t.to(x.data.device), frac)
    with mpc.ledger.protocol("mul_public"):
        check_product(x, t, x.frac + frac, what="x * public")
        z = AShare(x.data * enc, mpc, x.frac + frac)
        return _rescale_to_f(z, max(x.frac, frac, mpc.frac_bits) if x.frac == 0 else None)


def matmul_public(x: AShare, w: torch.Tensor) -> AShare:
    """x @ w for a public real matrix w: local ring matmul, then truncate. Cost: truncate_cost."""
    mpc = x.mpc
    enc = ring.encode(w.to(x.data.device), mpc.frac_bits)
    count_macs(mpc, x.data.shape, enc.shape, kind=public_mac_kind(x.data.shape))   # both shares
    with mpc.ledger.protocol("matmul_public"):
        check_product(x, w, x.frac + mpc.frac_bits, matrix=True, what="x @ public")
        return _rescale_to_f(AShare(mm.ring_matmul(x.data, enc), mpc, x.frac + mpc.frac_bits))


# ---- Beaver multiplication ---------------------------------------------------------------------

def mul(x: AShare, y: AShare, out_frac: int | None = None) -> AShare:
    """Elementwise x * y of two secrets (broadcasting), Beaver's protocol.

    1. Dealer: a (x's shape), b (y's shape), c = a * b.
    2. Open e = x - a and f = y - b in one round.
    3. z = c + e*b + a*f (+ e*f on P0); scale x.frac + y.frac.
    4. Truncate to `out_frac` (default frac_bits) if the scale exceeds it (a 0/1 or integer
       factor needs none).
    Cost: online 2*8*(n_x + n_y) bytes, 1 round; offline 8*n_z; + truncate_cost(n_z).
    """
    mpc = x.mpc
    with mpc.ledger.protocol("mul"):
        f = mpc.frac_bits if out_frac is None else out_frac
        check_product(x, y, x.frac + y.frac, truncated=x.frac + y.frac > f)
        a, b, c = mpc.dealer.mul_triple(x.shape, y.shape)
        e, f = mpc.open_masked((x.data, a.data), (y.data, b.data))
        nd = len(c.shape)
        xp = ops_for(e, f, a.data, b.data, c.data)       # numpy for a few elements
        # step 3 in c's buffer (the dealer's, fresh for this call): no n_z-sized temporaries
        en, fn = xp.arr(e), xp.arr(f)
        z = xp.addmul_(xp.arr(c.data), en, xp.arr(_lift(b.data, nd)))
        z = xp.addmul_(z, xp.arr(_lift(a.data, nd)), fn)
        z = xp.add_p0(mpc, z, en * fn)
        return _rescale_to_f(AShare(xp.tensor(z), mpc, x.frac + y.frac), out_frac)


def mul_cost(mpc: MPC, n_x: int, n_y: int, n_z: int, frac_sum: int | None = None) -> Cost:
    trunc = truncate_cost(mpc, n_z) if (frac_sum is None or frac_sum > mpc.frac_bits) else Cost()
    return Cost(2 * W * (n_x + n_y), W * n_z, 1) + trunc


def square(x: AShare, out_frac: int | None = None) -> AShare:
    """x * x with a square pair.

    1. Dealer: a, c = a^2.   2. Open e = x - a (1 round).   3. z = c + 2 e a (+ e^2 on P0).
    4. Truncate to `out_frac` (default frac_bits); none when out_frac >= 2 x.frac.
    Cost: online 2*8n, 1 round; offline 8n; + truncate_cost(n) (when truncated).
    """
    mpc = x.mpc
    with mpc.ledger.protocol("square"):
        f = mpc.frac_bits if out_frac is None else out_frac
        check_product(x, x, 2 * x.frac, truncated=2 * x.frac > f, what="x^2")
        a, c = mpc.dealer.square_pair(x.shape)
        (e,) = mpc.open_masked((x.data, a.data))
        xp = ops_for(e, a.data, c.data)                  # numpy for a few elements
        en = xp.arr(e)
        z = xp.addmul_(xp.arr(c.data), en, xp.arr(a.data), 2)   # c's buffer is the dealer's, fresh for this call
        z = xp.add_p0(mpc, z, en * en)
        return _rescale_to_f(AShare(xp.tensor(z), mpc, 2 * x.frac), out_frac)


def square_cost(mpc: MPC, n: int, truncated: bool = True) -> Cost:
    return Cost(2 * W * n, W * n, 1) + (truncate_cost(mpc, n) if truncated else Cost())


def matmul(x: AShare, y: AShare, reuse_mask: bool | None = None, out_frac: int | None = None,
           select: tuple | None = None) -> AShare:
    """x @ y of two secrets (torch.matmul broadcasting), Beaver's protocol for matrices.

    1. Dealer: a (x's shape), b (y's shape), c = a @ b.
    2. Open e = x - a and f = y - b in one round.
    3. P0: z0 = e @ (f + b0) + a0 @ f + c0;  P1: z1 = e @ b1 + a1 @ f + c1 (computed as
       (a_p + [p = 0] e) @ f + e @ b_p + c_p: no weight-sized sum).
    4. Truncate to frac_bits.
    The kernels: mpc/matmul.py (beaver_strategy: a few rows, a decode step, run steps 1-3 in cache-sized
    blocks of y's rows, mpc/blocked.py, the same shares and ledger bit for bit; every product of the whole
    steps by ring_matmul's product_strategy).
    With mask reuse (engine.weight_masks=request|deployment, or `reuse_mask`) and a registered weight y
    (MPC.register_weight), y's mask b and the opened f are kept for the rest of the inference
    (MPC.inference) or the deployment (opened in the deploy stage: mpc/weight_masks.py), so later calls
    with the same y open only e. Activations are never cached (they are not reused).
    `select` = (dim, index): multiply by the public slice y.index_select(dim, index) (Comet's SOMM / SIMM
    columns and rows). Without reuse only the slice is masked and opened; with reuse the whole weight's
    mask is opened at its first use in the inference and every later slice is cut from it locally.
    Cost: online 2*8*(n_x + n_y) bytes (n_y dropped on a reuse), 1 round; offline 8*n_z;
    + truncate_cost(n_z).
    """
    mpc = x.mpc
    count_macs(mpc, x.shape, y.shape, select)
    mpc.ledger.work.add("matmul_call", 1)   # its fixed local work (comm/work.py), the same in both modes
    if select is not None:   # the slice of y (or of its mask and opening) gathered per product
        mpc.ledger.work.add("select_elem", y.numel() // y.shape[select[0]] * int(select[1].numel()))
    with mpc.ledger.protocol("matmul"):
        f = mpc.frac_bits if out_frac is None else out_frac
        check_product(x, y, x.frac + y.frac, truncated=x.frac + y.frac > f, matrix=True, what="x @ y")
        key = weight_masks.mask_key(mpc, y, reuse_mask)
        if key is not None and key not in mpc.weight_masks:   # a kept mask drawn and opened: comm/work.py
            with mpc.label(stage=weight_masks.DEPLOY_STAGE) if weight_masks.lives_per_deployment(mpc, key) \
                    else contextlib.nullcontext():
                mpc.ledger.work.add("kept_mask_word", y.numel())
        weight_masks.open_for_deployment(mpc, y, key)   # weight_masks=deployment: f opened once, stage deploy
        if select is not None and key is None:   # no reuse: the slice is the operand
            y, select = y.index_select(*select), None
        if select is None and mm.beaver_strategy(x, y, reuse=key is not None) == "blocked":   # by blocks
            return _rescale_to_f(AShare(mm.beaver_blocked(x, y, key), mpc, x.frac + y.frac), out_frac)
        cached = mpc.weight_masks.get(key) if key is not None else None
        a, b, c, *full = mpc.dealer.matmul_triple(x.shape, y.shape, reuse_key=key, select=select)
        b_full = full[0] if full else b
        if cached is not None:
            f = weight_masks.kept_opening(cached, b_full.data)
            (e,) = mpc.open_masked((x.data, a.data))
        else:
            e, f = mpc.open_masked((x.data, a.data), (y.data, b_full.data))
            if key is not None:
                mpc.weight_masks[key] = weight_masks.keep_opening(mpc, key, y.data, f)
        if select is not None:
            f = f.index_select(select[0], select[1].to(f.device) if not f.is_meta else select[1])
        # step 3 regrouped: z_p = (a_p + [p = 0] e) @ f + e @ b_p + c_p, so that no weight-sized
        # f + b0 is formed (only the activation-sized a0 + e): the same shares, bit for bit. The party
        # dim is lifted past the operands' batch dims so that broadcasting lines up (1-D operands too)
        ea = mpc.add_p0_(a.data.clone(), e)
        ev, ea = (e.unsqueeze(0), ea.unsqueeze(1)) if x.dim() == 1 else (e, ea)
        fv, bv = (f.unsqueeze(-1), b.data.unsqueeze(-1)) if y.dim() == 1 else (f, b.data)
        nd = max(ev.dim(), fv.dim())
        bv, ea = _lift(bv, nd), _lift(ea, nd)
        fd = bd = None
        if select is None and mm.takes_digits(ev, bv):     # b's digits: the dealer's (or a reused mask's)
            bd = mpc.digits(key, "b", bv)
        if key is not None and select is None and mm.takes_digits(ea, fv):   # a reused f: split once
            fd = mpc.digits(key, "f", fv)
        eb = mm.ring_matmul(ev, bv, b_digits=bd)
        af = mm.ring_matmul(ea, fv, b_digits=fd)
        z = eb.add_(af).reshape(c.data.shape).add_(c.data) if not eb.is_meta else \
            (eb + af).reshape(c.data.shape) + c.data
        return _rescale_to_f(AShare(z, mpc, x.frac + y.frac), out_frac)


def public_mac_kind(data_shape) -> str:
    """The work kind of a shared-by-public product whose left operand has party-stacked `data_shape`
    (parties, ..., k): `public_mac_few` for at most dealer.FEW_ROWS rows per share (a pass over the public
    matrix per row, memory-bound), else `public_mac`."""
    from comet_core.mpc.dealer import FEW_ROWS

    return "public_mac_few" if math.prod(data_shape[1:-1]) <= FEW_ROWS else "public_mac"


def count_macs(mpc: MPC, x_shape, y_shape, select=None, kind: str | None = None) -> None:
    """Count a product's multiply-accumulates (comm/work.py), from shapes only (the same in both modes):
    prod(output shape) * k, as `matmul_mac_few` for at most dealer.FEW_ROWS rows of x (`matmul_mac_few_small`
    when y has at most blocked.BLOCK_ELEMENTS elements: the shape rule of matmul.beaver_strategy's whole-matrix
    steps), `matmul_mac_bmm_few` for batched operands (both with batch dims) of at most FEW_ROWS rows per
    matrix, else `matmul_mac`."""
    from comet_core.mpc.dealer import FEW_ROWS

    ys = list(y_shape)
    if select is not None:
        ys[select[0]] = int(select[1].numel())
    k = int(x_shape[-1]) if len(x_shape) else 1
    out = mm._matmul_shape(SimpleNamespace(shape=tuple(x_shape)), SimpleNamespace(shape=tuple(ys)))
    macs = math.prod(out) * k
    if kind is None:
        rows = math.prod(x_shape[:-1]) if len(x_shape) > 1 else 1
        if len(x_shape) > 2 and len(ys) > 2 and x_shape[-2] <= FEW_ROWS:   # per-head products of a decode step
            kind = "matmul_mac_bmm_few"
        else:
            kind = "matmul_mac" if rows > FEW_ROWS else \
                "matmul_mac_few_small" if math.prod(ys) <= mm.block_elements() else "matmul_mac_few"
    mpc.ledger.work.add(kind, macs)


def matmul_cost(mpc: MPC, n_x: int, n_y: int, n_z: int, reused: bool = False) -> Cost:
    return Cost(2 * W * (n_x + (0 if reused else n_y)), W * n_z, 1) + truncate_cost(mpc, n_z)
