"""Ideal functionalities for the OT-based non-linear protocols of Iron and BOLT, priced by a cost model.

Iron (Hao et al., NeurIPS'22) and BOLT (Pang et al., S&P'24) evaluate GeLU, softmax and LayerNorm with
OT-based building blocks of CrypTFlow2 (Rathee et al., CCS'20) and SIRNN (Rathee et al., S&P'21) in a
ring of l = 37 bits at scale 12 (BOLT `SCI/tests/bert_bolt/bert.h`: NL_ELL 37, NL_SCALE 12; its GeLU at
GELU_ELL 20, GELU_SCALE 11). This engine has no OT, so each such operator runs as an *ideal
functionality*:

  1. Book the operator's modelled traffic: one ledger step per building block it calls, in the order
     of the implementation (Qi-Pang/EzPC branch `bert`, `SCI/src/FloatingPoint/fp-math.cpp`:
     `gelu_iron`, `softmax_fix_iron_1`, `layer_norm_iron`, `gelu_approx`, `softmax_fix`, `exp4`,
     `layer_norm_fix`). Rows carry `cost_source="model"`; a step of r rounds books its bits in its first
     round and empty rows in the other r - 1 (so rounds count). OT traffic is asymmetric; each direction
     is booked half of the total (P0 the odd bit).
  2. Hand both shares to a trusted party (`mpc.dealer.ideal`: in simulation the dealer, as a single
     party the simulated peers), which opens them, evaluates the function in float64 and re-shares the
     result with fresh randomness. What it evaluates is the system's function: exact where the system
     computes it to fixed-point precision (Iron's tanh-GeLU, softmax and LayerNorm; CrypTFlow2's ReLU;
     SIRNN's sigmoid for SiLU), BOLT's published approximations where it approximates (its degree-4
     GeLU and its exp4 softmax). It is evaluated at this engine's scale, not at l = 37 / scale 12.

Building-block costs (bits on the wire per element, both directions; lambda = 128, IKNP OT extension).
These are the published asymptotic formulas as we recall them from the papers (not re-derived from the
PDFs here, which are not reachable; marked [I] in shared/reference/baselines.md 5.2); every formula is
one function below, pinned by tests/test_ideal.py:
  MILL(l)      millionaires' comparison, radix m = 4: lambda l + 14 l bits, ceil(log2 l) rounds
               (CrypTFlow2 Sec. 3)
  MSB(l)       DReLU / most significant bit = MILL(l - 1) (CrypTFlow2 Sec. 4.1)
  MUX(l)       select by a shared bit, two OTs: 2 (lambda + 2 l) bits, 2 rounds (CrypTFlow2 Sec. 2)
  MUL(l)       secret x secret product by correlated OTs on the cross terms: 2 l lambda + l^2 bits,
               2 rounds (SIRNN Sec. 4)
  TRUNC(l, s)  truncate-reduce by s bits (wrap via a comparison on s bits): lambda (s + 1) + 14 s bits,
               ceil(log2 s) + 1 rounds (SIRNN Sec. 4)
  LUT(d, l)    a 2^d-entry lookup table, 1-out-of-2^d OT: 2 lambda + 2^d l bits, 2 rounds (SIRNN Sec. 3)
  DIGDEC(l, d) digit decomposition into c = ceil(l/d) digits: lambda (c - 1)(d + 2) bits,
               ceil(log2 l) rounds (SIRNN Sec. 4)
and SIRNN's math functions composed from them (SIRNN Sec. 5): EXP = DIGDEC(l, 8) + c LUT(8, l) +
(c - 1)(MUL + TRUNC); RECIP = DIGDEC(l, 8) + c LUT(8, 8) [normalisation] + LUT(8, l) [initial guess]
+ 2 x (2 MUL + 2 TRUNC) [Goldschmidt] + MUL + TRUNC; RSQRT = RECIP with 3 MUL + 3 TRUNC per iteration;
SIGMOID = MSB + MUX + EXP + RECIP + MUL + TRUNC + MUX; TANH = SIGMOID; DIV = RECIP + MUL + TRUNC.
Public-constant multiplications are local products followed by TRUNC; additions, extensions and
reductions are free in this model (their extension protocols are omitted: a known under-count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from comet_core.comm.ledger import Cost, wire_bytes
from comet_core.mpc.dealer import register_ideal_functions
from comet_core.mpc.engine import MPC, AShare

LAMBDA = 128


@dataclass(frozen=True)
class Step:
    """One modelled building block applied to `count` elements: `bits` per element (both directions)."""

    name: str
    count: int
    bits: int
    rounds: int


def _log2(n: int) -> int:
    return max(1, math.ceil(math.log2(max(n, 2))))


# ---- building blocks: (bits per element both directions, rounds) --------------------------------

def MILL(l: int) -> tuple[int, int]:
    return LAMBDA * l + 14 * l, _log2(l)


def MSB(l: int) -> tuple[int, int]:
    return MILL(l - 1)


def MUX(l: int) -> tuple[int, int]:
    return 2 * (LAMBDA + 2 * l), 2


def MUL(l: int) -> tuple[int, int]:
    return 2 * l * LAMBDA + l * l, 2


def TRUNC(l: int, s: int) -> tuple[int, int]:
    return LAMBDA * (s + 1) + 14 * s, _log2(s) + 1


def LUT(d: int, l: int) -> tuple[int, int]:
    return 2 * LAMBDA + (1 << d) * l, 2


def DIGDEC(l: int, d: int) -> tuple[int, int]:
    c = -(-l // d)
    return LAMBDA * (c - 1) * (d + 2), _log2(l)


def _seq(*parts: tuple[int, int], times: int = 1) -> tuple[int, int]:
    """Building blocks run one after the other, `times` times."""
    return sum(p[0] for p in parts) * times, sum(p[1] for p in parts) * times


def EXP(l: int, s: int) -> tuple[int, int]:
    c = -(-l // 8)
    return _seq(DIGDEC(l, 8), _seq(LUT(8, l), times=c), _seq(MUL(l), TRUNC(l, s), times=c - 1))


def RECIP(l: int, s: int) -> tuple[int, int]:
    c = -(-l // 8)
    return _seq(DIGDEC(l, 8), _seq(LUT(8, 8), times=c), LUT(8, l),
                _seq(MUL(l), MUL(l), TRUNC(l, s), TRUNC(l, s), times=2), MUL(l), TRUNC(l, s))


def RSQRT(l: int, s: int) -> tuple[int, int]:
    c = -(-l // 8)
    return _seq(DIGDEC(l, 8), _seq(LUT(8, 8), times=c), LUT(8, l),
                _seq(MUL(l), MUL(l), MUL(l), TRUNC(l, s), TRUNC(l, s), TRUNC(l, s), times=2),
                MUL(l), TRUNC(l, s))


def SIGMOID(l: int, s: int) -> tuple[int, int]:
    return _seq(MSB(l), MUX(l), EXP(l, s), RECIP(l, s), MUL(l), TRUNC(l, s), MUX(l))


TANH = SIGMOID


def DIV(l: int, s: int) -> tuple[int, int]:
    return _seq(RECIP(l, s), MUL(l), TRUNC(l, s))


def MAX_TREE(l: int, n: int) -> list[tuple[str, int, tuple[int, int]]]:
    """Row maximum by a tournament: level i compares `pairs` differences (MSB) and selects (MUX).
    Returns (name, comparisons per row, cost per comparison) per level."""
    levels = []
    while n > 1:
        levels.append(("max.level", n // 2, _seq(MSB(l), MUX(l))))
        n -= n // 2
    return levels


# ---- operators as step lists --------------------------------------------------------------------

@dataclass(frozen=True)
class Params:
    ell: int = 37          # BOLT bert.h NL_ELL (Iron's reimplementation in the same harness: 37)
    scale: int = 12        # NL_SCALE
    gelu_ell: int = 20     # BOLT bert.h GELU_ELL (Iron: NL_ELL)
    gelu_scale: int = 11   # GELU_SCALE


def _steps(n: int, *named: tuple[str, tuple[int, int]]) -> list[Step]:
    return [Step(name, n, c[0], c[1]) for name, c in named]


def relu_steps(p: Params, n: int) -> list[Step]:
    """CrypTFlow2 ReLU: DReLU + MUX (Iron and BOLT run SCI's ReLU for ReLU models)."""
    return _steps(n, ("msb", MSB(p.ell)), ("mux", MUX(p.ell)))


def silu_steps(p: Params, n: int) -> list[Step]:
    """x * sigmoid(x) with SIRNN's sigmoid (SiLU models; neither paper defines SiLU)."""
    return _steps(n, ("sigmoid", SIGMOID(p.ell, p.scale)), ("mul", MUL(p.ell)), ("trunc", TRUNC(p.ell, p.scale)))


def iron_gelu_steps(p: Params, n: int) -> list[Step]:
    """fp-math.cpp gelu_iron: x^2, x^3 (MUL + TRUNC each), * 0.044715 and * sqrt(2/pi) (TRUNC each),
    SIRNN tanh, 0.5 x (TRUNC), product (MUL + TRUNC)."""
    l, s = p.ell, p.scale
    return _steps(n, ("x2", _seq(MUL(l), TRUNC(l, s))), ("x3", _seq(MUL(l), TRUNC(l, s))),
                  ("consts", _seq(TRUNC(l, s), TRUNC(l, s))), ("tanh", TANH(l, s)),
                  ("half_x", TRUNC(l, s)), ("out", _seq(MUL(l), TRUNC(l, s))))


def bolt_gelu_steps(p: Params, n: int) -> list[Step]:
    """fp-math.cpp gelu_approx at GELU_ELL/GELU_SCALE: |x| (MSB + MUX), z = y (y - 4.90) and the product
    (MUL + TRUNC each), two public multiplies (TRUNC each), y > 2.7 (MILL), (x + y) / 2 (TRUNC), MUX."""
    l, s = p.gelu_ell, p.gelu_scale
    return _steps(n, ("abs", _seq(MSB(l), MUX(l))), ("z", _seq(MUL(l), TRUNC(l, s))),
                  ("poly", _seq(MUL(l), TRUNC(l, s))), ("consts", _seq(TRUNC(l, s), TRUNC(l, s))),
                  ("gt2.7", MILL(l)), ("half", TRUNC(l, s)), ("select", MUX(l)))


def _max_steps(p: Params, rows: int, n: int) -> list[Step]:
    return [Step(name, rows * k, c[0], c[1]) for name, k, c in MAX_TREE(p.ell, n)]


def iron_softmax_steps(p: Params, rows: int, n: int) -> list[Step]:
    """fp-math.cpp softmax_fix_iron_1: tree max, SIRNN LUT exp per element, division per element
    (fix->div on the replicated row sum)."""
    N = rows * n
    return _max_steps(p, rows, n) + _steps(N, ("exp", EXP(p.ell, p.scale)), ("div", DIV(p.ell, p.scale)))


def bolt_softmax_steps(p: Params, rows: int, n: int) -> list[Step]:
    """fp-math.cpp softmax_fix + exp4: tree max; per element x / -ln2 and its integer part (2 TRUNC),
    l ln2 (TRUNC), poly (p + 1.353)^2 (MUL + TRUNC) * 0.3585 (TRUNC), l > 13 (MILL) + clip (MUX), secret
    right shift (LUT on the 4-bit shift + MUL + TRUNC); per row reciprocal of the sum (div_batch), per
    element product (MUL + TRUNC)."""
    l, s = p.ell, p.scale
    N = rows * n
    return (_max_steps(p, rows, n)
            + _steps(N, ("exp4.range", _seq(TRUNC(l, s), TRUNC(l, s), TRUNC(l, s))),
                     ("exp4.poly", _seq(MUL(l), TRUNC(l, s), TRUNC(l, s))),
                     ("exp4.clip", _seq(MILL(l - s), MUX(l - s))),
                     ("exp4.shift", _seq(LUT(4, l), MUL(l), TRUNC(l, s))))
            + _steps(rows, ("recip", RECIP(l, s)))
            + _steps(N, ("scale", _seq(MUL(l), TRUNC(l, s)))))


def layernorm_steps(p: Params, rows: int, d: int) -> list[Step]:
    """fp-math.cpp layer_norm_iron / layer_norm_fix up to the weight: mean (TRUNC per row), (x - mu)^2
    (MUL + TRUNC), variance (TRUNC per row), SIRNN rsqrt per row, (x - mu) * rsqrt (MUL + TRUNC). The
    weight and bias are applied afterwards by the engine's own (measured) multiply."""
    l, s = p.ell, p.scale
    N = rows * d
    return (_steps(rows, ("mean", TRUNC(l, 2 * s)))
            + _steps(N, ("square", _seq(MUL(l), TRUNC(l, s))))
            + _steps(rows, ("var", TRUNC(l, 2 * s)), ("rsqrt", RSQRT(l, s)))
            + _steps(N, ("scale", _seq(MUL(l), TRUNC(l, s)))))


def steps_cost(steps: list[Step]) -> Cost:
    """What `book` writes for these steps (bytes per direction rounded up per row)."""
    online = 0
    for st in steps:
        online += wire_bytes(st.count, (st.bits + 1) // 2) + wire_bytes(st.count, st.bits // 2)
    return Cost(online, 0, sum(st.rounds for st in steps))


def book(mpc: MPC, steps: list[Step]) -> None:
    """Write the modelled messages into the ledger (cost_source=model)."""
    led = mpc.ledger
    for st in steps:
        for i in range(st.rounds):
            r = led.new_round()
            n = st.count if i == 0 else 0
            led.record("online", "P0", "P1", n, (st.bits + 1) // 2, r, cost_source="model")
            led.record("online", "P1", "P0", n, st.bits // 2, r, cost_source="model")


# ---- the functions the trusted party evaluates (float64) -----------------------------------------

def plain_relu(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x.double(), min=0.0)


def plain_silu(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x * torch.sigmoid(x)


def plain_gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


BOLT_GELU = dict(a=-4.901373660634577, b=-24.822721454603112, c=31.65224017185284, d=785.77248299658,
                 e=0.02084861175412759, cut=2.7)   # fp-math.cpp gelu_approx


def plain_bolt_gelu(x: torch.Tensor) -> torch.Tensor:
    """BOLT: y = |x|, z = y (y + a), p = e ((z + y + b)(z + c) + d); 0.5 x + p for y <= 2.7, else (x + y)/2."""
    x = x.double()
    k = BOLT_GELU
    y = x.abs()
    z = y * (y + k["a"])
    p = k["e"] * ((z + y + k["b"]) * (z + k["c"]) + k["d"])
    return torch.where(y > k["cut"], (x + y) / 2, 0.5 * x + p)


def _masked(x: torch.Tensor, mask) -> torch.Tensor:
    x = x.double()
    if mask is None:
        return x
    return torch.where(mask.bool().expand(x.shape), x, torch.full_like(x, -math.inf))


def plain_softmax(x: torch.Tensor, mask=None) -> torch.Tensor:
    return torch.softmax(_masked(x, mask), -1)


BOLT_EXP = dict(a=0.3585, b=1.353, c=0.344, max_shift=13)  # exp4 poly1 (1468, 5542, 1409 at scale 12)


def plain_bolt_exp(z: torch.Tensor) -> torch.Tensor:
    """BOLT exp4 for z <= 0: l = floor(-z / ln 2), p = z + l ln 2, (a (p + b)^2 + c) / 2^l, 0 for l >= 13."""
    z = z.double()
    k = BOLT_EXP
    l = torch.floor(-z / math.log(2.0))
    p = z + l * math.log(2.0)
    poly = k["a"] * (p + k["b"]) ** 2 + k["c"]
    return torch.where(l >= k["max_shift"], 0.0, poly * torch.pow(2.0, -l.clamp(max=k["max_shift"])))


def plain_bolt_softmax(x: torch.Tensor, mask=None) -> torch.Tensor:
    x = _masked(x, mask)
    z = x - x.max(-1, keepdim=True).values
    e = torch.where(torch.isinf(z), 0.0, plain_bolt_exp(torch.nan_to_num(z, neginf=-1e4)))
    return e / e.sum(-1, keepdim=True)


def plain_normalize(x: torch.Tensor, family: str, eps: float) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) (LayerNorm) or x / sqrt(mean(x^2) + eps) (RMSNorm), no weight."""
    x = x.double()
    if family == "opt":
        xc = x - x.mean(-1, keepdim=True)
    else:
        xc = x
    return xc / torch.sqrt((xc * xc).mean(-1, keepdim=True) + eps)


FUNCTIONS = {
    "relu": plain_relu, "silu": plain_silu, "gelu_tanh": plain_gelu_tanh, "bolt_gelu": plain_bolt_gelu,
    "softmax": plain_softmax, "bolt_softmax": plain_bolt_softmax, "normalize": plain_normalize,
}
register_ideal_functions(FUNCTIONS)   # what the trusted party evaluates (Dealer.ideal)


# ---- the protocol wrapper ----------------------------------------------------------------------

def ideal_op(x: AShare, fn: str, steps: list[Step], **kwargs) -> AShare:
    """Run `fn` as an ideal functionality on x, booking `steps` (see the module docstring).

    1. Book the modelled steps (cost_source=model).
    2. Both shares go to the trusted party (mpc.dealer.ideal), which returns fresh shares of fn(x)
       at scale frac_bits.
    Cost: steps_cost(steps); nothing offline (the model has no dealer).
    """
    mpc = x.mpc
    with mpc.ledger.protocol(f"ideal.{fn}"):
        book(mpc, steps)
        mpc.ledger.work.add("float_elem", x.numel())   # the trusted party's float64 evaluation (comm/work.py)
        return mpc.dealer.ideal(x.data, x.frac, fn, mpc.frac_bits, kwargs)
