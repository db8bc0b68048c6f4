"""Values outside a protocol's range: a one-line RangeError in simulation (naming layer, operator and value)
instead of a silent wrong answer; refused encodings; the switch that turns the check off.

Before the check (engine at 516eff7): gelu(-1500) = -1500.0 and gelu(1500) = 0.023 (x^3 left the ring),
square(60000) wrapped, and encode mapped NaN, inf and 1e300 to -2^63 (-2^47 as a value at frac_bits 16).
"""

from __future__ import annotations

import pytest
import torch

from comet_core.errors import CometError, RangeError
from comet_core.mpc import arith, compare, nonlinear as nl, ring
from comet_core.mpc.engine import MPC, EngineConfig

from conftest import assert_close


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e300, 2.0 ** 47, -(2.0 ** 46) - 1])
def test_encode_refuses_non_finite_and_out_of_range(bad):
    with pytest.raises(CometError, match="cannot encode"):
        ring.encode(torch.tensor([1.0, bad], dtype=torch.float64), 16)


def test_encode_accepts_the_edge_of_its_range():
    assert ring.encode(torch.tensor([2.0 ** 46, -(2.0 ** 46)], dtype=torch.float64), 16).tolist() == [2 ** 62, -(2 ** 62)]


def test_share_refuses_nan_input():
    m = MPC(EngineConfig(), seed=1)
    with pytest.raises(CometError, match="nan"):
        m.share(torch.tensor([0.5, float("nan")], dtype=torch.float64))


def _gelu_in_layer(m: MPC, x: torch.Tensor):
    with m.label(stage="prefill", layer=3, op="ffn.act"):
        return nl.gelu(m.share(x))


def test_gelu_cube_out_of_range_names_layer_op_and_value():
    m = MPC(EngineConfig(), seed=1)
    x = torch.tensor([1.0, -1500.0], dtype=torch.float64)
    with pytest.raises(RangeError) as e:
        _gelu_in_layer(m, x)
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("layer 3", "op ffn.act", "gelu", "3.375e+09", "frac_bits=16"):
        assert part in msg, (part, msg)


def test_square_and_truncation_out_of_range():
    m = MPC(EngineConfig(), seed=1)
    with pytest.raises(RangeError, match="x\\^2 = 3.6e\\+09"):
        arith.square(m.share(torch.tensor([60000.0], dtype=torch.float64)))
    w = torch.tensor([5, 2 ** 62 + 2 ** 61], dtype=torch.int64)
    with pytest.raises(RangeError, match="truncation input"):
        arith.truncate(m.share(w, frac=0), 4)
    with pytest.raises(RangeError, match="inv_sqrt input"):
        nl.inv_sqrt(m.share(torch.tensor([2.0 ** 33], dtype=torch.float64)))


def test_products_inside_the_range_pass():
    m = MPC(EngineConfig(), seed=1)
    x = torch.tensor([900.0, -900.0, 3.0], dtype=torch.float64)  # x^3 = 7.3e8 < 2^30
    assert_close(m.reveal(nl.gelu(m.share(x))), torch.nn.functional.gelu(x), 2e-2, 5e-5,
                 what="gelu at |x| = 900")  # sigmoid(K z) is 0 or 1 within ~1.5e-5: |err| ~ 1.5e-5 |x|
    big = torch.tensor([2.0 ** 40, -(2.0 ** 40)], dtype=torch.float64)  # x * bit needs no truncation
    assert_close(m.reveal(compare.relu(m.share(big))), torch.relu(big), 0.0, what="relu of 2^40")


@pytest.mark.parametrize("how", ["config", "argument"])
def test_range_check_switch(how):
    """With the check off the same input gives the silent wrong value the check exists for."""
    m = MPC(EngineConfig(check_ranges=False), seed=1) if how == "config" else MPC(EngineConfig(), seed=1, check_ranges=False)
    assert not m.checking
    got = m.reveal(nl.gelu(m.share(torch.tensor([-1500.0], dtype=torch.float64))))
    assert abs(float(got[0])) > 100, "gelu(-1500) should be ~0; the wrapped x^3 makes it huge"


def test_range_check_absent_for_a_single_party():
    """A single party holds only its own share: it cannot check (and must not try)."""
    from comet_core.mpc.parties import run_pair

    def body(m: MPC):
        assert not m.checking
        return m.reveal(arith.square(m.share(torch.tensor([60000.0], dtype=torch.float64))))

    r0, r1, _ = run_pair(body, seed=1)
    assert torch.equal(r0, r1)


def test_range_check_off_in_cost_mode():
    m = MPC(EngineConfig(), seed=1, mode="cost")
    assert not m.checking
