"""The single-party (SPMD) path: two party threads give exactly the simulation's outputs and ledger.

This is the contract the TCP transport relies on: for every protocol of the engine, running P0 and P1
as separate engines (each holding only its own shares, over an in-memory link, with a simulated dealer
and client) reveals the same ring elements and books the same ledger rows as the one-process run.
"""

from __future__ import annotations

import time

import pytest
import torch

from comet_core.comm.channel import PeerError
from comet_core.mpc import approx, arith, compare, ideal, nonlinear as nl, pairmax
from comet_core.mpc.engine import MPC, EngineConfig
from comet_core.mpc.parties import run_pair
from comet_core.mpc.shuffle import Permutation, permute
from comet_core.sparse.masks import active_bits, reveal_bits
from comet_core.systems import fused
from tests.helpers_load import scaled

g = torch.Generator().manual_seed(5)
X = torch.randn(6, 16, generator=g, dtype=torch.float64) * 2
Y = torch.randn(16, 5, generator=g, dtype=torch.float64)
POS = torch.rand(6, 16, generator=g, dtype=torch.float64) * 50 + 0.1
CAUSAL = torch.tril(torch.ones(6, 6, dtype=torch.int64))

PROGRAMS = {
    "add_public": lambda m: m.share(X).add_public(torch.arange(16.0)) - m.share(X).mul_int(3),
    "mul": lambda m: arith.mul(m.share(X), m.share(X[:, :1])),
    "square": lambda m: arith.square(m.share(X)),
    "matmul": lambda m: arith.matmul(m.share(X), m.share(Y, owner="model_owner")),
    "matmul_reuse": lambda m: _reuse(m),
    "matmul_slice_reuse": lambda m: _reuse(m, select=True),
    "permute": lambda m: permute(m.share(X), -1, Permutation(m, 16)),          # Comet's oblivious shuffle
    "comet_reveal": lambda m: m.share(X).mul_int(                              # Comet's mask reveal (union of rows)
        reveal_bits(m, active_bits(m.share(X), 0.3)).long()),
    "mul_public": lambda m: arith.mul_public(m.share(X), -1.7),
    "matmul_public": lambda m: arith.matmul_public(m.share(X), Y),
    "ltz": lambda m: compare.ltz(m.share(X)),
    "relu": lambda m: compare.relu(m.share(X)),
    "select": lambda m: compare.select(m.share((X > 0).long(), frac=0), m.share(X), m.share(-X)),
    "max_along": lambda m: compare.max_along(m.share(X), -1),
    "max_pairs": lambda m: pairmax.max_pairs(m.share(X)),                       # all pairs in one tree
    "argmax_last": lambda m: pairmax.argmax_last(m.share(X)),
    "rope_scale": lambda m: fused.rope_scale([(m.share(X[:, :8]), torch.arange(6), 0.5)], 8, 10000.0)[0],
    "exp": lambda m: nl.exp(m.share(X)),
    "reciprocal": lambda m: nl.reciprocal(m.share(POS)),
    "inv_sqrt": lambda m: nl.inv_sqrt(m.share(POS)),
    "softmax_causal": lambda m: nl.softmax(m.share(X[:, :6]), -1, CAUSAL),    # short rows: the all-pairs max
    "layernorm": lambda m: nl.layernorm(m.share(X), m.share(torch.ones(16)), m.share(torch.zeros(16))),
    "rmsnorm": lambda m: nl.rmsnorm(m.share(X), torch.ones(16)),
    "sigmoid": lambda m: nl.sigmoid(m.share(X)),
    "silu": lambda m: nl.silu(m.share(X)),
    "gelu": lambda m: nl.gelu(m.share(X)),
    # the baselines' approximations (mpc/approx.py) and ideal functionalities (mpc/ideal.py)
    "quad": lambda m: approx.quad(m.share(X)),
    "fourier_gelu": lambda m: approx.fourier_gelu(m.share(X)),
    "puma_gelu": lambda m: approx.piecewise_poly(m.share(X), approx.PUMA_GELU),
    "puma_silu": lambda m: approx.piecewise_poly(m.share(X), approx.PUMA_SILU),
    "softmax_2quad": lambda m: approx.softmax_2quad(m.share(X[:, :6]), CAUSAL),
    "softmax_goldschmidt": lambda m: approx.softmax_2quad_goldschmidt(m.share(X[:, :6]), CAUSAL),
    "softmax_puma": lambda m: approx.softmax_clipped_exp(m.share(X[:, :6]), CAUSAL),
    "goldschmidt_norm": lambda m: approx.goldschmidt_norm(m.share(X), m.share(torch.ones(16)), m.share(torch.zeros(16)),
                                                          "opt", 1e-5, 8, 2),
    "ideal_bolt_gelu": lambda m: ideal.ideal_op(m.share(X), "bolt_gelu", ideal.bolt_gelu_steps(ideal.Params(), 96)),
    "ideal_softmax": lambda m: ideal.ideal_op(m.share(X[:, :6]), "softmax", ideal.iron_softmax_steps(ideal.Params(), 6, 6),
                                              mask=CAUSAL),
    "ideal_twice": lambda m: ideal.ideal_op(arith.square(ideal.ideal_op(m.share(X), "relu", ideal.relu_steps(ideal.Params(), 96))),
                                            "silu", ideal.silu_steps(ideal.Params(), 96)),
}


