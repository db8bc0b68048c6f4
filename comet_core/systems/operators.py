"""The protocols a system can choose per operator, each with its plaintext closed form.

A system's YAML names one entry per operator (`activations: {relu: .., silu: .., gelu: ..}`, `softmax:`,
`norm:`); `params:` holds the approximations' parameters. Every entry is a pair
(secure(x, ..., p) over shares, plain(x, ..., p) in float64 torch) so that the plaintext reference decoder
computes exactly the function the private run computes (up to fixed-point rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from comet_core.errors import ConfigError
from comet_core.mpc import approx, ideal, nonlinear as nl, smallring
from comet_core.mpc.engine import AShare


@dataclass(frozen=True)
class Op:
    secure: Callable
    plain: Callable
    protocol: str          # one line for the system x operator table
    source: str


# ---- activations: secure(x, kind, p), plain(x, kind, p) -------------------------------------------

def _exact_act(x: AShare, kind: str, p) -> AShare:
    if kind == "relu":
        return smallring.activation_relu(x)   # compare.relu unless engine.relu_bits < 64
    if kind == "silu":
        return nl.silu(x)
    return nl.gelu(x)


def _plain_exact_act(x: torch.Tensor, kind: str, p) -> torch.Tensor:
    """The model's own function, as Hugging Face computes it (gelu = erf form, gelu_new = tanh form)."""
    x = x.double()
    if kind == "relu":
        return torch.relu(x)
    if kind == "silu":
        return torch.nn.functional.silu(x)
    if kind == "gelu_new":
        return ideal.plain_gelu_tanh(x)
    return torch.nn.functional.gelu(x)


def _ot_flavour(p) -> str:
    ot = str(p.get("ot", "iknp"))
    if ot not in ideal.OT_FLAVOURS:
        raise ConfigError(f"system.ot={ot!r} is not an OT flavour; valid: {', '.join(ideal.OT_FLAVOURS)}")
    return ot


def _iron_params(p) -> ideal.Params:
    return ideal.Params(ell=int(p.get("ell", 37)), scale=int(p.get("scale", 12)),
                        gelu_ell=int(p.get("gelu_ell", 37)), gelu_scale=int(p.get("gelu_scale", 12)),
                        ot=_ot_flavour(p))


def _bolt_params(p) -> ideal.Params:
    return ideal.Params(ell=int(p.get("ell", 37)), scale=int(p.get("scale", 12)),
                        gelu_ell=int(p.get("gelu_ell", 20)), gelu_scale=int(p.get("gelu_scale", 11)),
                        ot=_ot_flavour(p))


EXACT_ACT = {  # what `exact` computes per kind (for the table)
    "relu": "ReLU by comparison: x [x >= 0]",
    "silu": "x sigmoid(x), sigmoid by the reciprocal method",
    "gelu": "tanh-form GeLU via sigmoid (|err| < 1e-3 vs erf)",
}

ACTIVATIONS: dict[str, Op] = {
    "exact": Op(_exact_act, _plain_exact_act,
                "ReLU: comparison x [x>=0]; SiLU: x sigmoid(x); GeLU: tanh form via sigmoid (reciprocal method)",
                "engine (CrypTen recipes, comet_core/mpc/nonlinear.py)"),
    "quad": Op(lambda x, k, p: approx.quad(x), lambda x, k, p: approx.plain_quad(x),
               "Quad 0.125x^2 + 0.5x + 0.25 (1 square)", "MPCFormer utils.py activation_quad"),
    "fourier_gelu": Op(lambda x, k, p: approx.fourier_gelu(x), lambda x, k, p: approx.plain_fourier_gelu(x),
                       "0.5x(1+erf(x/sqrt2)), erf = 7-term Fourier sine series on [-2.5,2.5], clamp +-1",
                       "SecFormer efficiency/utils.py secformer_gelu"),
    "puma_gelu": Op(lambda x, k, p: approx.piecewise_poly(x, approx.PUMA_GELU),
                    lambda x, k, p: approx.plain_piecewise_poly(x, approx.PUMA_GELU),
                    "4 pieces at -4, -1.95, 3: 0 | deg-3 | deg-6 | x", "PUMA; spu bench_gpt2 hack_gelu"),
    "puma_silu": Op(lambda x, k, p: approx.piecewise_poly(x, approx.PUMA_SILU),
                    lambda x, k, p: approx.plain_piecewise_poly(x, approx.PUMA_SILU),
                    "4 pieces at -8, -4, 4: 0 | deg-2 | deg-6 | x", "PUMA; spu flax_llama7b hack_silu"),
    "ot_relu": Op(lambda x, k, p: ideal.ideal_op(x, "relu", ideal.relu_steps(p["_ideal"], x.numel())),
                  lambda x, k, p: ideal.plain_relu(x),
                  "ideal: exact ReLU; cost CrypTFlow2 DReLU + MUX", "CrypTFlow2 (SCI) ReLU"),
    "ot_silu": Op(lambda x, k, p: ideal.ideal_op(x, "silu", ideal.silu_steps(p["_ideal"], x.numel())),
                  lambda x, k, p: ideal.plain_silu(x),
                  "ideal: exact x sigmoid(x); cost SIRNN sigmoid + MUL", "SIRNN sigmoid (SCI)"),
    "iron_gelu": Op(lambda x, k, p: ideal.ideal_op(x, "gelu_tanh", ideal.iron_gelu_steps(p["_ideal"], x.numel())),
                    lambda x, k, p: ideal.plain_gelu_tanh(x),
                    "ideal: exact tanh-GeLU; cost x^2, x^3, SIRNN tanh, 3 MUL", "EzPC bert: fp-math.cpp gelu_iron"),
    "bolt_gelu": Op(lambda x, k, p: ideal.ideal_op(x, "bolt_gelu", ideal.bolt_gelu_steps(p["_ideal"], x.numel())),
                    lambda x, k, p: ideal.plain_bolt_gelu(x),
                    "ideal: BOLT deg-4 poly in |x| + 0.5x, ReLU beyond |x|>2.7; cost MSB, 2 MUL, MILL, 2 MUX",
                    "EzPC bert: fp-math.cpp gelu_approx"),
}


