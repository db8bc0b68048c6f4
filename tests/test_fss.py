"""engine.comparison=fss: the one-round comparisons on dealer-made DCF keys (mpc/fss.py) and their callers.

The DCF itself is tested in tests/test_dcf.py. Exact vs plaintext (values near 0, the ring's extremes, every ring word for the sign), ledger vs cost
formula exactly, cost mode's ledger equal to exact mode's, in both ways of running the parties (sim and
spmd, conftest.py). The view tests of the opening x + r are in tests/test_security.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from comet_core.comm.ledger import Cost
from comet_core.errors import ConfigError
from comet_core.mpc import arith, compare, fss, nonlinear as nl, pairmax, spline
from comet_core.mpc.engine import MPC, EngineConfig

from conftest import LSB, assert_close, quantize
from test_protocols import (ACT_X, EDGE, EXP_ATOL, EXP_LIMIT_RTOL, GELU_ATOL, INV_SQRT_ATOL, INV_SQRT_RTOL,
                            RECIP_ATOL, RECIP_RTOL, SILU_ATOL, SOFTMAX_ATOL, SOFTMAX_RTOL, log_uniform, measure,
                            randn, uniform)

FSS = EngineConfig(comparison="fss")


# ---- the comparisons ----------------------------------------------------------------------------

@pytest.fixture
def fmpc(engines):
    return engines(FSS, seed=7, mode="exact")


def test_ltz_fss(fmpc, gen):
    x = torch.cat([randn(gen, 237, scale=5.0), EDGE])
    out, cost = measure(fmpc, compare.ltz, fmpc.share(x))
    assert out.frac == 0
    assert cost == compare.ltz_cost(fmpc, x.numel()) == fss.ltz_cost(fmpc, x.numel())
    assert cost.rounds == 1 and cost.online_bytes == 2 * 8 * x.numel()
    assert cost.offline_bytes == x.numel() * (2 * 8 + 2 * 1536)
    assert_close(fmpc.reveal(out), (quantize(x) < 0).to(torch.float64), 0.0, what="ltz fss", x=x)


def test_ltz_fss_every_ring_word(fmpc, gen):
    """The sign of any ring word, -2^63, 2^63 - 1, -1, 0, 1 included: no range restriction."""
    k = torch.randint(-(1 << 63), (1 << 63) - 1, (300,), generator=gen, dtype=torch.int64)
    k[:8] = torch.tensor([-(1 << 63), (1 << 63) - 1, -1, 0, 1, -(1 << 62), 1 << 62, 2])
    out = compare.ltz(fmpc.share(k, frac=0))
    assert torch.equal(fmpc.reveal(out), (k < 0).to(torch.float64))


def test_ltz_bits_fss_are_xor_shares(fmpc, gen):
    x = torch.cat([randn(gen, 61, scale=3.0), EDGE])
    bits, cost = measure(fmpc, compare.ltz_bits, fmpc.share(x))
    assert cost == compare.ltz_bits_cost(fmpc, x.numel()) and cost.rounds == 1
    (opened,) = fmpc.open_raw([bits], 1, xor=True)      # a test-only opening of the bits
    assert torch.equal(opened, (quantize(x) < 0).to(torch.int64))


def test_drelu_and_relu_fss(fmpc, gen):
    x = torch.cat([randn(gen, 200, scale=10.0), EDGE, -EDGE])
    d, cost_d = measure(fmpc, compare.drelu, fmpc.share(x))
    assert cost_d == compare.drelu_cost(fmpc, x.numel())
    assert_close(fmpc.reveal(d), (quantize(x) >= 0).to(torch.float64), 0.0, what="drelu fss", x=x)
    r, cost = measure(fmpc, compare.relu, fmpc.share(x))
    assert cost == compare.relu_cost(fmpc, x.numel())
    assert cost == Cost(2 * 8 * x.numel(), x.numel() * (3 * 8 + 2 * 2048), 1)
    assert r.frac == 16
    assert_close(fmpc.reveal(r), quantize(x).clamp_min(0), 0.0, what="relu fss", x=x)


def test_relu_fss_at_the_ring_extremes(fmpc):
    """Integer inputs (frac 0) across the whole ring: relu is exact there too."""
    k = torch.tensor([-(1 << 63), (1 << 63) - 1, -1, 0, 1, (1 << 62) + 5, -(1 << 62) - 5], dtype=torch.int64)
    got = fmpc.reveal(compare.relu(fmpc.share(k, frac=0)), raw=True)
    assert torch.equal(got, k.clamp_min(0))


def test_fss_chunks(monkeypatch, engines, gen):
    """Keys made and evaluated by chunks: the same values, one opening round, the same formula."""
    monkeypatch.setattr(fss, "CHUNK", 37)
    m = engines(FSS, seed=3)
    x = randn(gen, 5, 40, scale=4.0)
    r, cost = measure(m, compare.relu, m.share(x))
    assert cost == compare.relu_cost(m, 200) and cost.rounds == 1
    assert_close(m.reveal(r), x.clamp_min(0), 0.0, what="relu fss in chunks")


def test_fss_seeded_runs_repeat_and_keys_differ_by_seed(gen):
    x = randn(gen, 50, scale=3.0)
    outs = []
    for seed in (1, 1, 2):
        m = MPC(FSS, seed=seed)
        s = compare.relu(m.share(x))
        outs.append(s.data.clone())
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_comparison_setting_validated():
    with pytest.raises(ConfigError, match="engine.comparison must be one of circuit, fss"):
        EngineConfig(comparison="dcf")


def test_circuit_is_the_default_and_unchanged():
    """The default engine keeps the bit-tree comparison (8 rounds, 253 bits each way per element)."""
    m = MPC(EngineConfig(), mode="cost")
    assert EngineConfig().comparison == "circuit"
    assert compare.ltz_cost(m, 64) == Cost(2 * 253 * 8, (64 + 64 + 2 * 62 + 1 + 65) * 8, 8)


# ---- every caller of the comparison -------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 5, 8, 13])
def test_max_along_fss(fmpc, gen, n):
    x = randn(gen, 3, n, scale=10.0)
    x[0, -1] = 2.0 ** 20
    x[1] = -(2.0 ** 20)
    out, cost = measure(fmpc, compare.max_along, fmpc.share(x), -1)
    assert cost == compare.max_along_cost(fmpc, 3, n)
    assert cost.rounds == math.ceil(math.log2(n))           # one round per tournament level (was 9)
    assert_close(fmpc.reveal(out), x.max(-1).values, 0.0, what=f"max_along fss n={n}")


@pytest.mark.parametrize("rows,n", [(1, 2), (3, 7), (2, 64)])
def test_argmax_fss(fmpc, gen, rows, n):
    x = randn(gen, rows, n, scale=3.0)
    if n >= 7:
        x[0, 2] = x[0, n - 1] = 40.0                     # a tie: the lowest index wins
        x[-1, n // 2 + 1] = x[-1, n // 2] - LSB
    out, cost = measure(fmpc, compare.argmax, fmpc.share(x))
    assert cost == compare.argmax_cost(fmpc, rows, n)
    assert cost.rounds == 2 * math.ceil(math.log2(n))       # comparison + selection per level (was 9)
    assert fmpc.reveal(out).tolist() == x.argmax(-1).to(torch.float64).tolist()


def test_pairs_max_and_argmax_fss(fmpc, gen):
    x = randn(gen, 4, 9, scale=3.0)
    x[1, 3] = x[1, 7] = 50.0
    out, cost = measure(fmpc, pairmax.max_pairs, fmpc.share(x))
    assert cost == pairmax.max_pairs_cost(fmpc, 4, 9)
    assert_close(fmpc.reveal(out), x.max(-1, keepdim=True).values, 0.0, what="max_pairs fss")
    idx, cost = measure(fmpc, pairmax.argmax_last, fmpc.share(x))
    assert cost == pairmax.argmax_last_cost(fmpc, 4, 9)
    assert fmpc.reveal(idx).tolist() == x.argmax(-1).to(torch.float64).tolist()


@pytest.mark.parametrize("shape", [(3, 4, 16), (2, 33, 64)])   # exp by its spline; by the fused squares
def test_softmax_fss(fmpc, gen, shape):
    x = randn(gen, *shape, scale=2.0)
    out, cost = measure(fmpc, nl.softmax, fmpc.share(x))
    assert cost == nl.softmax_cost(fmpc, rows=x.numel() // shape[-1], n=shape[-1])
    assert_close(fmpc.reveal(out), torch.softmax(x, -1), SOFTMAX_ATOL, SOFTMAX_RTOL, what="softmax fss")


def test_truncate_square_is_the_truncation_and_its_exact_square(fmpc, gen):
    """t within 1 LSB of x / 2^s, and t^2 the exact square of the same word t (no second opening)."""
    x = torch.cat([uniform(gen, -(2.0 ** 10), 2.0 ** 10, 300),
                   torch.tensor([0.0, 2.0 ** -32, -(2.0 ** -32), 2.0 ** 10, -(2.0 ** 10)], dtype=torch.float64)])
    x = quantize(x, 32)
    (t, t2), cost = measure(fmpc, arith.truncate_square, fmpc.share(x, frac=32), 16)
    assert cost == arith.truncate_square_cost(fmpc, x.numel()) == Cost(16 * x.numel(), 40 * x.numel(), 1)
    assert t.frac == 16 and t2.frac == 32
    got = fmpc.reveal(t)
    assert_close(got, x, LSB, what="truncate_square's t", x=x)
    assert torch.equal(fmpc.reveal(t2), got * got)          # words < 2^52: exact in float64


def test_truncate_square_refuses_local_truncation():
    m = MPC(EngineConfig(comparison="fss", truncation="local"), mode="cost")
    with pytest.raises(ValueError):
        arith.truncate_square(m.share(torch.empty(3, device="meta")), 8)
    assert not nl.fused_squares(m)


def test_exp_fss_squares_on_the_truncations(fmpc, gen):
    """Above the spline's budget exp keeps CrypTen's limit, each square riding on its truncation's opening:
    exp_iterations + 1 rounds and the clamp's, the values of the circuit recipe (within its tolerance)."""
    n = spline.BUDGET // len(spline.table("exp").knots) + 1
    x = torch.cat([uniform(gen, -8.0, 4.0, n - 8),
                   quantize(torch.tensor([0.0, LSB, -LSB, 4.0, -8.0, -16.0, -300.0, -5000.0]))])
    assert not spline.applies(fmpc, n, "exp") and nl.fused_squares(fmpc)
    out, cost = measure(fmpc, nl.exp, fmpc.share(x))
    k = fmpc.fn.exp_iterations
    assert cost == nl.exp_cost(fmpc, n) == (compare.relu_cost(fmpc, n) + k * arith.truncate_square_cost(fmpc, n)
                                            + arith.truncate_cost(fmpc, n))
    assert cost.rounds == 1 + k + 1
    got = fmpc.reveal(out)
    assert_close(got, (1 + x / 2 ** k).clamp_min(0) ** 2 ** k, EXP_ATOL, EXP_LIMIT_RTOL, what="exp fss fused", x=x)
    assert torch.all(got[-2:] == 0)


