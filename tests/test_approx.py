"""The baselines' approximation protocols (comet_core/mpc/approx.py): each against its plaintext closed
form, and each cost formula against the ledger, in both truncation modes and both ways of running."""

import pytest
import torch

from comet_core.mpc import approx as A
from conftest import assert_close

g = torch.Generator().manual_seed(11)
X = torch.linspace(-10, 10, 240, dtype=torch.float64).reshape(3, 80)      # activations: [-10, 10]
S = torch.randn(2, 5, 7, generator=g, dtype=torch.float64) * 3             # attention scores
CAUSAL = torch.tril(torch.ones(5, 7, dtype=torch.int64), diagonal=2)       # (T, S) with a prefix of 2
H = torch.randn(4, 24, generator=g, dtype=torch.float64) * 4 + 1           # norm inputs, variance ~16
W = torch.rand(24, generator=g, dtype=torch.float64) + 0.5
B = torch.randn(24, generator=g, dtype=torch.float64)


def _run(mpc, fn, *inputs):
    mark = mpc.ledger.mark()
    out = fn(*[mpc.share(t) for t in inputs])
    cost = mpc.ledger.cost_since(mark)
    return mpc.reveal(out), cost


def test_quad(mpc):
    y, cost = _run(mpc, A.quad, X)
    assert_close(y, A.plain_quad(X), atol=1e-4, what="quad", x=X)
    assert cost == A.quad_cost(mpc, X.numel())


def test_fourier_gelu(mpc):
    y, cost = _run(mpc, A.fourier_gelu, X)
    assert_close(y, A.plain_fourier_gelu(X), atol=2e-4, what="fourier_gelu", x=X)
    assert cost == A.fourier_gelu_cost(mpc, X.numel())


