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


def test_mill_from_sci_code():
    """millionaire.h at l = 37 (q = 10 digits, r = 1, L = 4): leaves 1 KKOT16 of 1-bit messages, 8 of 2-bit,
    1 IKNP OT of 2-bit; triples 10 from 5 KKOT8, 4 from 2 KKOT16; 14 ANDs open 2 bits per party.
    P1 (receiver) sends 256 * (1 + 8 + 5 + 2) + 128 + 28 = 4252 bits; P0 (sender) 16 + 8 * 32 + 4 + 5 * 16
    + 2 * 32 + 28 = 448; 2 + ceil(log2 10) = 6 rounds. Within CrypTFlow2's bound lambda l + 14 l = 5254."""
    m = I.MILL(37)
    assert (m.p0, m.p1, m.rounds) == (448, 4252, 6)
    assert m.bits < 128 * 37 + 14 * 37


def test_ot_instances_by_flavour():
    """iknp: receiver 128 bits (1-of-2) or 256 (1-of-N), sender N l; silent: log2 N choice bits plus
    Ferret's 0.45 bits per COT (half each way), sender N l."""
    assert I.ot(2, 37, 1, "iknp") == I.Block(74, 128, 0, 1)
    assert I.ot(16, 2, 1, "iknp", receiver="P0") == I.Block(256, 32, 0, 4)
    assert I.ot(2, 37, 1, "iknp", correlated=True).p0 == 37
    s = I.ot(16, 2, 1, "silent")
    assert s.p1 == 4 * (1 + 0.45 / 2) and s.p0 == 32 + 4 * 0.45 / 2
    with pytest.raises(ValueError):
        I.ot(2, 1, 1, "kos")


def test_building_blocks():
    assert I.MUX(37) == I.Block(128 + 74, 128 + 74, 2, 2)                  # CrypTFlow2: 2 (lambda + 2 l)
    assert I.MUL(37).bits == 2 * 37 * 128 + 37 * 37                     # SIRNN: 2 l lambda + l^2
    assert I.TRUNC(37, 12).bits == I.MILL(12).bits + 128 + 25            # truncate_and_reduce: B2A in l - s bits
    assert I.LUT(8, 37).bits == 256 + 256 * 37                           # SIRNN: 2 lambda + 2^d l
    assert I.DIGDEC(37, 8) == I.Block(0, 128 * 4 * 10, 6, 4 * 10)               # SIRNN: lambda (c - 1)(d + 2)
    e = I.EXP(37, 12)
    assert e.bits == I.DIGDEC(37, 8).bits + 5 * I.LUT(8, 37).bits + 4 * (I.MUL(37).bits + I.TRUNC(37, 12).bits)


def test_relu_bytes_per_direction():
    """DReLU = MILL(36) then MUX(37), n = 10 elements: the receiver's columns flow P1 -> P0."""
    steps = I.relu_steps(P, 10)
    m = I.MILL(36)
    p0, p1 = I.steps_direction_bytes(steps)
    assert p0 == (10 * int(m.p0) + 7) // 8 + (10 * 202 + 7) // 8
    assert p1 == (10 * int(m.p1) + 7) // 8 + (10 * 202 + 7) // 8
    assert p1 > 4 * p0
    assert I.steps_cost(steps).online_bytes == p0 + p1


def test_silent_ot_is_cheaper_by_the_lambda_terms():
    """Silent OT removes the receiver's 128 / 256-bit columns: BOLT's GeLU at least 3x fewer bits."""
    iknp = I.steps_cost(I.bolt_gelu_steps(P, 1000)).online_bytes
    silent = I.steps_cost(I.bolt_gelu_steps(I.Params(ot="silent"), 1000)).online_bytes
    assert 3 * silent < iknp


def test_ledger_books_each_direction(mpc):
    steps = I.relu_steps(P, X.numel())
    mark = mpc.ledger.mark()
    I.ideal_op(mpc.share(X), "relu", steps)
    rows = [r for r in mpc.ledger.rows[mark[0]:] if r[0] == "online"]
    sent = {s: sum(r[9] for r in rows if r[5] == s) for s in ("P0", "P1")}
    assert (sent["P0"], sent["P1"]) == I.steps_direction_bytes(steps)


def test_system_ot_switch_reaches_the_params():
    from comet_core.errors import ConfigError
    from comet_core.systems import operators as ops

    assert ops._bolt_params({"ot": "silent"}).ot == "silent"
    assert ops._iron_params({}).ot == "iknp"
    with pytest.raises(ConfigError):
        ops._iron_params({"ot": "ferret"})


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


def test_ot_work_counts_log2n_per_ot():
    """MILL(37): 9 leaf KKOT16 x 4 + the 1-bit top digit's 1-of-2 x 1; triples 5 KKOT8 x 3 + 2 KKOT16 x 4."""
    assert I.MILL(37).ots == 9 * 4 + 1 + 5 * 3 + 2 * 4
    assert I.MUX(37).ots == 2 and I.MUL(37).ots == 2 * 37
    steps = I.relu_steps(P, 10)
    assert I.steps_ot_instances(steps) == 10 * (I.MILL(36).ots + 2)
