"""Sign tests on a reduced ring (mpc/smallring.py: system.predictor_bits, engine.relu_bits): exact against
plaintext outside the truncation's band, never a wrong sign for x >= 0, ledger == cost formula (exact, party
pairs and cost mode), a value outside the window caught by the range check; under engine.comparison=circuit
and fss (whose DCF keys shrink with the ring). Whole runs: tests/test_comet.py (Comet), test_fused.py (dense)."""

from __future__ import annotations

import pytest
import torch

from comet_core.errors import RangeError
from comet_core.mpc import smallring as S
from comet_core.mpc.engine import MPC, EngineConfig
from comet_core.mpc.shape import Shape
from comet_core.sparse import masks as M

F = 16


def _measure(m, fn, *a):
    mark = m.ledger.mark()
    out = fn(*a)
    return out, m.ledger.cost_since(mark)


def _inputs(bits: int, e: int, shape=(3, 70)) -> tuple[torch.Tensor, int]:
    """Values across the whole window, plus the edge cases: 0, +-1 LSB, the band's ends."""
    s = S.shift_for(F, bits, e)
    g = torch.Generator().manual_seed(bits)
    x = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * (2 ** e - 2 ** (s - F)) * 0.999
    x = torch.round(x * 2 ** F) / 2 ** F
    x[0, :6] = torch.tensor([0.0, 2 ** -F, -2 ** -F, -2 ** (s - F), -2 ** (s - F) - 2 ** -F, 2 ** (s - F)])
    return x, s


@pytest.mark.parametrize("comparison", ["circuit", "fss"])
@pytest.mark.parametrize("bits", [3, 8, 12, 16, 40])
def test_reduced_sign_is_exact_outside_the_band_and_costs_its_formula(engines, bits, comparison):
    m = engines(EngineConfig(comparison=comparison), seed=bits)
    x, s = _inputs(bits, 5)
    b, c = _measure(m, S.ge_zero_bits, m.share(x), bits, s)
    assert c == S.sign_bits_cost(m, x.numel(), bits)
    assert c.rounds == (1 + (bits - 2).bit_length() if comparison == "circuit" else 1)
    (got,) = m.open_raw([b], 1, xor=True)
    got = got.bool().cpu()
    band = (x < 0) & (x >= -2 ** (s - F))
    assert torch.equal(got[~band], (x >= 0)[~band])          # (a)-(c): exact outside the band
    assert bool(got[x >= 0].all())                           # a value >= 0 always tests >= 0


@pytest.mark.parametrize("comparison", ["circuit", "fss"])
@pytest.mark.parametrize("bits", [8, 16])
def test_reduced_relu_error_is_within_the_resolution(engines, bits, comparison):
    m = engines(EngineConfig(comparison=comparison), seed=3)
    x, s = _inputs(bits, 4)
    y, c = _measure(m, S.relu, m.share(x), bits, s)
    assert c == S.relu_cost(m, x.numel(), bits)
    err = (m.reveal(y).cpu() - x.clamp(min=0)).abs().max()
    assert err <= 2 ** (s - F) + 2 ** -F


@pytest.mark.parametrize("comparison", ["circuit", "fss"])
@pytest.mark.parametrize("bits", [8, 12])
def test_cost_mode_books_the_exact_ledger(bits, comparison):
    cfg = EngineConfig(comparison=comparison)
    ex, co = MPC(cfg, seed=1), MPC(cfg, seed=1, mode="cost")
    x, s = _inputs(bits, 7, (2, 33))
    for m, v in ((ex, ex.share(x)), (co, co.share(Shape((2, 33), torch.float32)))):
        _, c = _measure(m, M.active_bits, v, 0.25, bits, 7)
        assert c == M.active_bits_cost(m, 2, 33, bits)
    assert [r[:-1] for r in ex.ledger.rows] == [r[:-1] for r in co.ledger.rows]


@pytest.mark.parametrize("comparison", ["circuit", "fss"])
@pytest.mark.parametrize("T", [1, 3])
def test_reduced_threshold_test_against_plaintext(T, comparison):
    """masks.active_bits on 8 bits: [z > 0.25] (union over T tokens), wrong only within the band below it."""
    m = MPC(EngineConfig(comparison=comparison), seed=5)
    z, s = _inputs(8, 7, (T, 200))
    bits = M.active_bits(m.share(z), 0.25, 8, 7)
    got = M.reveal_bits(m, bits)
    full = (z > 0.25).any(0)
    maybe = ((z <= 0.25) & (z >= 0.25 - 2 ** (s - F))).any(0)
    assert torch.equal(got[~maybe], full[~maybe]) and bool(got[full].all())


def test_a_value_outside_the_window_is_a_range_error():
    m = MPC(EngineConfig(), seed=1)
    x = torch.tensor([1.0, -200.0], dtype=torch.float64)          # beyond 2^7
    with pytest.raises(RangeError, match="predictor_range"):
        M.active_bits(m.share(x.unsqueeze(0)), 0.0, 8, 7)
    M.active_bits(m.share(x.unsqueeze(0) / 4), 0.0, 8, 7)         # inside: no error (positive control)


