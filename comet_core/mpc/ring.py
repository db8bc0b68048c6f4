"""The ring Z_2^64 on torch.int64, fixed-point encoding and the fast exact ring matmul.

Ring elements are torch.int64; two's-complement wrap-around of +, -, * is the ring's arithmetic.
In cost mode, data-free `Shape` objects (is_meta = True) stand in for tensors: every function here
accepts them and returns Shapes.
"""

from __future__ import annotations

import torch

from comet_core.mpc.prg import PRG
from comet_core.mpc.shape import Shape, broadcast

RING_BITS = 64
BYTES_PER_ELEMENT = 8

# Balanced 22-bit limbs for the float64 matmul: |limb| <= 2^21, so one limb product is <= 2^42 and a sum
# of up to 2^11 of them stays <= 2^53, where float64 is exact.
_LIMB_BITS = 22
_LIMB_HALF = 1 << (_LIMB_BITS - 1)
_LIMB_MASK = (1 << _LIMB_BITS) - 1
_MAX_INNER = 1 << 11
_INT64_MAX_ROWS = 3  # up to this many rows of a, int64 matmul is faster (measured on 576x1536)


ENCODE_LIMIT = 2.0 ** 62  # |round(x 2^f)| <= 2^62: the range in which dealer truncation is exact


