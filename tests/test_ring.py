"""The ring Z_2^64: the fast limb-split matmul against torch's int64 matmul (exactly), fixed-point
encoding, and the bit-compaction helpers of the comparison protocol against a Python reference."""

from __future__ import annotations

import pytest
import torch

from comet_core.mpc import ring

I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1


def full_range(shape, gen) -> torch.Tensor:
    """Uniform int64 over the whole ring, with the extreme words planted in the first positions."""
    x = torch.randint(I64_MIN, I64_MAX, tuple(shape), generator=gen, dtype=torch.int64)
    flat = x.view(-1)
    special = torch.tensor([I64_MIN, I64_MAX, -1, 0, 1, -(1 << 21), (1 << 21) - 1, 1 << 62], dtype=torch.int64)
    k = min(flat.numel(), special.numel())
    flat[:k] = special[:k]
    return x


MATMUL_SHAPES = [
    ((1, 1), (1, 1)),
    ((5, 7), (7, 3)),
    ((16, 64), (64, 9)),
    ((3, 4, 5), (3, 5, 6)),          # batched
    ((3, 4, 5), (5, 6)),             # batched x matrix (broadcast)
    ((4, 5), (2, 5, 6)),             # matrix x batched (broadcast)
    ((2, 1, 4, 5), (3, 5, 2)),       # 4-D broadcast of batch dims
    ((7,), (7, 3)),                  # vector x matrix
    ((3, 7), (7,)),                  # matrix x vector
    ((7,), (7,)),                    # dot product
    ((2, 3, 7), (7,)),               # batched x vector
    ((3, 2049), (2049, 2)),          # inner dim just above the 2^11 chunk size
    ((2, 5000), (5000, 3)),          # several chunks, last one partial
    ((2, 2, 4100), (2, 4100, 2)),    # batched and chunked
]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES, ids=[f"{a}@{b}" for a, b in MATMUL_SHAPES])
def test_ring_matmul_equals_naive_int64(sa, sb, gen):
    a, b = full_range(sa, gen), full_range(sb, gen)
    got = ring.ring_matmul(a, b)
    ref = ring.naive_ring_matmul(a, b)
    assert got.dtype == torch.int64
    assert got.shape == ref.shape
    assert torch.equal(got, ref)


def _worst_limbs_word() -> int:
    """A word whose two low balanced limbs are both -2^21 (the largest |limb|), as a signed int64."""
    v = (-(1 << 21) - (1 << 43)) % (1 << 64)
    return v - (1 << 64) if v >= 1 << 63 else v


@pytest.mark.parametrize("k", [2048, 4096])
def test_ring_matmul_exact_at_float64_limit(k):
    """Every limb product at its maximum 2^42 summed over a full 2^11 chunk reaches 2^53 exactly."""
    w = _worst_limbs_word()
    assert [float(t) for t in ring._limbs(torch.tensor([w]))][:2] == [-(2.0 ** 21)] * 2
    a = torch.full((2, k), w, dtype=torch.int64)
    b = torch.full((k, 3), w, dtype=torch.int64)
    assert torch.equal(ring.ring_matmul(a, b), ring.naive_ring_matmul(a, b))
    a[1] = I64_MIN
    b[:, 2] = I64_MAX
    assert torch.equal(ring.ring_matmul(a, b), ring.naive_ring_matmul(a, b))


def test_ring_matmul_meta_shape():
    a = torch.empty((2048, 4096), dtype=torch.int64, device="meta")
    b = torch.empty((4096, 4096), dtype=torch.int64, device="meta")
    out = ring.ring_matmul(a, b)
    assert out.is_meta and out.shape == (2048, 4096) and out.dtype == torch.int64
    assert ring.ring_matmul(torch.empty((3, 5, 7), device="meta"), torch.empty((7,), device="meta")).shape == (3, 5)


# ---- fixed point ------------------------------------------------------------------------------------

@pytest.mark.parametrize("frac_bits", [8, 16, 24])
def test_encode_decode_round_trip(frac_bits, gen):
    scale = 2.0 ** frac_bits
    x = torch.cat([torch.randn(1000, generator=gen, dtype=torch.float64) * 100,
                   torch.tensor([0.0, -0.0, 1.0, -1.0, 2.0 ** 20, -(2.0 ** 20), 2.0 ** 30, -(2.0 ** 30)],
                                dtype=torch.float64)])
    enc = ring.encode(x, frac_bits)
    assert enc.dtype == torch.int64
    # rounding to nearest: at most half an LSB of error
    assert (ring.decode(enc, frac_bits) - x).abs().max().item() <= 0.5 / scale
    # values on the grid survive exactly, including negative ones
    grid = torch.round(x * scale) / scale
    assert torch.equal(ring.decode(ring.encode(grid, frac_bits), frac_bits), grid)
    assert torch.equal(ring.encode(ring.decode(enc, frac_bits), frac_bits), enc)


def test_encode_rounds_to_nearest():
    lsb = 2.0 ** -16
    x = torch.tensor([0.4 * lsb, 0.6 * lsb, -0.4 * lsb, -0.6 * lsb, 1.4 * lsb, -1.6 * lsb], dtype=torch.float64)
    assert ring.encode(x, 16).tolist() == [0, 1, 0, -1, 1, -2]
    assert ring.encode(torch.tensor([-3.25]), 16).item() == -3.25 * 2 ** 16


def test_encode_meta():
    enc = ring.encode(torch.empty((3, 4), device="meta"), 16)
    assert enc.is_meta and enc.dtype == torch.int64 and enc.shape == (3, 4)


# ---- bit helpers -------------------------------------------------------------------------------------

def _ref_gather(v: int, bits: int, offset: int) -> int:
    """Bits offset, offset+2, .. (< bits) of the unsigned word v, packed into the low bits/2 bits."""
    u = v % (1 << 64)
    return sum(((u >> (offset + 2 * i)) & 1) << i for i in range(max(bits // 2, 1)) if offset + 2 * i < 64)


@pytest.mark.parametrize("bits", [2, 4, 8, 16, 32, 64])
def test_even_odd_bits_vs_python(bits, gen):
    # full 64-bit words: for bits < 64 the bits above `bits` are garbage that must not leak down
    x = full_range((300,), gen)
    even = ring.even_bits(x, bits).tolist()
    odd = ring.odd_bits(x, bits).tolist()
    for v, e, o in zip(x.tolist(), even, odd):
        assert e == _ref_gather(v, bits, 0), (v, bits)
        assert o == _ref_gather(v, bits, 1), (v, bits)


def test_even_odd_bits_linear_over_xor(gen):
    """Share-wise application is valid: f(a ^ b) == f(a) ^ f(b)."""
    a, b = full_range((200,), gen), full_range((200,), gen)
    for f in (ring.even_bits, ring.odd_bits):
        assert torch.equal(f(a ^ b, 64), f(a, 64) ^ f(b, 64))


def test_random_bits_range(gen):
    r = ring.random_bits((10000,), 5, gen, "cpu")
    assert int(r.min()) >= 0 and int(r.max()) <= 31
    full = ring.random_bits((10000,), 64, gen, "cpu")
    assert bool((full < 0).any()) and bool((full > 0).any())