@pytest.mark.parametrize("bad", [2, 65, "8"])
def test_bad_relu_bits_are_refused(bad):
    with pytest.raises(Exception, match="engine.relu_bits must be an integer in 3..64"):
        EngineConfig(relu_bits=bad)


def test_fss_keys_shrink_with_the_ring():
    m = MPC(EngineConfig(comparison="fss"), seed=1, mode="cost")
    from comet_core.mpc import fss

    full, small = fss.ltz_cost(m, 1000), S.sign_bits_cost(m, 1000, 8)
    assert small.offline_bytes * 6 < full.offline_bytes and small.online_bytes * 8 == full.online_bytes


def _opened_c(m, x, bits):
    """The values of c = t + r that ge_zero_bits opens (its first opening on `bits` bits)."""
    seen = []
    real = m.open_raw

    def spy(tensors, b=64, *a, **k):
        out = real(tensors, b, *a, **k)
        if b == bits and not seen:
            seen.append(out[0].clone())
        return out
    m.open_raw = spy
    S.ge_zero_bits(m.share(x), bits, S.shift_for(F, bits, 7))
    m.open_raw = real
    return seen[0] & ((1 << bits) - 1)


def _chi2_uniform(c, bits) -> float:
    n, cells = c.numel(), 1 << bits
    counts = torch.bincount(c.flatten(), minlength=cells).double()
    return float(((counts - n / cells) ** 2 / (n / cells)).sum())


@pytest.mark.parametrize("weak", [False, True])
def test_opened_value_is_uniform_whatever_x_with_positive_control(weak, monkeypatch):
    """c = t + r on Z_2^8 looks uniform (chi-square over 256 cells, 4096 draws) for x = 0 and for x = 3;
    positive control: a dealer whose r is 0 opens t itself, which the check catches."""
    m = MPC(EngineConfig(), seed=11)
    if weak:
        real = m.dealer.ring_compare_mask
        monkeypatch.setattr(m.dealer, "ring_compare_mask",
                            lambda shape, bits: tuple(torch.zeros_like(v) for v in real(shape, bits)))
    stats = [_chi2_uniform(_opened_c(m, torch.full((4096,), v, dtype=torch.float64), 8), 8) for v in (0.0, 3.0)]
    limit = 255 + 6 * (2 * 255) ** 0.5          # mean + 6 sd of chi-square with 255 degrees of freedom
    assert all(s < limit for s in stats) != weak, stats


def test_plaintext_model_draws_the_band_as_the_protocol_does(engines):
    """smallring.plain_ge_zero (the accuracy side of system.predictor_bits) against ge_zero_bits: equal
    outside the band; inside it both take a value x = -2^(s-f) (1 - q) active with probability q."""
    bits, e, n = 8, 7, 3000
    m = engines(EngineConfig(), seed=5)
    s = S.shift_for(F, bits, e)
    qs = (0.25, 0.5, 0.75)
    x = torch.cat([torch.full((n,), -(2.0 ** (s - F)) * (1 - q), dtype=torch.float64) for q in qs]
                  + [_inputs(bits, e, (1, 500))[0][0]])
    (mpc_bits,) = m.open_raw([S.ge_zero_bits(m.share(x), bits, s)], 1, xor=True)
    mpc_bits = mpc_bits.bool().cpu()
    plain = S.plain_ge_zero(x, bits, F, e, torch.Generator().manual_seed(0))
    band = (x < 0) & (x > -(2.0 ** (s - F)))
    assert torch.equal(plain[~band], mpc_bits[~band]) and torch.equal(plain[~band], (x >= 0)[~band])
    for i, q in enumerate(qs):
        sl = slice(i * n, (i + 1) * n)
        assert abs(float(mpc_bits[sl].double().mean()) - q) < 0.04 and abs(float(plain[sl].double().mean()) - q) < 0.04
    assert torch.equal(S.plain_ge_zero(x, 64, F, e), x >= 0)
    assert not S.outside_window(x, bits, F, e).any()
    assert S.outside_window(torch.tensor([2.0 ** e, -2.0 ** e - 1]), bits, F, e).all()


@pytest.mark.parametrize("n", [1, 63, 64, 65, 200])
def test_pack_bits_is_unpack_bits_inverse(n):
    """The reduced-ring AND rounds pack their 1-bit values 64 per word (compare._pack_bits) and unpack the
    results (compare._unpack_bits): the two agree on the layout, bit 63 included."""
    from comet_core.mpc import compare

    v = torch.randint(0, 2, (2, n), generator=torch.Generator().manual_seed(n))
    w = compare._pack_bits(v)
    assert w.shape == (2, -(-n // 64)) and torch.equal(compare._unpack_bits(w, n), v)
    if n >= 64:
        assert bool(((w[:, 0] < 0) == (v[:, 63] == 1)).all())   # element 63 is the sign bit of word 0
