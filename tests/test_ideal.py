"""Ideal functionalities (comet_core/mpc/ideal.py): outputs, modelled ledger rows (cost_source=model)
and the building-block formulas for given sizes."""

import pytest
import torch

from comet_core.mpc import ideal as I
from conftest import assert_close

g = torch.Generator().manual_seed(3)
X = torch.linspace(-6, 6, 96, dtype=torch.float64).reshape(4, 24)
S = torch.randn(2, 3, 5, generator=g, dtype=torch.float64) * 2
MASK = torch.tril(torch.ones(3, 5, dtype=torch.int64), diagonal=2)
P = I.Params()


def _run(mpc, fn, steps, x, **kw):
    mark = mpc.ledger.mark()
    y = I.ideal_op(mpc.share(x), fn, steps, **kw)
    rows = mpc.ledger.rows[mark[0]:]
    return mpc.reveal(y), mpc.ledger.cost_since(mark), rows


CASES = {
    "relu": (lambda: I.relu_steps(P, X.numel()), X, {}),
    "silu": (lambda: I.silu_steps(P, X.numel()), X, {}),
    "gelu_tanh": (lambda: I.iron_gelu_steps(P, X.numel()), X, {}),
    "bolt_gelu": (lambda: I.bolt_gelu_steps(P, X.numel()), X, {}),
    "softmax": (lambda: I.iron_softmax_steps(P, 6, 5), S, {"mask": MASK}),
    "bolt_softmax": (lambda: I.bolt_softmax_steps(P, 6, 5), S, {"mask": MASK}),
    "normalize": (lambda: I.layernorm_steps(P, 4, 24), X, {"family": "opt", "eps": 1e-5}),
}


@pytest.mark.parametrize("fn", sorted(CASES))
def test_ideal_output_and_modelled_ledger(mpc, fn):
    steps_fn, x, kw = CASES[fn]
    steps = steps_fn()
    y, cost, rows = _run(mpc, fn, steps, x, **kw)
    assert_close(y, I.FUNCTIONS[fn](x, **kw), atol=2 ** -15, what=fn)    # re-shared at 16 fractional bits
    assert cost == I.steps_cost(steps)
    online = [r for r in rows if r[0] == "online"]
    assert online and all(r[11] == "model" for r in online)
    assert not [r for r in rows if r[0] == "offline"]                   # the model has no dealer traffic


def test_relu_bytes_equal_the_cited_formula():
    """CrypTFlow2: DReLU = MILL(l - 1) = lambda (l-1) + 14 (l-1) bits, ceil(log2(l-1)) rounds; MUX = 2 (lambda + 2l)
    bits, 2 rounds. l = 37, n = 10: 10 * (128*36 + 14*36) = 51120 bits = 6390 bytes in 6 rounds, then
    10 * 2 * (128 + 74) = 4040 bits = 505 bytes (253 + 253 after per-direction rounding) in 2 rounds."""
    c = I.steps_cost(I.relu_steps(P, 10))
    assert c.online_bytes == 6390 + 506 and c.rounds == 6 + 2


def test_building_blocks():
    assert I.MILL(32) == (128 * 32 + 14 * 32, 5)
    assert I.MUL(37) == (2 * 37 * 128 + 37 * 37, 2)
    assert I.TRUNC(37, 12) == (128 * 13 + 14 * 12, 5)
    assert I.LUT(8, 37) == (2 * 128 + 256 * 37, 2)
    assert I.DIGDEC(37, 8) == (128 * 4 * 10, 6)
    e = I.EXP(37, 12)
    assert e[0] == I.DIGDEC(37, 8)[0] + 5 * I.LUT(8, 37)[0] + 4 * (I.MUL(37)[0] + I.TRUNC(37, 12)[0])


def test_measured_rows_say_measured(mpc):
    from comet_core.mpc import compare

    mark = mpc.ledger.mark()
    compare.relu(mpc.share(X))
    assert {r[11] for r in mpc.ledger.rows[mark[0]:]} == {"measured"}


def test_cost_mode_books_the_same_rows():
    from comet_core.mpc.engine import MPC
    from comet_core.mpc.shape import Shape

    steps = I.bolt_softmax_steps(P, 6, 5)
    e, c = MPC(seed=1), MPC(seed=1, mode="cost")
    I.ideal_op(e.share(S), "bolt_softmax", steps, mask=MASK)
    I.ideal_op(c.share(Shape(S.shape, torch.float64)), "bolt_softmax", steps, mask=MASK)
    assert e.ledger.rows == c.ledger.rows
