"""The ring Z_2^64: the exact 5-GEMM limb kernel (and the old 6-GEMM one) against torch's int64 matmul at
the chunk boundaries, the float64 bound (with a positive control that breaks one past it), extreme words,
decode rows and cached limbs; fixed-point encoding; the bit-compaction helpers against a Python reference."""

from __future__ import annotations

import pytest
import torch

from comet_core.errors import CometError
from comet_core.mpc import matmul, ring, ringmm


@pytest.fixture(autouse=True)
def _limb_kernel(request, monkeypatch):
    """The tests below pin the limb kernel (its bounds, chunks, caches): keep the int64-matmul shortcut out
    of the way, except in the tests of the choice itself."""
    if "kernel_choice" not in request.node.name:
        monkeypatch.setattr(matmul, "KERNEL", "limbs")
        monkeypatch.setattr(matmul, "USE_FEWROW", "off")   # and the numba int64 kernel (test_matmul_entry.py)

I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1


def full_range(shape, gen) -> torch.Tensor:
    """Uniform int64 over the whole ring, with the extreme words planted in the first positions."""
    x = torch.randint(I64_MIN, I64_MAX, tuple(shape), generator=gen, dtype=torch.int64)
    flat = x.view(-1)
    special = torch.tensor([I64_MIN, I64_MAX, -1, 0, 1, -(1 << 21), (1 << 21) - 1, 1 << 62], dtype=torch.int64)
    k = min(flat.numel(), special.numel())
    flat[:k] = special[:k]
    return x


C = ringmm.CHUNK  # 455: the exactness bound of the 5-GEMM kernel's inner chunks

MATMUL_SHAPES = [
    ((1, 1), (1, 1)),
    ((5, 7), (7, 3)),
    ((16, 64), (64, 9)),
    ((6, 1), (1, 5)),                # inner dimension 1
    ((3, 4, 5), (3, 5, 6)),          # batched
    ((3, 4, 5), (5, 6)),             # batched x matrix (broadcast; folded into rows)
    ((4, 5), (2, 5, 6)),             # matrix x batched (broadcast)
    ((2, 1, 4, 5), (3, 5, 2)),       # 4-D broadcast of batch dims
    ((2, 1, 4, 5), (1, 3, 5, 2)),    # broadcast on both sides
    ((7,), (7, 3)),                  # vector x matrix
    ((3, 7), (7,)),                  # matrix x vector
    ((7,), (7,)),                    # dot product
    ((2, 3, 7), (7,)),               # batched x vector
    ((7,), (2, 7, 3)),               # vector x batched
    ((4, C), (C, 3)),                # exactly one full chunk
    ((4, C + 1), (C + 1, 3)),        # one element past the chunk: 2 chunks, zero-padded
    ((4, 2 * C), (2 * C, 3)),        # two full chunks
    ((4, 2 * C + 1), (2 * C + 1, 2)),  # 3 chunks, padded
    ((3, 2049), (2049, 2)),          # the old kernel's chunk boundary (2^11) + 1
    ((2, 5000), (5000, 3)),          # several chunks (8 x 625, no padding)
    ((2, 2, 4100), (2, 4100, 2)),    # batched and chunked
    ((12, 16, 64), (12, 64, 16)),    # attention-like batch
]
# decode: rows 1..3 take the int64 paths on CPU, 4 the limb kernel; batched operands as the engine
# builds them (e @ [f + b0, b1], [a0, a1] @ f)
DECODE_SHAPES = [((r, 600), (600, 70)) for r in (1, 2, 3, 4)] + [
    ((600,), (600, 70)),
    ((1, 600), (2, 600, 70)),
    ((2, 1, 600), (600, 70)),
    ((2, 3, 600), (600, 70)),
    ((1, 2 * C + 5), (2 * C + 5, 9)),
]
KERNELS = {"5gemm": matmul.ring_matmul, "6gemm": ringmm.ring_matmul_6gemm}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES + DECODE_SHAPES,
                         ids=[f"{a}@{b}" for a, b in MATMUL_SHAPES + DECODE_SHAPES])
def test_ring_matmul_equals_naive_int64(sa, sb, kernel, gen):
    a, b = full_range(sa, gen), full_range(sb, gen)
    got = KERNELS[kernel](a, b)
    ref = matmul.naive_ring_matmul(a, b)
    assert got.dtype == torch.int64
    assert got.shape == ref.shape
    assert torch.equal(got, ref)