# ---- softmax: secure(scores, mask, p), plain(scores, mask, p) --------------------------------------

def _rows(x) -> tuple[int, int]:
    n = x.shape[-1]
    return math.prod(x.shape) // n, n


SOFTMAXES: dict[str, Op] = {
    "exact": Op(lambda s, m, p: nl.softmax(s, -1, m), lambda s, m, p: ideal.plain_softmax(s, m),
                "max (all pairs in one tree for short rows, else tournament) + exp (limit, 8 squarings) "
                "+ Newton reciprocal", "engine (CrypTen recipe; max: comet_core/mpc/pairmax.py)"),
    "2quad": Op(lambda s, m, p: approx.softmax_2quad(s, m, float(p.get("quad_c", 5.0))),
                lambda s, m, p: approx.plain_softmax_2quad(s, m, float(p.get("quad_c", 5.0))),
                "2Quad (x+5)^2 / sum, engine Newton reciprocal", "MPCFormer utils.py softmax_2QUAD"),
    "2quad_goldschmidt": Op(
        lambda s, m, p: approx.softmax_2quad_goldschmidt(s, m, float(p.get("quad_c", 5.0)),
                                                         int(p.get("div_iters", 13)), float(p.get("quad_bound", 256.0))),
        lambda s, m, p: approx.plain_softmax_2quad_goldschmidt(s, m, float(p.get("quad_c", 5.0)),
                                                               int(p.get("div_iters", 13)), float(p.get("quad_bound", 256.0))),
        "2Quad + Goldschmidt division (13 iters, deflated by 2^ceil(log2(n*256)))",
        "SecFormer operation/softmax.py"),
    "puma": Op(lambda s, m, p: approx.softmax_clipped_exp(s, m, int(p.get("exp_iters", 8))),
               lambda s, m, p: approx.plain_softmax_clipped_exp(s, m, int(p.get("exp_iters", 8))),
               "x - max, exp(x)[x > -14] (limit, 8 squarings), Newton reciprocal",
               "PUMA; spu hack_softmax (SecFormer puma_softmax port, fixed)"),
    "iron": Op(lambda s, m, p: ideal.ideal_op(s, "softmax", ideal.iron_softmax_steps(p["_ideal"], *_rows(s)), mask=m),
               lambda s, m, p: ideal.plain_softmax(s, m),
               "ideal: exact softmax; cost tree max + SIRNN LUT exp + division per element",
               "EzPC bert: fp-math.cpp softmax_fix_iron_1"),
    "bolt": Op(lambda s, m, p: ideal.ideal_op(s, "bolt_softmax", ideal.bolt_softmax_steps(p["_ideal"], *_rows(s)), mask=m),
               lambda s, m, p: ideal.plain_bolt_softmax(s, m),
               "ideal: BOLT exp4 (range reduction + 0.3585(p+1.353)^2+0.344, shift <= 13) / sum",
               "EzPC bert: fp-math.cpp softmax_fix, exp4"),
}


# ---- norms: secure(x, w, b, family, eps, p), plain(...) ---------------------------------------------

def _exact_norm(x, w, b, family, eps, p):
    return nl.layernorm(x, w, b, eps) if family == "opt" else nl.rmsnorm(x, w, eps)


def _plain_exact_norm(x, w, b, family, eps, p):
    y = ideal.plain_normalize(x, family, eps) * w.double()
    return y + b.double() if (family == "opt" and b is not None) else y


def _ideal_norm(x, w, b, family, eps, p):
    rows, d = _rows(x)
    y = ideal.ideal_op(x, "normalize", ideal.layernorm_steps(p["_ideal"], rows, d), family=family, eps=eps)
    return nl._affine(y, w, b if family == "opt" else None)


NORMS: dict[str, Op] = {
    "exact": Op(_exact_norm, _plain_exact_norm, "mean/variance + Newton inverse sqrt (power-of-two guess)",
                "engine (CrypTen recipe)"),
    "goldschmidt": Op(
        lambda x, w, b, fam, eps, p: approx.goldschmidt_norm(x, w, b, fam, eps, int(p.get("rsqrt_iters", 8)),
                                                             int(p.get("rsqrt_deflate_log4", 4))),
        lambda x, w, b, fam, eps, p: approx.plain_goldschmidt_norm(x, w, b, fam, eps, int(p.get("rsqrt_iters", 8)),
                                                                   int(p.get("rsqrt_deflate_log4", 4))),
        "Goldschmidt inverse sqrt (8 iters, deflated by 4^j)", "SecFormer operation/layernorm.py"),
    "ot_exact": Op(_ideal_norm, _plain_exact_norm,
                   "ideal: exact normalisation; cost mean, square, SIRNN rsqrt, MUL (+ engine affine)",
                   "EzPC bert: fp-math.cpp layer_norm_iron / layer_norm_fix"),
}


def lookup(table: dict, name: str, what: str, system: str) -> Op:
    if name not in table:
        raise ConfigError(f"system '{system}': unknown {what} protocol '{name}'; valid: {', '.join(sorted(table))}")
    return table[name]
