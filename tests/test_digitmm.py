"""The few-rows int8 digit kernel (comet_core/mpc/digitmm.py) and the keystream written in place."""

from __future__ import annotations

import pytest
import torch

from comet_core.mpc import digitmm, matmul
from comet_core.mpc.prg import PRG

pytestmark = pytest.mark.skipif(not digitmm.available(), reason="no exact int8 GEMM in this torch build")


@pytest.fixture(autouse=True)
def _limb_kernel(monkeypatch):
    """These tests pin the limb / digit kernels' routes: keep the int64-matmul shortcut out of the way
    (test_ring.py::test_kernel_choice covers it)."""
    monkeypatch.setattr(matmul, "KERNEL", "limbs")
    monkeypatch.setattr(matmul, "USE_FEWROW", "off")   # the numba int64 kernel: test_matmul_entry.py

I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
ALL_MIN_DIGITS = -digitmm._C   # the word whose 8 digits are all -128 (the largest digit products)


def full_range(shape, gen) -> torch.Tensor:
    x = torch.randint(I64_MIN, I64_MAX, tuple(shape), generator=gen, dtype=torch.int64)
    flat = x.view(-1)
    special = torch.tensor([I64_MIN, I64_MAX, -1, 0, 1, ALL_MIN_DIGITS, 127, -128], dtype=torch.int64)
    k = min(flat.numel(), special.numel())
    flat[:k] = special[:k]
    return x


def test_digits_round_trip_and_bounds(gen):
    x = full_range((1000,), gen)
    t = digitmm.to_digits(x)
    assert torch.equal(digitmm.from_digits(t), x)
    d = t.view(torch.int8).view(-1, 8).to(torch.int64)            # digit j of word i at [i, j]
    weights = torch.tensor([1 << (8 * j) for j in range(8)], dtype=torch.int64)
    assert torch.equal((d * weights).sum(-1), x)                  # x = sum_j d_j 256^j (mod 2^64)
    assert int(digitmm.to_digits(torch.tensor([ALL_MIN_DIGITS])).view(torch.int8).min()) == -128


@pytest.mark.parametrize("sa,sb", [((1, 576), (576, 1536)), ((3, 1536), (1536, 576)), ((16, 300), (300, 70)),
                                   ((2, 7), (3, 7, 5)), ((1, 40), (40, 1))])
def test_digit_matmul_equals_int64(sa, sb, gen):
    a, b = full_range(sa, gen), full_range(sb, gen)
    assert torch.equal(digitmm.digit_matmul(a, b), torch.matmul(a, b))


@pytest.mark.parametrize("va,vb", [(ALL_MIN_DIGITS, ALL_MIN_DIGITS), (I64_MIN, I64_MAX), (I64_MAX, I64_MAX)])
def test_extreme_words_at_the_inner_bound(va, vb):
    """The extreme digits summed over MAX_INNER terms are exact; one more term is chunked (exact again)."""
    for k in (digitmm.MAX_INNER, digitmm.MAX_INNER + 1):
        a = torch.full((2, k), va, dtype=torch.int64)
        b = torch.full((k, 3), vb, dtype=torch.int64)
        assert torch.equal(digitmm.digit_matmul(a, b), torch.matmul(a, b)), (va, vb, k)


def test_one_past_the_inner_bound_overflows_without_chunks():
    """Positive control of the bound: all digits -128 over MAX_INNER + 1 terms leave int32 in one GEMM."""
    k = digitmm.MAX_INNER + 1
    a = torch.full((1, k), ALL_MIN_DIGITS, dtype=torch.int64)
    b = torch.full((k, 2), ALL_MIN_DIGITS, dtype=torch.int64)
    bd = digitmm.split_digits(b)
    one = digitmm._combine(torch._int_mm(digitmm._left(a), bd.bytes), 1, 2)
    assert not torch.equal(one, torch.matmul(a, b))
    assert torch.equal(digitmm.digit_matmul(a, b), torch.matmul(a, b))


