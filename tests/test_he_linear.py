"""system.linear=he (bolt): BOLT's HE linear layer as an ideal functionality. Exact mode equals the plaintext
product; the ledger books whole ciphertexts per direction (P1 its encrypted share, P0 the masked results)
and the mod-p reduction, exactly he_linear_cost; the booked ciphertext size is a fresh serialised one."""

import math

import pytest
import torch

from comet_core.mpc import he_linear as HE, ideal
from comet_core.mpc.engine import MPC
from comet_core.mpc.shape import Shape
from conftest import assert_close

P = ideal.Params()
g = torch.Generator().manual_seed(5)
X = torch.randn(3, 16, generator=g, dtype=torch.float64)
W = torch.randn(16, 24, generator=g, dtype=torch.float64) / 4
B = torch.randn(24, generator=g, dtype=torch.float64) / 8


def test_exact_output_and_ledger(mpc):
    mark = mpc.ledger.mark()
    y = HE.he_linear(mpc.share(X), mpc.share(W), mpc.share(B), P)
    assert_close(mpc.reveal(y), X @ W + B, atol=2 ** -14, what="he_linear")
    cost = mpc.ledger.cost_since(mark)
    assert cost == HE.he_linear_cost(P, 3, 16, 24)
    steps = HE.he_linear_steps(P, 3, 16, 24)
    assert steps[0].count == 1 and steps[0].p1 == 8 * HE.CT_BYTES and steps[0].p0 == 0    # 48 values: 1 ct
    assert steps[1].count == 1 and steps[1].p0 == 8 * HE.CT_BYTES
    assert steps[2].count == 72 and steps[2].p1 == math.ceil((ideal.MILL(37) + ideal.MUX(37)).p1)


def test_ciphertext_counts_are_bolts():
    """bert.cpp at 128 tokens: a 128 x 768 share is 12 ciphertexts, a 128 x 3072 result 48."""
    s = HE.he_linear_steps(P, 128, 768, 3072)
    assert (s[0].count, s[1].count) == (12, 48)


def test_cost_mode_books_the_same_rows():
    e, c = MPC(seed=2), MPC(seed=2, mode="cost")
    HE.he_linear(e.share(X), e.share(W), None, P)
    y = HE.he_linear(c.share(Shape(X.shape, torch.float64)), c.share(Shape(W.shape, torch.float64)), None, P)
    assert tuple(y.shape) == (3, 24)
    assert e.ledger.rows == c.ledger.rows


def test_ct_bytes_is_a_fresh_serialised_ciphertext():
    pytest.importorskip("tenseal")
    assert HE.measure_ct_bytes() == pytest.approx(HE.CT_BYTES, rel=0.002)    # zstd output varies by a few bytes


def test_only_bolt_offers_he(tmp_path):
    from comet_core.errors import ConfigError
    from comet_core.systems.bolt import BoltSystem
    from comet_core.systems.iron import IronSystem

    assert BoltSystem({"linear": "he"}).linear_name == "he"
    with pytest.raises(ConfigError, match="linear='he' is not available"):
        IronSystem({"linear": "he"})
