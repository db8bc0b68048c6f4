"""Exact and cost mode run one code path: the same computation writes the identical ledger; cost mode
prices paper-scale shapes in well under a second; one seed fixes ledger and outputs."""

from __future__ import annotations

import time

import torch

from comet_core.mpc import arith, compare, nonlinear as nl
from comet_core.mpc.engine import MPC, EngineConfig

from conftest import LSB, assert_close
from tests.helpers_load import scaled

SOFTMAX_ATOL = 2e-2  # two runs with different shares each within the softmax tolerance of plaintext (2 x ~1%)
RELU_ATOL = 2 * LSB  # relu(x @ W): one truncation in each run, +-1 LSB each


def composed(m: MPC, make) -> dict:
    """A small transformer-ish pipeline over every protocol family; `make(*shape)` builds inputs."""
    x = m.share(make(6, 16))
    w = m.share(make(16, 24), owner="model_owner")
    g, b = m.share(make(24), owner="model_owner"), m.share(make(24), owner="model_owner")
    out = {}
    with m.label(stage="prefill", layer=0, op="fc1"):
        h = arith.matmul(x, w)
    with m.label(stage="prefill", layer=0, op="act"):
        r = compare.relu(h)
        out["relu"] = m.reveal(r)
        out["gelu"] = m.reveal(nl.gelu(h))
        out["silu"] = m.reveal(nl.silu(h))
    with m.label(stage="prefill", layer=0, op="attn"):
        s = h.reshape(6, 4, 6)
        out["softmax"] = m.reveal(nl.softmax(s))
        out["softmax_causal"] = m.reveal(nl.softmax(s, mask=torch.tril(torch.ones(4, 6))))
    with m.label(stage="prefill", layer=0, op="norm"):
        out["ln_secret"] = m.reveal(nl.layernorm(r, g, b))
        out["ln_public"] = m.reveal(nl.layernorm(h, torch.ones(24), torch.zeros(24)))
        out["rms"] = m.reveal(nl.rmsnorm(h, g))
    with m.label(stage="decode", layer=1, op="max"):
        out["max"] = m.reveal(compare.max_along(h, -1))
        out["max0"] = m.reveal(compare.max_along(h, 0, keepdim=True))
    return out


def _exact_inputs(seed: int):
    g = torch.Generator()
    g.manual_seed(seed)
    return lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)


def _meta(*s):
    return torch.empty(*s, device="meta")


def test_exact_and_cost_mode_ledgers_identical(truncation):
    cfg = EngineConfig(truncation=truncation)
    exact = MPC(cfg, seed=5, mode="exact")
    cost = MPC(cfg, seed=5, mode="cost")
    out_e = composed(exact, _exact_inputs(0))
    out_c = composed(cost, _meta)
    assert len(exact.ledger.rows) > 100
    assert exact.ledger.rows == cost.ledger.rows
    assert exact.ledger.round == cost.ledger.round
    assert exact.ledger.cost_since() == cost.ledger.cost_since()
    for k in out_e:
        assert out_c[k].is_meta and out_c[k].shape == out_e[k].shape, k
        assert not out_e[k].is_meta and torch.isfinite(out_e[k]).all(), k


def test_exact_and_cost_mode_identical_with_weight_mask_reuse():
    rows = []
    for mode, make in (("exact", _exact_inputs(1)), ("cost", _meta)):
        m = MPC(EngineConfig(reuse_weight_masks=True), seed=2, mode=mode)
        w = m.share(make(16, 8), owner="model_owner")
        with m.inference():
            for t in (4, 1, 1):
                arith.matmul(m.share(make(t, 16)), w)
        rows.append(m.ledger.rows)
    assert rows[0] == rows[1]


def test_cost_mode_large_shapes_fast():
    """Paper-scale shapes on meta tensors: OPT-style (2048x4096) @ (4096x4096) + ReLU in well under a second.

    The first meta op of a process pays torch's one-time set-up of its meta kernels (~1-3 s): warm up first.
    """
    warm = MPC(EngineConfig(), seed=0, mode="cost")
    compare.relu(arith.matmul(warm.share(_meta(2, 4)), warm.share(_meta(4, 2))))
    m = MPC(EngineConfig(), seed=0, mode="cost")
    t0 = time.perf_counter()
    x = m.share(_meta(2048, 4096))
    w = m.share(_meta(4096, 4096), owner="model_owner")
    y = arith.matmul(x, w)
    r = compare.relu(y)
    elapsed = time.perf_counter() - t0
    assert y.data.is_meta and r.shape == (2048, 4096)
    assert elapsed < scaled(1.0), f"cost mode took {elapsed:.2f} s"   # meta tensors: no paper-scale arithmetic
    n_x, n_w, n_y = 2048 * 4096, 4096 * 4096, 2048 * 4096
    assert m.ledger.cost_since() == arith.matmul_cost(m, n_x, n_w, n_y) + compare.relu_cost(m, n_y)
    trunc = arith.truncate_cost(m, n_y).online_bytes  # 0 for local truncation, 2 * 8 * n_y for dealer's
    assert arith.matmul_cost(m, n_x, n_w, n_y).online_bytes == 2 * 8 * (n_x + n_w) + trunc
    # attention softmax over a 2048-token context: ~3,000 meta ops (a few seconds at most on 2 busy cores)
    mark = m.ledger.mark()
    t0 = time.perf_counter()
    p = nl.softmax(m.share(_meta(32, 2048, 2048)))
    elapsed = time.perf_counter() - t0
    assert p.shape == (32, 2048, 2048)
    assert m.ledger.cost_since(mark) == nl.softmax_cost(m, 32 * 2048, 2048)
    assert elapsed < scaled(10.0), f"cost-mode softmax took {elapsed:.2f} s"


def test_same_seed_same_ledger_and_outputs():
    runs = []
    for _ in range(2):
        m = MPC(EngineConfig(truncation="local"), seed=11)
        out = composed(m, _exact_inputs(3))
        runs.append((m.ledger.rows, out, m))
    assert runs[0][0] == runs[1][0]
    for k in runs[0][1]:
        assert torch.equal(runs[0][1][k], runs[1][1][k]), k


def test_same_seed_same_shares():
    a, b = MPC(seed=4), MPC(seed=4)
    x = torch.randn(3, 5)
    assert torch.equal(a.share(x).data, b.share(x).data)
    assert torch.equal(a.dealer.mul_triple((3,), (3,))[2].data, b.dealer.mul_triple((3,), (3,))[2].data)


def test_different_seeds_different_shares_same_outputs(truncation):
    x = torch.randn(6, 16, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    wv = torch.randn(16, 24, generator=torch.Generator().manual_seed(10), dtype=torch.float64) * 0.25
    shares, outs, ledgers = [], [], []
    for seed in (1, 2):
        m = MPC(EngineConfig(truncation=truncation), seed=seed)
        xs = m.share(x)
        shares.append(xs.data.clone())
        h = arith.matmul(xs, m.share(wv, owner="model_owner"))
        outs.append((m.reveal(compare.relu(h)), m.reveal(nl.softmax(h.reshape(6, 4, 6)))))
        ledgers.append(m.ledger.rows)
    assert not torch.equal(shares[0][0], shares[1][0]) and not torch.equal(shares[0][1], shares[1][1])
    assert ledgers[0] == ledgers[1]  # the ledger depends on shapes only, never on the randomness
    assert_close(outs[0][0], outs[1][0], RELU_ATOL, what="relu(x @ W) across seeds")
    assert_close(outs[0][1], outs[1][1], SOFTMAX_ATOL, what="softmax across seeds")