def test_circuit_exp_keeps_its_beaver_squares():
    m = MPC(EngineConfig(), mode="cost")
    k = m.fn.exp_iterations
    assert not nl.fused_squares(m)
    assert nl.exp_cost(m, 10) == (arith.truncate_cost(m, 10) + compare.relu_cost(m, 10)
                                  + k * arith.square_cost(m, 10))


def test_softmax_fss_12x128x128_within_30_rounds():
    """Issue 27's target: softmax over 12 heads x 128 x 128 in at most 30 rounds under fss (cost mode:
    the same ledger as exact mode, test_exact_and_cost_mode_ledgers_identical_under_fss): the tournament
    max 7, exp 10 (relu clamp, 8 squares on their truncations, the last truncation), the reciprocal 9
    (the minimax guess at 8 per octave, 2 Newton steps), the product 2."""
    m = MPC(FSS, mode="cost")
    out, cost = measure(m, nl.softmax, m.share(torch.empty(12, 128, 128, device="meta")))
    assert cost == nl.softmax_cost(m, 12 * 128, 128)
    assert nl.guess_plan(m, 12 * 128, -1, 7, -1.0, m.fn.reciprocal_nr_iters) == (8, 2)
    assert cost.rounds == 7 + 10 + 9 + 2 <= 30