def encode(x: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """Fixed point: round(x * 2^f) as int64 (a data-free input gives an int64 Shape).

    Refuses (CometError) NaN, +-inf and values with |x| 2^f > 2^62, which would wrap to a wrong ring
    element (torch turns them all into -2^63) instead of encoding x.
    """
    if x.is_meta:
        return Shape(x.shape)
    scaled = torch.round(x.to(torch.float64) * (1 << frac_bits))
    if scaled.numel() and not bool((scaled.abs() <= ENCODE_LIMIT).all()):  # NaN compares False too
        from comet_core.errors import CometError

        flat = x.reshape(-1).to(torch.float64)
        bad = ~torch.isfinite(flat)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise CometError(f"cannot encode {flat[i].item()} in fixed point (element {i} of a tensor of shape "
                             f"{tuple(x.shape)}): inputs and weights must be finite")
        i = int(flat.abs().argmax())
        raise CometError(f"cannot encode {flat[i].item():.6g} (element {i} of a tensor of shape {tuple(x.shape)}): "
                         f"fixed point with frac_bits={frac_bits} holds |x| <= 2^{62 - frac_bits} = "
                         f"{ENCODE_LIMIT / 2.0 ** frac_bits:.6g}; rescale the input or lower engine.frac_bits")
    return scaled.to(torch.int64)


def decode(x: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """Signed ring element -> float64 value x / 2^f."""
    return x.to(torch.float64) / float(1 << frac_bits)


def random_ring(shape, generator: "PRG | torch.Generator | None", device) -> torch.Tensor:
    """Uniform elements of Z_2^64 from a keyed stream (prg.PRG); a data-free Shape in cost mode."""
    if torch.device(device).type == "meta":
        return Shape(shape)
    if isinstance(generator, PRG):
        return generator.ring(shape, device)
    lo, hi = -(1 << 63), (1 << 63) - 1  # a torch.Generator (or None: torch's default generator)
    return torch.randint(lo, hi, tuple(shape), generator=generator, dtype=torch.int64, device=device)


def random_bits(shape, bits: int, generator: "PRG | None", device) -> torch.Tensor:
    """Uniform `bits`-bit values in the low bits of int64 words (bits = 64 gives full words)."""
    r = random_ring(shape, generator, device)
    return r if bits >= 64 or r.is_meta else r.bitwise_and_((1 << bits) - 1)


def _limbs(x: torch.Tensor) -> list[torch.Tensor]:
    """Split int64 into 3 balanced limbs (22, 22, 20 bits) as float64: x = l0 + l1*2^22 + l2*2^44."""
    out = []
    t = x + _LIMB_HALF  # low limb = (t mod 2^22) - 2^21, and (x - low) >> 22 == t >> 22
    for i in range(2):
        out.append((t & _LIMB_MASK).sub_(_LIMB_HALF).to(torch.float64))
        t = t.__irshift__(_LIMB_BITS)
        if i == 0:
            t.add_(_LIMB_HALF)
    out.append(t.to(torch.float64))
    return out


def _matmul_shape(a, b) -> tuple:
    """torch.matmul's output shape (1-D operands and batch broadcasting included)."""
    sa, sb = tuple(a.shape), tuple(b.shape)
    if len(sa) == 1 and len(sb) == 1:
        return ()
    if len(sa) == 1:
        return (*sb[:-2], sb[-1])
    if len(sb) == 1:
        return sa[:-1]
    batch = broadcast(sa[:-2], sb[:-2])
    return (*batch, sa[-2], sb[-1])


def ring_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b over Z_2^64, exactly, through float64 BLAS (torch.matmul broadcasting rules).

    int64 matmul has no BLAS path (about 100x slower), so both operands are split into balanced
    22-bit limbs; only the 6 limb pairs whose shift is below 64 are multiplied:
      shift 0: a0 b0;  shift 22: a0 b1 + a1 b0;  shift 44: a0 b2 + a1 b1 + a2 b0.
    Each float64 product is exact while the inner dimension is <= 2^11; longer inner dimensions are
    split into chunks whose int64 results are summed (wrap-around is the ring).
    Cost: 6 float64 matmuls of the same shape (3 calls: a's limbs are stacked along the rows).
    With at most 3 rows in a, torch's own int64 matmul is used instead: limb splitting of b would
    dominate (6x slower for one row).
    """
    if a.is_meta or b.is_meta:
        return Shape(_matmul_shape(a, b))
    if a.device.type == "cpu" and (a.dim() == 1 or a.shape[-2] <= _INT64_MAX_ROWS):
        # a few rows (decode: one token): torch's int64 matmul beats splitting b into limbs
        return torch.matmul(a, b)
    k = a.shape[-1]
    if k > _MAX_INNER:
        out = None
        for s in range(0, k, _MAX_INNER):
            part = ring_matmul(a[..., s : s + _MAX_INNER], b[..., s : s + _MAX_INNER, :])
            out = part if out is None else out + part
        return out
    vec_a = a.dim() == 1
    vec_b = b.dim() == 1
    if vec_a:
        a = a.unsqueeze(0)
    if vec_b:
        b = b.unsqueeze(-1)
    a0, a1, a2 = _limbs(a)
    b0, b1, b2 = _limbs(b)
    m = a.shape[-2]
    # b0 meets all three limbs of a, b1 two of them, b2 one: stack a's limbs along rows.
    p0 = torch.matmul(torch.cat([a0, a1, a2], dim=-2), b0).to(torch.int64)
    p1 = torch.matmul(torch.cat([a0, a1], dim=-2), b1).to(torch.int64)
    p2 = torch.matmul(a0, b2).to(torch.int64)
    s0 = p0[..., :m, :]
    s22 = p0[..., m : 2 * m, :] + p1[..., :m, :]
    s44 = p0[..., 2 * m :, :] + p1[..., m:, :] + p2
    out = s0 + s22 * (1 << 22) + s44 * (1 << 44)
    if vec_a:
        out = out.squeeze(-2)
    if vec_b:
        out = out.squeeze(-1)
    return out


def naive_ring_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Reference: torch's own int64 matmul (slow, exact, wraps). Used by tests."""
    return torch.matmul(a, b)


# ---- bit helpers for binary (XOR) sharing: bits packed in the low bits of int64 words -------------

_EVEN_MASKS = [
    (1, 0x3333333333333333),
    (2, 0x0F0F0F0F0F0F0F0F),
    (4, 0x00FF00FF00FF00FF),
    (8, 0x0000FFFF0000FFFF),
    (16, 0x00000000FFFFFFFF),
]


def even_bits(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Compress the bits at even positions 0, 2, 4, .. of a `bits`-wide word into its low bits/2 bits.

    Linear over XOR, so it applies share-wise to binary shares (a local operation).
    """
    if x.is_meta:
        return x.clone()
    x = x & 0x5555555555555555
    for s, mask in _EVEN_MASKS:
        if s >= bits // 2:
            break
        x.bitwise_or_(x >> s).bitwise_and_(mask)
    return x.bitwise_and_((1 << max(bits // 2, 1)) - 1)


def odd_bits(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Compress the bits at odd positions 1, 3, 5, .. into the low bits/2 bits (logical shift first)."""
    if x.is_meta:
        return x.clone()
    # logical right shift by one: clear the sign bit that an arithmetic shift would smear
    return even_bits((x >> 1).bitwise_and_(0x7FFFFFFFFFFFFFFF), bits)