def test_ring_matmul_routes_few_rows_to_digits(gen, monkeypatch):
    """With the digit kernel on (matmul.USE_DIGITS), up to DIGIT_ROWS rows against a large b take it;
    the result equals the other paths."""
    monkeypatch.setattr(matmul, "USE_DIGITS", True)
    calls = []
    real = digitmm.digit_matmul
    monkeypatch.setattr(digitmm, "digit_matmul", lambda *a, **k: calls.append(1) or real(*a, **k))
    k, n = 200, matmul.DIGIT_MIN_ELEMENTS // 200 + 1
    b = full_range((k, n), gen)
    for rows in (1, matmul.DIGIT_ROWS, matmul.DIGIT_ROWS + 1):
        calls.clear()
        a = full_range((rows, k), gen)
        assert torch.equal(matmul.ring_matmul(a, b), torch.matmul(a, b))
        assert bool(calls) == (rows <= matmul.DIGIT_ROWS), rows
    calls.clear()
    small, a1 = full_range((k, 8), gen), full_range((1, k), gen)   # a small b: the int64 paths
    assert torch.equal(matmul.ring_matmul(a1, small), torch.matmul(a1, small))
    assert not calls


@pytest.mark.parametrize("on", [True, False])
def test_cached_digits_refused_when_stale(gen, on, monkeypatch):
    monkeypatch.setattr(matmul, "USE_DIGITS", on)
    b = full_range((300, 80), gen)
    bd = matmul.split_digits(b)
    a = full_range((2, 300), gen)
    assert torch.equal(matmul.ring_matmul(a, b, b_digits=bd), torch.matmul(a, b))
    with pytest.raises(ValueError, match="split_digits"):
        matmul.ring_matmul(a, b.clone(), b_digits=bd)
    b.add_(1)
    with pytest.raises(ValueError, match="split_digits"):
        matmul.ring_matmul(a, b, b_digits=bd)
    assert matmul.split_digits(torch.empty((4, 4), device="meta")) is None


@pytest.mark.parametrize("n", [1, 2, 3, 131071, 131072, 131073, 131074, 262149])
def test_prg_fill_equals_ring(n):
    """PRG.fill_ writes the same words, and advances the counter alike, as PRG.ring (1 MiB pieces, tails)."""
    p1, p2 = PRG(b"k" * 16), PRG(b"k" * 16)
    out = torch.empty(n, dtype=torch.int64)
    assert torch.equal(p2.fill_(out), p1.ring((n,)))
    assert p1.block == p2.block
    assert torch.equal(p2.fill_(torch.empty(5, dtype=torch.int64)), p1.ring((5,)))
    with pytest.raises(ValueError):
        p2.fill_(torch.empty((4, 4), dtype=torch.int64).t())


def _decode_products(on: bool, monkeypatch) -> tuple[list, list]:
    """Beaver matmuls as decode runs them (fresh masks; a reused embedding-like mask, 1 and 3 rows)."""
    from comet_core.mpc import arith
    from comet_core.mpc.engine import MPC

    monkeypatch.setattr(matmul, "USE_DIGITS", on)
    mpc = MPC(seed=3)
    g = torch.Generator().manual_seed(0)
    w = mpc.register_weight(mpc.share(torch.randn(200, 120, generator=g, dtype=torch.float64) * 0.1,
                                      owner="model_owner"))
    outs = []
    with mpc.inference():
        for rows, reuse in [(1, False), (3, False), (1, True), (3, True), (1, True)]:
            x = mpc.share(torch.randn(rows, 200, generator=g, dtype=torch.float64))
            outs.append(mpc.reveal(arith.matmul(x, w, reuse_mask=reuse), raw=True))
    return outs, mpc.ledger.signature()


def test_matmul_shares_identical_with_and_without_digits(monkeypatch):
    """The digit route in the dealer and in matmul (shared and cached digits) changes no share and no
    ledger row: the revealed ring elements are bit-equal to the int64 paths'."""
    on, led_on = _decode_products(True, monkeypatch)
    off, led_off = _decode_products(False, monkeypatch)
    assert led_on == led_off
    for a, b in zip(on, off):
        assert torch.equal(a, b)