def test_fourier_erf_closed_form_matches_erf_inside_its_range():
    u = torch.linspace(-2.4, 2.4, 97, dtype=torch.float64)
    assert (A.plain_fourier_erf(u) - torch.erf(u)).abs().max() < 0.04   # SecFormer's 7-term fit: 0.036 at |u| ~ 2.3
    assert torch.equal(A.plain_fourier_erf(torch.tensor([-3.0, 3.0])), torch.tensor([-1.0, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("spec", ["PUMA_GELU", "PUMA_SILU"])
def test_puma_piecewise(mpc, spec):
    sp = getattr(A, spec)
    y, cost = _run(mpc, lambda x: A.piecewise_poly(x, sp), X)
    assert_close(y, A.plain_piecewise_poly(X, sp), atol=2e-4, what=spec, x=X)
    assert cost == A.piecewise_poly_cost(mpc, X.numel(), sp)


def test_puma_pieces_approximate_the_functions():
    x = torch.linspace(-10, 10, 2001, dtype=torch.float64)
    assert (A.plain_piecewise_poly(x, A.PUMA_GELU) - torch.nn.functional.gelu(x)).abs().max() < 0.02
    assert (A.plain_piecewise_poly(x, A.PUMA_SILU) - torch.nn.functional.silu(x)).abs().max() < 0.08


@pytest.mark.parametrize("masked", [False, True])
def test_softmax_2quad(mpc, masked):
    m = CAUSAL if masked else None
    y, cost = _run(mpc, lambda s: A.softmax_2quad(s, m), S)
    tol = 1e-3 if mpc.config.truncation == "dealer" else 5e-3
    assert_close(y, A.plain_softmax_2quad(S, m), atol=tol, what="2quad")
    assert cost == A.softmax_2quad_cost(mpc, 10, 7)


@pytest.mark.parametrize("masked", [False, True])
def test_softmax_goldschmidt(mpc, masked):
    m = CAUSAL if masked else None
    y, cost = _run(mpc, lambda s: A.softmax_2quad_goldschmidt(s, m), S)
    # local truncation keeps the iterates at f bits: a deflated row sum of ~4/2^11 keeps ~6 bits
    tol = 1e-3 if mpc.config.truncation == "dealer" else 3e-2
    assert_close(y, A.plain_softmax_2quad_goldschmidt(S, m), atol=tol, what="goldschmidt softmax")
    assert cost == A.softmax_2quad_goldschmidt_cost(mpc, 10, 7)


def test_goldschmidt_division_converges_to_the_reciprocal():
    s = torch.tensor([40.0, 900.0, 3000.0], dtype=torch.float64)
    k = A._deflate_log2(16, 256.0)                       # 2^12 for rows of 16
    r = A.plain_goldschmidt_reciprocal(s, k, 13)
    assert ((r * s) - 1).abs().max() < 1e-6
    # a sum far below the bound converges slowly: residual (1 - s / 2^k)^(2^13)
    r3 = A.plain_goldschmidt_reciprocal(torch.tensor([3.0], dtype=torch.float64), k, 13)
    assert abs(float(r3 * 3) - 1) > 1e-3


@pytest.mark.parametrize("masked", [False, True])
def test_softmax_puma(mpc, masked):
    m = CAUSAL if masked else None
    y, cost = _run(mpc, lambda s: A.softmax_clipped_exp(s, m), S)
    assert_close(y, A.plain_softmax_clipped_exp(S, m), atol=3e-3, what="puma softmax")
    assert cost == A.softmax_clipped_exp_cost(mpc, 10, 7)


@pytest.mark.parametrize("family", ["opt", "llama"])
def test_goldschmidt_norm(mpc, family):
    b = B if family == "opt" else None
    fn = lambda h, w, *bb: A.goldschmidt_norm(h, w, bb[0] if bb else None, family, 1e-5, 8, 4)  # noqa: E731
    y, cost = _run(mpc, fn, H, W, *([b] if b is not None else []))
    tol = 1e-3 if mpc.config.truncation == "dealer" else 3e-3
    assert_close(y, A.plain_goldschmidt_norm(H, W, b, family, 1e-5, 8, 4), atol=tol, what="goldschmidt norm")
    assert cost == A.goldschmidt_norm_cost(mpc, 4, 24, family, 8, 4)


def test_goldschmidt_inv_sqrt_working_range():
    v = torch.tensor([3.0, 30.0, 300.0, 700.0], dtype=torch.float64)   # 0.01 * 4^4 < v < 3 * 4^4
    r = A.plain_goldschmidt_inv_sqrt(v, 8, 4)
    assert ((r * v.sqrt()) - 1).abs().max() < 1e-3
    assert ((A.plain_goldschmidt_inv_sqrt(torch.tensor([0.1]), 8, 4) * 0.1 ** 0.5) - 1).abs().max() > 0.1  # below: off


@pytest.mark.parametrize("truncation", ["local", "dealer"])
def test_cost_mode_books_the_exact_mode_ledger(truncation):
    """Every approximation on data-free shapes writes the same ledger as on real shares."""
    from comet_core.mpc.engine import MPC, EngineConfig
    from comet_core.mpc.shape import Shape

    progs = [
        lambda m, s: A.quad(s(X)),
        lambda m, s: A.fourier_gelu(s(X)),
        lambda m, s: A.piecewise_poly(s(X), A.PUMA_GELU),
        lambda m, s: A.piecewise_poly(s(X), A.PUMA_SILU),
        lambda m, s: A.softmax_2quad(s(S), CAUSAL),
        lambda m, s: A.softmax_2quad_goldschmidt(s(S), CAUSAL),
        lambda m, s: A.softmax_clipped_exp(s(S), CAUSAL),
        lambda m, s: A.goldschmidt_norm(s(H), s(W), s(B), "opt", 1e-5, 8, 4),
    ]
    for prog in progs:
        cfg = EngineConfig(truncation=truncation)
        e, c = MPC(cfg, seed=2), MPC(cfg, seed=2, mode="cost")
        prog(e, lambda t: e.share(t))
        prog(c, lambda t: c.share(Shape(t.shape, torch.float64)))
        assert e.ledger.rows == c.ledger.rows