def test_silu_gelu_fss(fmpc):
    x = quantize(ACT_X)
    for fn, ref, tol, cost_fn in ((nl.silu, F.silu, SILU_ATOL, nl.silu_cost), (nl.gelu, F.gelu, GELU_ATOL, nl.gelu_cost)):
        out, cost = measure(fmpc, fn, fmpc.share(x))
        assert cost == cost_fn(fmpc, x.numel())
        assert_close(fmpc.reveal(out), ref(x), tol, what=f"{fn.__name__} fss", x=x)


# ---- the fine power-of-two guess (comparisons are one round whatever their number) ----------------

@pytest.mark.parametrize("n,m,steps", [(9, 256, 1), (16, 8, 2), (109, 8, 2), (600, 1, 4)])
def test_reciprocal_fss_fine_guess_saves_newton_steps(fmpc, gen, n, m, steps):
    """The finer the guess within GUESS_BUDGET evaluations, the fewer Newton steps (one round for any m)."""
    lo, hi = fmpc.fn.reciprocal_range
    edges = quantize(torch.tensor([2.0 ** lo, 0.1, 1.0, 100.0, 2.0 ** (hi + 1) - 1], dtype=torch.float64))
    x = torch.cat([log_uniform(gen, lo, hi + 1, n - 5).clamp_max(2.0 ** (hi + 1) - 1), edges])
    if n == 9:   # a softmax-sized call: the octaves of its row sums
        lo, hi = -1, 6
        x = torch.cat([log_uniform(gen, lo, hi + 1, 6).clamp_max(2.0 ** (hi + 1) - 1),
                       quantize(torch.tensor([0.5, 1.0, 127.9], dtype=torch.float64))])
    assert nl.guess_plan(fmpc, n, lo, hi, -1.0, fmpc.fn.reciprocal_nr_iters) == (m, steps)
    out, cost = measure(fmpc, nl.reciprocal, fmpc.share(x), (lo, hi))
    mc = arith.mul_cost(fmpc, n, n, n)
    assert cost == nl.reciprocal_cost(fmpc, n, (lo, hi)) == fss.ltz_many_cost(fmpc, n) + steps * (mc + mc)
    assert cost.rounds == 1 + steps * 4                                   # guess, then 2 products per step
    assert_close(fmpc.reveal(out), 1.0 / x, RECIP_ATOL, RECIP_RTOL, what=f"reciprocal fss m={m}", x=x)


