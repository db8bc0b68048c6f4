"""The ring Z_2^64 on torch.int64 and fixed-point encoding (its matrix products: mpc/matmul.py).

Ring elements are torch.int64; two's-complement wrap-around of +, -, * is the ring's arithmetic.
In cost mode, data-free `Shape` objects (is_meta = True) stand in for tensors: every function here
accepts them and returns Shapes.
"""

from __future__ import annotations

import numpy as np
import torch

from comet_core.mpc.prg import PRG
from comet_core.mpc.shape import Shape

RING_BITS = 64
BYTES_PER_ELEMENT = 8

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


# ---- bit helpers for binary (XOR) sharing: bits packed in the low bits of int64 words -------------

_EVEN_MASKS = [
    (1, 0x3333333333333333),
    (2, 0x0F0F0F0F0F0F0F0F),
    (4, 0x00FF00FF00FF00FF),
    (8, 0x0000FFFF0000FFFF),
    (16, 0x00000000FFFFFFFF),
]


def even_bits(x, bits: int):
    """Compress the bits at even positions 0, 2, 4, .. of a `bits`-wide word into its low bits/2 bits.

    Linear over XOR, so it applies share-wise to binary shares (a local operation). A torch tensor or
    an int64 numpy array (the comparison tree's small inputs): the same operations on either.
    """
    if getattr(x, "is_meta", False):
        return x.clone()
    x = x & 0x5555555555555555
    for s, mask in _EVEN_MASKS:
        if s >= bits // 2:
            break
        x |= x >> s
        x &= mask
    x &= (1 << max(bits // 2, 1)) - 1
    return x


def odd_bits(x, bits: int):
    """Compress the bits at odd positions 1, 3, 5, .. into the low bits/2 bits (logical shift first)."""
    if getattr(x, "is_meta", False):
        return x.clone()
    # logical right shift by one: clear the sign bit that an arithmetic shift would smear
    y = x >> 1
    y &= 0x7FFFFFFFFFFFFFFF
    return even_bits(y, bits)


_LEAF_SWAPS = ((7, 0x00AA00AA00AA00AA), (14, 0x0000CCCC0000CCCC), (28, 0x00000000F0F0F0F0),
               (24, 0x00000000FF00FF00))


def leaf_order(x: torch.Tensor) -> torch.Tensor:
    """The comparison tree's leaf order (compare.ltz_bits) of every word: bit 8B + p (byte B, bit p)
    moves to 8 rev3(p) + B, where rev3 reverses the 3 bits of p. That is the 8x8 bit-matrix transpose
    (3 delta swaps, Hacker's Delight 7-3) followed by the byte permutation 0 4 2 6 1 5 3 7 (one delta
    swap: bytes 1 <-> 4, 3 <-> 6). In this order the tree's first three levels pair the two halves of
    each field (32, 16, 8 bits: whole int32 / int16 / int8 units, no bit compaction), and each pair is
    two adjacent blocks of leaves. Bit 63 stays where it is. A bit permutation: linear over XOR, so it
    applies share-wise to binary shares. 24 elementwise operations; the arithmetic right shifts' sign
    bits fall outside every mask. Returns a new tensor (a new int64 numpy array for a numpy input: the
    dealer's small items)."""
    if isinstance(x, np.ndarray):
        x = x.copy()
    elif x.is_meta:
        return x.clone()
    else:
        x = x.clone()
    for s, mask in _LEAF_SWAPS:   # in-place operators: the same operations on tensors and numpy arrays
        t = x >> s
        t ^= x
        t &= mask
        x ^= t
        t <<= s
        x ^= t
    return x