def _reuse(m: MPC, select: bool = False):
    w = m.register_weight(m.share(Y, owner="model_owner"))
    sel = (1, torch.tensor([4, 0, 2])) if select else None
    with m.inference():
        a = arith.matmul(m.share(X), w, reuse_mask=True, select=sel)
        b = arith.matmul(m.share(X[:2]), w, reuse_mask=True, select=sel)
    return arith.mul(a[:2], b)


@pytest.mark.parametrize("truncation", ["local", "dealer"])
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_two_parties_equal_the_simulation(name, truncation):
    cfg = EngineConfig(truncation=truncation)
    prog = PROGRAMS[name]
    sim = MPC(cfg, seed=11)
    ref = sim.reveal(prog(sim), raw=True)
    out0, out1, (p0, p1) = run_pair(lambda m: m.reveal(prog(m), raw=True), cfg, seed=11, timeout_s=30)
    assert torch.equal(out0, ref) and torch.equal(out1, ref), f"{name}: revealed ring elements differ"
    assert p0.ledger.rows == sim.ledger.rows, f"{name}: P0's ledger differs from the simulation's"
    assert p1.ledger.rows == sim.ledger.rows, f"{name}: P1's ledger differs from the simulation's"
    assert sim.ledger.round == p0.ledger.round == p1.ledger.round


def test_a_party_holds_only_its_own_share():
    seen = {}

    def prog(m: MPC):
        xs = m.share(X)
        seen[m.rank] = xs.data.clone()
        return m.reveal(xs, raw=True)

    out, _, _ = run_pair(prog, EngineConfig(), seed=3)
    assert seen[0].shape == seen[1].shape == (1, *X.shape)
    assert torch.equal(seen[0][0] + seen[1][0], out)
    assert not torch.equal(seen[0][0], out) and not torch.equal(seen[1][0], out)


def test_harness_fixture_runs_single_parties(mpc, parties):
    """The parametrised protocol tests really run as single parties under `spmd` (a live check)."""
    xs = mpc.share(X)
    assert xs.data.shape[0] == (2 if parties == "sim" else 1)
    assert mpc.simulated == (parties == "sim")


def test_a_dead_peer_fails_fast_not_hangs():
    def prog(m: MPC):
        x = m.share(X)
        if m.rank == 1:
            raise RuntimeError("P1 crashed")
        return compare.relu(x)

    slack = scaled(1)   # the timeout and the bound stretch alike: failing fast stays faster than timing out
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="P1 crashed"):
        run_pair(prog, EngineConfig(), seed=1, timeout_s=20 * slack)
    assert time.perf_counter() - t0 < 10 * slack


def test_parties_out_of_step_are_detected():
    def prog(m: MPC):
        x = m.share(X)
        return compare.relu(x) if m.rank == 0 else arith.square(x)

    with pytest.raises(PeerError, match="out of step|does not match"):
        run_pair(prog, EngineConfig(), seed=1, timeout_s=10)


def test_a_malformed_one_way_message_is_refused():
    from comet_core.comm.channel import PartyChannel, QueuePipe
    from comet_core.comm.ledger import Ledger

    a, b = QueuePipe.pair(timeout_s=5)
    p0, p1 = PartyChannel(0, Ledger(), a), PartyChannel(1, Ledger(), b)
    p0.send_one_way(0, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(PeerError, match="does not match"):
        p1.send_one_way(0, torch.zeros(4, dtype=torch.int64))