def test_inv_sqrt_fss_fine_guess_saves_newton_steps(fmpc, gen):
    lo, hi = fmpc.fn.inv_sqrt_range[0], nl.inv_sqrt_hi(fmpc)
    x = torch.cat([log_uniform(gen, lo, 8, 2).clamp_max(2.0 ** 8 - 1),     # 10 values: 64 per octave fit
                   quantize(torch.tensor([LSB, 0.1, 0.5, 1.0, 16.0], dtype=torch.float64))])
    big = torch.tensor([2.0 ** 12, 2.0 ** 20, 2.0 ** 31], dtype=torch.float64)
    n = x.numel() + big.numel()
    assert nl.guess_plan(fmpc, n, lo, hi, -0.5, fmpc.fn.inv_sqrt_nr_iters) == (64, 1)
    out, cost = measure(fmpc, nl.inv_sqrt, fmpc.share(torch.cat([x, big])))
    assert cost == nl.inv_sqrt_cost(fmpc, n)
    assert cost.rounds == 1 + 1 * 6                                      # guess, then 3 products per step
    got = fmpc.reveal(out)
    assert_close(got[:x.numel()], torch.rsqrt(x), INV_SQRT_ATOL, INV_SQRT_RTOL, what="inv_sqrt fss fine", x=x)
    assert_close(got[x.numel():], torch.rsqrt(big), 2.0 ** -nl.hi_frac(fmpc) * 4, INV_SQRT_RTOL,
                 what="inv_sqrt fss fine, large x", x=big)


def test_circuit_keeps_the_coarse_guess():
    m = MPC(EngineConfig(), mode="cost")
    assert nl.guess_plan(m, 1, -8, 24, -1.0, 4) == (1, 4) and nl.guess_plan(m, 1, -16, 31, -0.5, 3) == (1, 3)


# ---- cost mode ------------------------------------------------------------------------------------

def test_exact_and_cost_mode_ledgers_identical_under_fss(monkeypatch):
    from test_cost_mode import _exact_inputs, _meta, composed

    monkeypatch.setattr(fss, "CHUNK", 50)    # several chunks of keys in some calls
    exact = MPC(FSS, seed=5, mode="exact")
    cost = MPC(FSS, seed=5, mode="cost")
    out_e = composed(exact, _exact_inputs(0))
    out_c = composed(cost, _meta)
    assert len(exact.ledger.rows) > 100
    assert exact.ledger.rows == cost.ledger.rows
    assert exact.ledger.round == cost.ledger.round
    for k in out_e:
        assert out_c[k].is_meta and out_c[k].shape == out_e[k].shape, k
    circuit = MPC(EngineConfig(), seed=5, mode="cost")
    composed(circuit, _meta)
    assert cost.ledger.round < circuit.ledger.round     # norms and reciprocals keep their rounds