@pytest.mark.parametrize("sa,sb", [((4, C + 1), (C + 1, 3)), ((3, 4, 5), (3, 5, 6)), ((2, 1, 600), (600, 70))])
def test_limb_kernel_on_few_rows_and_noncontiguous(sa, sb, gen):
    """The float64 limb path itself (forced for 1-3 rows, as on CUDA) and non-contiguous operands."""
    a, b = full_range(sa, gen), full_range(sb, gen)
    la = ringmm.split_left(a if a.dim() > 1 else a.unsqueeze(0))
    got = ringmm.matmul_limbs(la, ringmm.split_right(b))
    assert torch.equal(got.reshape(matmul.naive_ring_matmul(a, b).shape), matmul.naive_ring_matmul(a, b))
    at = full_range(sa[:-2] + sa[-1:] + sa[-2:-1], gen).transpose(-1, -2)   # strided views
    bt = full_range(sb[:-2] + sb[-1:] + sb[-2:-1], gen).transpose(-1, -2)
    assert torch.equal(matmul.ring_matmul(at, bt), matmul.naive_ring_matmul(at, bt))


def _word(x0: int, x1: int, x2: int) -> int:
    """The signed int64 x0 + x1 * 2^21 + x2 * 2^43 (mod 2^64)."""
    v = (x0 + (x1 << 21) + (x2 << 43)) % (1 << 64)
    return v - (1 << 64) if v >= 1 << 63 else v


def _limbs_of(w: int, side: str) -> list[float]:
    """[x0, x1, x2, xs] of one word as the left (balanced) or right (unsigned low limbs) split makes them."""
    x = torch.tensor([[w]], dtype=torch.int64)
    outs = [torch.empty((1, 1), dtype=torch.float64) for _ in range(4)]
    (ringmm._split if side == "left" else ringmm._split_unsigned)(x, *outs)
    return [float(t) for t in outs]


@pytest.mark.parametrize("side", ["left", "right"])
def test_split_limbs_are_bounded_and_exact(side, gen):
    x = full_range((4000,), gen)
    l0, l1, l2, ls = (torch.empty(x.shape, dtype=torch.float64) for _ in range(4))
    (ringmm._split if side == "left" else ringmm._split_unsigned)(x, l0, l1, l2, ls)
    lo0, lo1 = (-(2 ** 20), -(2 ** 21)) if side == "left" else (0, 0)
    assert float(l0.min()) >= lo0 and float(l0.max()) < lo0 + 2 ** 21
    assert float(l1.min()) >= lo1 and float(l1.max()) < lo1 + 2 ** 22
    assert float(l2.min()) >= -(2 ** 20) and float(l2.max()) <= 2 ** 20
    assert torch.equal(ls, l0 + l1)
    back = l0.to(torch.int64) + l1.to(torch.int64) * (1 << 21) + l2.to(torch.int64) * (1 << 43)
    assert torch.equal(back, x)


def test_split_reaches_the_extreme_sum_limbs():
    """The Karatsuba sum limbs span [-3*2^20, 3*2^20 - 2] (left) and [0, 3*2^21 - 2] (right)."""
    assert _limbs_of(_word(-(2 ** 20), -(2 ** 21), 0), "left")[3] == -3 * 2 ** 20
    assert _limbs_of(_word(2 ** 20 - 1, 2 ** 21 - 1, 0), "left")[3] == 3 * 2 ** 20 - 2
    assert _limbs_of(_word(2 ** 21 - 1, 2 ** 22 - 1, 0), "right")[3] == 3 * 2 ** 21 - 2
    assert _limbs_of(I64_MIN, "left")[:3] == [0.0, 0.0, -(2.0 ** 20)]
    assert _limbs_of(I64_MIN, "right")[:3] == [0.0, 0.0, -(2.0 ** 20)]
    assert _limbs_of(-1, "right")[:3] == [2.0 ** 21 - 1, 2.0 ** 22 - 1, -1.0]


# the largest odd Karatsuba terms: as = -(3*2^20 - 1) (left), bs = 3*2^21 - 3 (right); EVEN_A has the
# extreme as = -3*2^20 (its products are even)
WORST_A = _word(-(2 ** 20) + 1, -(2 ** 21), -(2 ** 20))
EVEN_A = _word(-(2 ** 20), -(2 ** 21), -(2 ** 20))
WORST_B = _word(2 ** 21 - 1, 2 ** 22 - 2, -(2 ** 20))


