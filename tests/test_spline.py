"""engine.comparison=fss splines (mpc/spline.py) and the many-threshold comparison under them (fss.ltz_many).

Exact vs plaintext (the table's float64 spline within a few LSB, the function itself within the table's
fit error plus that floor), ledger vs cost formula exactly, which calls take the spline. The view tests
of their openings are in tests/test_security.py (silu_fss, softmax_fss, with the weak-mask control).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from comet_core.comm.ledger import Cost
from comet_core.mpc import dcf, fss, nonlinear as nl, spline
from comet_core.mpc.engine import MPC, EngineConfig

from conftest import LSB, assert_close, quantize
from test_protocols import measure, randn

FSS = EngineConfig(comparison="fss")
FLOOR = 4 * LSB   # the coefficients' rounding (<= 1.5 LSB over a piece) and one truncation (1 LSB)
REFS = {"exp": torch.exp, "sigmoid": torch.sigmoid, "silu": F.silu, "gelu": F.gelu}


@pytest.fixture
def fmpc(engines):
    return engines(FSS, seed=11, mode="exact")


def _inputs(gen, name: str) -> torch.Tensor:
    lo, hi = spline.SPECS[name][1:3]
    t = spline.table(name)
    inside = quantize(lo + (hi - lo) * torch.rand(300, generator=gen, dtype=torch.float64))
    knots = torch.from_numpy(t.knots)
    edges = quantize(torch.cat([knots, knots - LSB, torch.tensor([lo - 1, -100.0, -1e3, 0.0, LSB, -LSB])]))
    if spline.SPECS[name][5] is not None:          # a constant right tail: far above too
        edges = torch.cat([edges, torch.tensor([hi + 1, 100.0, 1e3])])
    x = torch.cat([inside, edges])
    return x.clamp_max(0.0) if name == "exp" else x


def test_ltz_many(fmpc, gen):
    x = torch.cat([randn(gen, 40, scale=3.0), torch.tensor([0.0, -1.0, 2.5, -2.0 ** 40, 2.0 ** 40])])
    t = torch.tensor([-2.0, -1.0, -LSB, 0.0, LSB, 0.25, 2.5, 7.0], dtype=torch.float64)
    enc = torch.round(t * 2 ** 16).to(torch.int64)
    out, cost = measure(fmpc, fss.ltz_many, fmpc.share(x), enc)
    assert out.shape == (x.numel(), t.numel()) and out.frac == 0
    assert cost == fss.ltz_many_cost(fmpc, x.numel()) == fss.ltz_cost(fmpc, x.numel())   # K costs no bytes
    assert cost == Cost(2 * 8 * x.numel(), x.numel() * (2 * 8 + 2 * dcf.key_bytes(63, 1)), 1)
    assert torch.equal(fmpc.reveal(out), (x[:, None] < t[None, :]).to(torch.float64))


def test_ltz_many_by_sub_chunks(monkeypatch, engines, gen):
    monkeypatch.setattr(fss, "CHUNK", 7)          # keys by 7 elements, evaluations by one element's 8 points
    m = engines(FSS, seed=2)
    x = randn(gen, 3, 9, scale=2.0)
    t = torch.linspace(-3, 3, 8, dtype=torch.float64)
    out, cost = measure(m, fss.ltz_many, m.share(x), torch.round(t * 2 ** 16).to(torch.int64))
    assert cost == fss.ltz_many_cost(m, 27) and cost.rounds == 1
    assert torch.equal(m.reveal(out), (x[..., None] < t).to(torch.float64))


@pytest.mark.parametrize("name", sorted(spline.SPECS))
def test_spline_vs_plaintext_and_formula(fmpc, gen, name):
    x = _inputs(gen, name)
    out, cost = measure(fmpc, spline.evaluate, fmpc.share(x), name)
    assert out.frac == fmpc.frac_bits
    assert cost == spline.spline_cost(fmpc, x.numel(), name) and cost.rounds == 4
    got = fmpc.reveal(out)
    assert_close(got, spline.plain(name, x), FLOOR, 0.0, what=f"spline {name} vs its float64 spline", x=x)
    t = spline.table(name)
    assert t.max_err <= spline.SPECS[name][3]
    assert_close(got, REFS[name](x), t.max_err + FLOOR, 0.0, what=f"spline {name} vs the function", x=x)


def test_spline_cost_formula():
    m = MPC(FSS, mode="cost")
    n = 100
    kb = dcf.key_bytes(63, 1)
    cmp = Cost(16 * n, n * (16 + 2 * kb), 1)
    assert spline.spline_cost(m, n, "exp") == cmp + Cost(16 * n, 8 * n, 1) + Cost(64 * n, 16 * n, 1) + \
        Cost(16 * n, 24 * n, 1)
    assert spline.spline_cost(m, n, "silu") == cmp + Cost(64 * n, 16 * n, 1) + Cost(64 * n, 16 * n, 1) + \
        Cost(16 * n, 24 * n, 1)


def test_which_calls_take_the_spline():
    fss_m, circuit = MPC(FSS, mode="cost"), MPC(EngineConfig(), mode="cost")
    k = len(spline.table("silu").knots)
    assert spline.applies(fss_m, spline.BUDGET // k, "silu")
    assert not spline.applies(fss_m, spline.BUDGET // k + 1, "silu")          # prefill sizes keep the recipe
    assert not spline.applies(circuit, 1, "silu")                              # circuit: never
    assert not spline.applies(MPC(EngineConfig(comparison="fss", frac_bits=21), mode="cost"), 1, "silu")
    assert nl.silu_cost(fss_m, 1536) == spline.spline_cost(fss_m, 1536, "silu")
    assert nl.silu_cost(fss_m, 1 << 16).rounds > 4
    assert nl.exp_cost(fss_m, 360) == spline.spline_cost(fss_m, 360, "exp")


def test_decode_sized_callers(fmpc, gen):
    """A decode step's softmax (9 heads x 1 x 40) and SiLU (1 x 1536) through nonlinear.py under fss."""
    s = randn(gen, 9, 1, 40, scale=3.0)
    out, cost = measure(fmpc, nl.softmax, fmpc.share(s))
    assert cost == nl.softmax_cost(fmpc, 9, 40) and cost.rounds == 3 + 4 + (1 + 4) + 2
    assert_close(fmpc.reveal(out), torch.softmax(s, -1), 16 * LSB, 1e-3, what="softmax fss decode")
    a = randn(gen, 1, 1536, scale=4.0)
    out, cost = measure(fmpc, nl.silu, fmpc.share(a))
    assert cost == nl.silu_cost(fmpc, 1536) and cost.rounds == 4
    assert_close(fmpc.reveal(out), F.silu(a), spline.table("silu").max_err + FLOOR, 0.0, what="silu fss decode")


def test_tables_are_on_the_grid_and_deterministic():
    for name in spline.SPECS:
        t = spline.table(name)
        assert (t.knots * 16 == torch.from_numpy(t.knots * 16).round().numpy()).all()
        assert (t.knots[1:] > t.knots[:-1]).all()
        assert len(t.origins) == len(t.coeffs) == len(t.knots) + 1
        if t.relu_tail:
            assert 0.0 in t.knots
    assert math.isclose(spline.table("exp").coeffs[0, 0], 0.0)
