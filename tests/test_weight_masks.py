"""engine.weight_masks=call|request|deployment (comet_core/mpc/weight_masks.py): values equal plaintext,
the ledger equals the cost formulas per stage, the deployment masks outlive a request and are opened once
in stage deploy, and the deprecated reuse_weight_masks maps onto the new key."""

from __future__ import annotations

import pytest
import torch

from comet_core.comm.ledger import Cost
from comet_core.errors import CometError
from comet_core.mpc import arith
from comet_core.mpc.engine import MPC, EngineConfig
from comet_core.mpc.weight_masks import deploy_opening_cost
from comet_core.results.tables import stage_totals

from conftest import LSB, assert_close

W = 8


def _run_requests(policy: str, mode: str, requests: int = 2, rows=(3, 1, 1)):
    """`requests` inferences of products x @ W (a prefill of 3 rows, two decode rows) with one registered
    weight and one per-request weight; returns the engine and the products' values."""
    gen = torch.Generator().manual_seed(4)
    mk = (lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64) * 0.5) if mode == "exact" else \
        (lambda *s: torch.empty(*s, dtype=torch.float64, device="meta"))
    m = MPC(EngineConfig(weight_masks=policy), seed=3, mode=mode)
    w_plain = mk(16, 8)
    w = m.register_weight(m.share(w_plain, owner="model_owner", phase="setup"))
    out = []
    for _ in range(requests):
        with m.inference():
            v_plain = mk(8, 4)
            v = m.register_weight(m.share(v_plain, owner="model_owner", phase="setup"), per_request=True)
            for t in rows:
                with m.label(stage="prefill" if t > 1 else "decode"):
                    x = mk(t, 16)
                    y = arith.matmul(arith.matmul(m.share(x), w), v)
                    out.append((y, x @ w_plain @ v_plain))
    return m, out


@pytest.mark.parametrize("policy", ["call", "request", "deployment"])
def test_values_equal_plaintext(policy):
    m, out = _run_requests(policy, "exact")
    for y, want in out:
        # inputs encoded to +-LSB/2 (16 then 8 terms of |value| < 2) and two truncations (+-1 LSB each)
        assert_close(m.reveal(y), want, 64 * LSB, what=f"x @ W @ V under weight_masks={policy}")


@pytest.mark.parametrize("policy", ["call", "request", "deployment"])
def test_ledger_equals_cost_formula_per_stage(policy):
    """Per request: W's mask opened per product (call), at its first product (request) or never (deployment:
    once in stage deploy over both requests); V, a per-request weight, at most once per request."""
    m, _ = _run_requests(policy, "exact")
    df = m.ledger.frame()
    want = {"prefill": Cost(), "decode": Cost(), "deploy": Cost()}
    for _ in range(2):
        for i, t in enumerate((3, 1, 1)):
            w_open = policy == "call" or (policy == "request" and i == 0)
            c = arith.matmul_cost(m, t * 16, 16 * 8, t * 8, reused=not w_open)
            c = c + arith.matmul_cost(m, t * 8, 8 * 4, t * 4, reused=policy != "call" and i > 0)
            want["prefill" if t > 1 else "decode"] += c
    if policy == "deployment":
        want["deploy"] = deploy_opening_cost(16 * 8)
    for stage, c in want.items():
        got = stage_totals(df, stage)
        assert (got["online_bytes"], got["offline_bytes"], got["rounds"]) == \
            (c.online_bytes, c.offline_bytes, c.rounds), (policy, stage)


def test_deployment_mask_survives_requests_request_mask_does_not():
    m, _ = _run_requests("deployment", "exact", requests=1)
    assert len(m.weight_masks) == 1 and not m.request_weights       # W kept, the per-request V dropped
    m, _ = _run_requests("request", "exact", requests=1)
    assert not m.weight_masks and not m.dealer._reused


@pytest.mark.parametrize("policy", ["request", "deployment"])
def test_exact_and_cost_ledgers_identical(policy):
    rows = [_run_requests(policy, mode)[0].ledger.rows for mode in ("exact", "cost")]
    assert rows[0] == rows[1]


def test_deprecated_key_maps_and_conflicts_fail():
    with pytest.warns(DeprecationWarning):
        assert EngineConfig(reuse_weight_masks=True).weight_masks == "request"
    with pytest.warns(DeprecationWarning):
        assert EngineConfig(reuse_weight_masks=False).weight_masks == "call"
    with pytest.raises(CometError, match="contradicts"), pytest.warns(DeprecationWarning):
        EngineConfig(weight_masks="deployment", reuse_weight_masks=True)
    with pytest.raises(CometError, match="engine.weight_masks must be one of"):
        EngineConfig(weight_masks="forever")