def _bound_operands(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """5 x k and k x 3 operands whose every sum-limb product is within 2^22 of the bound 9 * 2^41; one
    even term makes the k-term sum odd (a sum above 2^53 then cannot be a float64)."""
    assert _limbs_of(WORST_A, "left")[3] == -(3 * 2 ** 20 - 1)
    assert _limbs_of(EVEN_A, "left")[3] == -3 * 2 ** 20
    assert _limbs_of(WORST_B, "right")[3] == 3 * 2 ** 21 - 3
    a = torch.full((5, k), WORST_A, dtype=torch.int64)          # 5 rows: the limb kernel on CPU too
    a[:, 0] = EVEN_A
    b = torch.full((k, 3), WORST_B, dtype=torch.int64)
    return a, b


@pytest.mark.parametrize("k", [C, C + 1, 2 * C, 2 * C + 1])
def test_exact_at_the_float64_bound(k):
    """Every sum limb at its largest magnitude over whole chunks: partial sums reach ~455 * 9 * 2^41."""
    a, b = _bound_operands(k)
    assert torch.equal(matmul.ring_matmul(a, b), matmul.naive_ring_matmul(a, b))
    a[1] = I64_MIN
    b[:, 2] = I64_MAX
    assert torch.equal(matmul.ring_matmul(a, b), matmul.naive_ring_matmul(a, b))


def test_chunk_one_past_the_bound_breaks():
    """Positive control: a chunk of 456 (one past the proven bound) really loses exactness, so the
    bound tests above can fail: 455 odd terms and one even term, each ~9 * 2^41, sum to an odd
    integer above 2^53."""
    a, b = _bound_operands(C + 1)
    ref = matmul.naive_ring_matmul(a, b)
    assert not torch.equal(matmul.ring_matmul(a, b, chunk=C + 1), ref)
    assert torch.equal(matmul.ring_matmul(a, b, chunk=C), ref)


@pytest.mark.parametrize("k", [1, C, C + 1, 3000])
@pytest.mark.parametrize("rows", [1, 3, 5])
def test_extreme_words(k, rows):
    """All -2^63, all 2^63 - 1 and their mix, through every path (int64 rows, limbs, chunks)."""
    for va, vb in [(I64_MIN, I64_MIN), (I64_MAX, I64_MAX), (I64_MIN, I64_MAX), (-1, I64_MIN)]:
        a = torch.full((rows, k), va, dtype=torch.int64)
        b = torch.full((k, 4), vb, dtype=torch.int64)
        assert torch.equal(matmul.ring_matmul(a, b), matmul.naive_ring_matmul(a, b)), (va, vb)


def test_chunking_covers_and_divides():
    for k in [1, 2, C - 1, C, C + 1, 2 * C, 2 * C + 1, 768, 1536, 2048, 3072, 5000, 7919, 100003]:
        c, kc = ringmm.chunking(k)
        assert kc <= C and c * kc >= k and c == max(1, -(-k // kc)), k
        if k in (768, 1536, 2048, 3072, 5000):
            assert c * kc == k, k                   # a divisor exists: no zero padding
    assert ringmm.chunking(7919) == (18, 440)       # a prime: padded to 18 x 440


def test_cached_right_limbs(gen):
    """split_right once, multiply by several left operands (the weight-mask reuse); stale limbs refused."""
    b = full_range((C + 7, 40), gen)
    lb = matmul.split_right(b)
    for shape in [(5, C + 7), (2, 3, C + 7), (C + 7,), (1, C + 7)]:
        a = full_range(shape, gen)
        assert torch.equal(matmul.ring_matmul(a, b, b_limbs=lb), matmul.naive_ring_matmul(a, b))
    with pytest.raises(ValueError, match="split_right"):
        matmul.ring_matmul(full_range((5, C + 7), gen), b.clone(), b_limbs=lb)
    b.add_(1)                                       # in-place change after the split
    with pytest.raises(ValueError, match="split_right"):
        matmul.ring_matmul(full_range((5, C + 7), gen), b, b_limbs=lb)
    assert matmul.split_right(torch.empty((4, 4), device="meta")) is None


def test_workspace_reuse_across_shapes(gen):
    """Workspaces grow and are re-carved for every shape; results stay exact; release frees them."""
    ringmm.release_workspace()
    shapes = [((64, 700), (700, 300)), ((5, 20), (20, 3)), ((2, 8, 1000), (2, 1000, 30)), ((64, 700), (700, 300))]
    for sa, sb in shapes:
        a, b = full_range(sa, gen), full_range(sb, gen)
        assert torch.equal(matmul.ring_matmul(a, b), matmul.naive_ring_matmul(a, b))
    assert ringmm.workspace_bytes() > 48 * 700 * 300
    ringmm.release_workspace()
    assert ringmm.workspace_bytes() == 0


def test_bad_operands():
    with pytest.raises(TypeError):
        matmul.ring_matmul(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="cannot be multiplied"):
        matmul.ring_matmul(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 2, dtype=torch.int64))
    assert torch.equal(matmul.ring_matmul(torch.zeros(2, 0, dtype=torch.int64), torch.zeros(0, 3, dtype=torch.int64)),
                       torch.zeros(2, 3, dtype=torch.int64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("sa,sb", [((4, C), (C, 3)), ((4, C + 1), (C + 1, 3)), ((1, 2 * C + 1), (2 * C + 1, 5)),
                                   ((3, 4, 5), (3, 5, 6)), ((7,), (7,)), ((2, 1, 600), (600, 70))])
def test_ring_matmul_cuda_equals_cpu(sa, sb, gen):
    a, b = full_range(sa, gen), full_range(sb, gen)
    got = matmul.ring_matmul(a.cuda(), b.cuda())
    assert got.is_cuda and torch.equal(got.cpu(), matmul.naive_ring_matmul(a, b))
    a, b = _bound_operands(C)
    assert torch.equal(matmul.ring_matmul(a.cuda(), b.cuda()).cpu(), matmul.naive_ring_matmul(a, b))


def _worst_limbs22_word() -> int:
    """A word whose two low balanced 22-bit limbs are both -2^21 (the old kernel's largest |limb|)."""
    v = (-(1 << 21) - (1 << 43)) % (1 << 64)
    return v - (1 << 64) if v >= 1 << 63 else v


@pytest.mark.parametrize("k", [2048, 4096])
def test_old_kernel_exact_at_its_float64_limit(k):
    """The baseline kernel (ring_matmul_6gemm): limb products at 2^42 over a full 2^11 chunk reach 2^53."""
    w = _worst_limbs22_word()
    assert [float(t) for t in ringmm._limbs22(torch.tensor([w]))][:2] == [-(2.0 ** 21)] * 2
    a = torch.full((4, k), w, dtype=torch.int64)
    b = torch.full((k, 3), w, dtype=torch.int64)
    assert torch.equal(ringmm.ring_matmul_6gemm(a, b), matmul.naive_ring_matmul(a, b))


def test_ring_matmul_meta_shape():
    a = torch.empty((2048, 4096), dtype=torch.int64, device="meta")
    b = torch.empty((4096, 4096), dtype=torch.int64, device="meta")
    out = matmul.ring_matmul(a, b)
    assert out.is_meta and out.shape == (2048, 4096) and out.dtype == torch.int64
    assert matmul.ring_matmul(torch.empty((3, 5, 7), device="meta"), torch.empty((7,), device="meta")).shape == (3, 5)


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


@pytest.mark.parametrize("choice", ["int64", "limbs", "auto"])
def test_kernel_choice_is_exact(choice, monkeypatch, gen):
    """Every CPU kernel choice gives the naive product, bit for bit (auto times both once per process)."""
    monkeypatch.setattr(matmul, "KERNEL", choice)
    for sa, sb in [((5, 700), (700, 9)), ((2, 3, 40), (2, 40, 6)), ((1, 33), (33, 8)), ((64, 300), (300,))]:
        a, b = full_range(sa, gen), full_range(sb, gen)
        assert torch.equal(matmul.ring_matmul(a, b), matmul.naive_ring_matmul(a, b))
    assert matmul.kernel_in_use() in ("int64", "limbs")
    if choice != "auto":
        assert matmul.kernel_in_use() == choice


def test_kernel_choice_refuses_unknown(monkeypatch):
    monkeypatch.setattr(matmul, "KERNEL", "fast")
    with pytest.raises(CometError, match="COMET_RING_KERNEL must be one of auto, int64, limbs"):
        matmul.int64_gemm_faster()


def test_kernel_record_names_the_setting_without_timing(monkeypatch):
    monkeypatch.setattr(matmul, "KERNEL", "auto")
    monkeypatch.setattr(matmul, "_INT64_FASTER", None)
    assert matmul.kernel_record() == "not used"      # nothing timed yet
    assert matmul._INT64_FASTER is None
    monkeypatch.setattr(matmul, "_INT64_FASTER", True)
    assert matmul.kernel_record() == "int64"
    monkeypatch.setattr(matmul, "KERNEL", "limbs")
    assert matmul.kernel_record() == "limbs"
