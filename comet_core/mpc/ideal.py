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
     round and empty rows in the other r - 1 (so rounds count). Each direction is booked as the
     protocol sends it (OT traffic is one-sided: the receiver sends the OT columns, the sender the
     masked messages).
  2. Hand both shares to a trusted party (`mpc.dealer.ideal`: in simulation the dealer, as a single
     party the simulated peers), which opens them, evaluates the function in float64 and re-shares the
     result with fresh randomness. What it evaluates is the system's function: exact where the system
     computes it to fixed-point precision (Iron's tanh-GeLU, softmax and LayerNorm; CrypTFlow2's ReLU;
     SIRNN's sigmoid for SiLU), BOLT's published approximations where it approximates (its degree-4
     GeLU and its exp4 softmax). It is evaluated at this engine's scale, not at l = 37 / scale 12.

Building-block costs. Every block is a set of OT instances plus plain messages, priced per element and
per direction (P0 = SCI's ALICE, the OT sender of comparisons and lookups; P1 = BOB, the receiver)
under the OT flavour `ot` (`system.ot`). Sources: [S] read through the code search here, [R] recalled
from the papers, not re-read (their PDFs are not reachable); pinned by tests/test_ideal.py.
  OT instances (R = receiver, S = sender; per OT):
    iknp    1-out-of-2 of l-bit messages: R -> S lambda = 128 bits (its IKNP matrix column), S -> R 2 l
            bits (l for a correlated OT) [S mpc-msri/EzPC SCI/src/OT/split-iknp.h, SplitIKNP::recv_pre,
            got_send_post, cot_send_post]; 1-out-of-N (N <= 256): R -> S 256 bits (Walsh-Hadamard
            codeword), S -> R N l bits [S SCI/src/OT/split-kkot.h, SplitKKOT lambda = 256, got_send_post].
    silent  Ferret correlated OT: a random COT costs FERRET_BITS_PER_COT amortised (half each way; the
            one-off setup not counted) [R Ferret, Yang et al. CCS'20, "0.44 bits per COT"; a note found
            by the code search says 0.45]; a chosen-choice 1-out-of-2 OT adds 1 choice bit R -> S and
            the sender's 2 l (or l) bits; 1-out-of-N is log2 N of them plus N l sender bits [S Cheetah's
            SCI fork, cheetah::SilentOT in silent_ot.h (author Zhicong Huang): send_ot_cm_cc /
            recv_ot_cm_cc for N messages, recv_ot_rcm_cc -> ferret->recv_cot].
  MILL(l)      millionaires' comparison, radix 2^4 (SCI's default), q = ceil(l/4) digits, r = l mod 4,
               L = bitlen(q) [S SCI/src/Millionaire/millionaire.h, compare and configure, non-WAN path]:
               leaf OTs 1-of-16 (first digit 1-bit messages, the others 2-bit; a short top digit
               1-of-2^r), bit triples 2q - 2 - 2L in pairs from 1-of-8 OTs and L in pairs from 1-of-16 OTs
               [S SCI/src/Millionaire/bit-triple-generator.h, _8KKOT and _16KKOT_to_4OT], each AND
               opening 2 bits per party; 2 + ceil(log2 q) rounds (leaf OT, then one AND level per tree
               level). Under iknp at l = 37: 4,700 bits (4,252 from P1), within CrypTFlow2's published
               bound lambda l + 14 l = 5,254 (CrypTFlow2 Sec. 3) [R, the bound].
  MSB(l)       = MILL(l - 1) (CrypTFlow2 Sec. 4.1: DReLU from the wrap of the low l - 1 bits) [R].
  MUX(l)       two 1-of-2 OTs of l-bit messages, one each way (each party sender once): per direction
               lambda + 2 l, 2 rounds [S SCI/src/OT/ot_pack.h: iknp_straight / iknp_reversed "needed for
               MUX calls"; 2 (lambda + 2 l) in all, CrypTFlow2 Sec. 2, R].
  MUL(l)       secret x secret by correlated OTs on the cross terms: l COTs each way of l/2-bit messages
               on average, 2 l lambda + l^2 bits in all under iknp, 2 rounds (SIRNN Sec. 4) [R].
  TRUNC(l, s)  truncate-reduce (what fp-math's truncate_reduce calls): the wrap of the low s bits by
               MILL(s), then its arithmetic share in l - s bits by one COT (B2A), 1 more round
               [S SCI/src/BuildingBlocks/truncation.cpp, Truncation::truncate_and_reduce:
               aux->wrap_computation(.., shift) then aux->B2A(wrap, .., bw - shift)]; SIRNN's published
               lambda (s + 1) + 14 s (Sec. 4) [R] has the same structure.
  LUT(d, l)    one 1-out-of-2^d OT of l-bit entries, 2 rounds (SIRNN Sec. 3) [R]; priced by the rows above.
  DIGDEC(l, d) digit decomposition into c = ceil(l/d) digits: (c - 1)(d + 2) 1-of-2 OT columns, no
               message bits, ceil(log2 l) rounds: lambda (c - 1)(d + 2) under iknp (SIRNN Sec. 4) [R, the
               least sure term].
and SIRNN's math functions composed from them (SIRNN Sec. 5) [R]: EXP = DIGDEC(l, 8) + c LUT(8, l) +
(c - 1)(MUL + TRUNC); RECIP = DIGDEC(l, 8) + c LUT(8, 8) [normalisation] + LUT(8, l) [initial guess]
+ 2 x (2 MUL + 2 TRUNC) [Goldschmidt] + MUL + TRUNC; RSQRT = RECIP with 3 MUL + 3 TRUNC per iteration;
SIGMOID = MSB + MUX + EXP + RECIP + MUL + TRUNC + MUX; TANH = SIGMOID; DIV = RECIP + MUL + TRUNC.
Which blocks each operator calls, how many and in which order is [S] fp-math.cpp (above).
The default flavour is iknp because that is what their code runs: BOLT's harness builds one SCI OTPack
per thread (Qi-Pang/EzPC branch bert, SCI/tests/bert/nonlinear.cpp, NonLinear::NonLinear) and SCI's
OTPack is SplitKKOT + SplitIKNP (ot_pack.h), with no silent OT in that tree; Iron published no code and
builds on the same SCI blocks [R]. `silent` prices the Cheetah / SPU-CHEETAH style (measured beside it
in results/he_anchor/).
Public-constant multiplications are local products followed by TRUNC; additions, extensions and
reductions are free in this model (their extension protocols are omitted: a known under-count).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from comet_core.comm.ledger import Cost, wire_bytes
from comet_core.mpc.dealer import register_ideal_functions
from comet_core.mpc.engine import MPC, AShare

log = logging.getLogger(__name__)

LAMBDA = 128                 # IKNP's matrix width (SCI split-iknp.h lambda)
KKOT_WIDTH = 256             # 1-out-of-N OT's codeword width (SCI split-kkot.h lambda)
FERRET_BITS_PER_COT = 0.45   # Ferret's amortised traffic per random COT [R; see the module docstring]
OT_FLAVOURS = ("iknp", "silent")


@dataclass(frozen=True)
class Block:
    """A building block per element: bits P0 -> P1, bits P1 -> P0, rounds, and its OT work in 1-of-2 OT
    equivalents (log2 N per 1-out-of-N OT, either flavour: what a per-OT CPU cost multiplies)."""

    p0: float
    p1: float
    rounds: int
    ots: float = 0.0

    @property
    def bits(self) -> float:
        return self.p0 + self.p1

    def __add__(self, o: "Block") -> "Block":
        return Block(self.p0 + o.p0, self.p1 + o.p1, self.rounds + o.rounds, self.ots + o.ots)

    def __mul__(self, k: float) -> "Block":
        return Block(self.p0 * k, self.p1 * k, int(self.rounds * k), self.ots * k)


ZERO = Block(0.0, 0.0, 0)


@dataclass(frozen=True)
class Step:
    """One modelled building block applied to `count` elements: `p0` / `p1` bits per element sent by
    P0 / P1 (whole bits, rounded up), in `rounds` rounds."""

    name: str
    count: int
    p0: int
    p1: int
    rounds: int
    ots: float = 0.0       # OT work per element (Block.ots)

    @property
    def bits(self) -> int:
        return self.p0 + self.p1


def _log2(n: int) -> int:
    return max(1, math.ceil(math.log2(max(n, 2))))


def _check(ot: str) -> None:
    if ot not in OT_FLAVOURS:
        raise ValueError(f"unknown OT flavour {ot!r}; valid: {', '.join(OT_FLAVOURS)}")


def ot(n: int, msg: float, count: float, ot: str, receiver: str = "P1", correlated: bool = False) -> Block:
    """`count` 1-out-of-n OTs of `msg`-bit messages (no rounds: the caller's block counts them)."""
    _check(ot)
    sender_bits = (msg if correlated else n * msg) * count
    logn = math.log2(n)
    if ot == "iknp":
        recv_bits = (LAMBDA if n == 2 else KKOT_WIDTH) * count
    else:
        cots = logn * count
        recv_bits = cots * (1 + FERRET_BITS_PER_COT / 2)
        sender_bits += cots * FERRET_BITS_PER_COT / 2
    if receiver == "P1":
        return Block(sender_bits, recv_bits, 0, logn * count)
    return Block(recv_bits, sender_bits, 0, logn * count)


def _plain(bits_each_way: float, rounds: int = 0) -> Block:
    return Block(bits_each_way, bits_each_way, rounds)


def _bitlen(n: int) -> int:
    return max(1, int(n).bit_length())


# ---- building blocks ------------------------------------------------------------------------------

def MILL(l: int, ot_: str = "iknp", beta: int = 4) -> Block:
    q, r = -(-l // beta), l % beta
    if q == 1:
        return ot(1 << l, 1, 1, ot_) + Block(0, 0, 2)
    L = _bitlen(q)
    leaves = ot(1 << beta, 1, 1, ot_) + ot(1 << beta, 2, q - 2 if r else q - 1, ot_)
    if r:
        leaves = leaves + ot(1 << r, 2, 1, ot_)
    corr = max(0, 2 * q - 2 - 2 * L)
    triples = ot(8, 2, corr / 2, ot_) + ot(16, 2, L / 2, ot_)
    ands = _plain(2 * (corr + L))
    return leaves + triples + ands + Block(0, 0, 2 + math.ceil(math.log2(q)))


def MSB(l: int, ot_: str = "iknp") -> Block:
    return MILL(l - 1, ot_)


def MUX(l: int, ot_: str = "iknp") -> Block:
    return ot(2, l, 1, ot_, "P1") + ot(2, l, 1, ot_, "P0") + Block(0, 0, 2)


def MUL(l: int, ot_: str = "iknp") -> Block:
    half = l / 2
    return (ot(2, half, l, ot_, "P1", correlated=True) + ot(2, half, l, ot_, "P0", correlated=True)
            + Block(0, 0, 2))


def TRUNC(l: int, s: int, ot_: str = "iknp") -> Block:
    return MILL(s, ot_) + ot(2, l - s, 1, ot_, correlated=True) + Block(0, 0, 1)


def LUT(d: int, l: int, ot_: str = "iknp") -> Block:
    return ot(1 << d, l, 1, ot_) + Block(0, 0, 2)


def DIGDEC(l: int, d: int, ot_: str = "iknp") -> Block:
    c = -(-l // d)
    # the recalled formula counts the OTs' columns only (message bits 0)
    return ot(2, 0, (c - 1) * (d + 2), ot_, correlated=True) + Block(0, 0, _log2(l))


def _seq(*parts: Block, times: int = 1) -> Block:
    """Building blocks run one after the other, `times` times."""
    total = ZERO
    for p in parts:
        total = total + p
    return Block(total.p0 * times, total.p1 * times, total.rounds * times, total.ots * times)


def EXP(l: int, s: int, o: str = "iknp") -> Block:
    c = -(-l // 8)
    return _seq(DIGDEC(l, 8, o), _seq(LUT(8, l, o), times=c), _seq(MUL(l, o), TRUNC(l, s, o), times=c - 1))


def RECIP(l: int, s: int, o: str = "iknp") -> Block:
    c = -(-l // 8)
    return _seq(DIGDEC(l, 8, o), _seq(LUT(8, 8, o), times=c), LUT(8, l, o),
                _seq(MUL(l, o), MUL(l, o), TRUNC(l, s, o), TRUNC(l, s, o), times=2), MUL(l, o), TRUNC(l, s, o))


def RSQRT(l: int, s: int, o: str = "iknp") -> Block:
    c = -(-l // 8)
    return _seq(DIGDEC(l, 8, o), _seq(LUT(8, 8, o), times=c), LUT(8, l, o),
                _seq(MUL(l, o), MUL(l, o), MUL(l, o), TRUNC(l, s, o), TRUNC(l, s, o), TRUNC(l, s, o), times=2),
                MUL(l, o), TRUNC(l, s, o))


def SIGMOID(l: int, s: int, o: str = "iknp") -> Block:
    return _seq(MSB(l, o), MUX(l, o), EXP(l, s, o), RECIP(l, s, o), MUL(l, o), TRUNC(l, s, o), MUX(l, o))


TANH = SIGMOID


def DIV(l: int, s: int, o: str = "iknp") -> Block:
    return _seq(RECIP(l, s, o), MUL(l, o), TRUNC(l, s, o))


def MAX_TREE(l: int, n: int, o: str = "iknp") -> list[tuple[str, int, Block]]:
    """Row maximum by a tournament: level i compares `pairs` differences (MSB) and selects (MUX).
    Returns (name, comparisons per row, cost per comparison) per level."""
    levels = []
    while n > 1:
        levels.append(("max.level", n // 2, _seq(MSB(l, o), MUX(l, o))))
        n -= n // 2
    return levels


# ---- operators as step lists --------------------------------------------------------------------

@dataclass(frozen=True)
class Params:
    ell: int = 37          # BOLT bert.h NL_ELL (Iron's reimplementation in the same harness: 37)
    scale: int = 12        # NL_SCALE
    gelu_ell: int = 20     # BOLT bert.h GELU_ELL (Iron: NL_ELL)
    gelu_scale: int = 11   # GELU_SCALE
    ot: str = "iknp"       # system.ot: the OT flavour their code runs (SCI's OTPack: IKNP + KKOT)


def _steps(n: int, *named: tuple[str, Block]) -> list[Step]:
    return [Step(name, n, math.ceil(c.p0 - 1e-9), math.ceil(c.p1 - 1e-9), c.rounds, c.ots) for name, c in named]


def relu_steps(p: Params, n: int) -> list[Step]:
    """CrypTFlow2 ReLU: DReLU + MUX (Iron and BOLT run SCI's ReLU for ReLU models)."""
    return _steps(n, ("msb", MSB(p.ell, p.ot)), ("mux", MUX(p.ell, p.ot)))


def silu_steps(p: Params, n: int) -> list[Step]:
    """x * sigmoid(x) with SIRNN's sigmoid (SiLU models; neither paper defines SiLU)."""
    o = p.ot
    return _steps(n, ("sigmoid", SIGMOID(p.ell, p.scale, o)), ("mul", MUL(p.ell, o)), ("trunc", TRUNC(p.ell, p.scale, o)))


def iron_gelu_steps(p: Params, n: int) -> list[Step]:
    """fp-math.cpp gelu_iron: x^2, x^3 (MUL + TRUNC each), * 0.044715 and * sqrt(2/pi) (TRUNC each),
    SIRNN tanh, 0.5 x (TRUNC), product (MUL + TRUNC)."""
    l, s, o = p.ell, p.scale, p.ot
    return _steps(n, ("x2", _seq(MUL(l, o), TRUNC(l, s, o))), ("x3", _seq(MUL(l, o), TRUNC(l, s, o))),
                  ("consts", _seq(TRUNC(l, s, o), TRUNC(l, s, o))), ("tanh", TANH(l, s, o)),
                  ("half_x", TRUNC(l, s, o)), ("out", _seq(MUL(l, o), TRUNC(l, s, o))))


def bolt_gelu_steps(p: Params, n: int) -> list[Step]:
    """fp-math.cpp gelu_approx at GELU_ELL/GELU_SCALE: |x| (MSB + MUX), z = y (y - 4.90) and the product
    (MUL + TRUNC each), two public multiplies (TRUNC each), y > 2.7 (MILL), (x + y) / 2 (TRUNC), MUX."""
    l, s, o = p.gelu_ell, p.gelu_scale, p.ot
    return _steps(n, ("abs", _seq(MSB(l, o), MUX(l, o))), ("z", _seq(MUL(l, o), TRUNC(l, s, o))),
                  ("poly", _seq(MUL(l, o), TRUNC(l, s, o))), ("consts", _seq(TRUNC(l, s, o), TRUNC(l, s, o))),
                  ("gt2.7", MILL(l, o)), ("half", TRUNC(l, s, o)), ("select", MUX(l, o)))


def _max_steps(p: Params, rows: int, n: int) -> list[Step]:
    return [Step(name, rows * k, math.ceil(c.p0), math.ceil(c.p1), c.rounds, c.ots)
            for name, k, c in MAX_TREE(p.ell, n, p.ot)]


def iron_softmax_steps(p: Params, rows: int, n: int) -> list[Step]:
    """fp-math.cpp softmax_fix_iron_1: tree max, SIRNN LUT exp per element, division per element
    (fix->div on the replicated row sum)."""
    N = rows * n
    return _max_steps(p, rows, n) + _steps(N, ("exp", EXP(p.ell, p.scale, p.ot)), ("div", DIV(p.ell, p.scale, p.ot)))


def bolt_softmax_steps(p: Params, rows: int, n: int) -> list[Step]:
    """fp-math.cpp softmax_fix + exp4: tree max; per element x / -ln2 and its integer part (2 TRUNC),
    l ln2 (TRUNC), poly (p + 1.353)^2 (MUL + TRUNC) * 0.3585 (TRUNC), l > 13 (MILL) + clip (MUX), secret
    right shift (LUT on the 4-bit shift + MUL + TRUNC); per row reciprocal of the sum (div_batch), per
    element product (MUL + TRUNC)."""
    l, s, o = p.ell, p.scale, p.ot
    N = rows * n
    return (_max_steps(p, rows, n)
            + _steps(N, ("exp4.range", _seq(TRUNC(l, s, o), TRUNC(l, s, o), TRUNC(l, s, o))),
                     ("exp4.poly", _seq(MUL(l, o), TRUNC(l, s, o), TRUNC(l, s, o))),
                     ("exp4.clip", _seq(MILL(l - s, o), MUX(l - s, o))),
                     ("exp4.shift", _seq(LUT(4, l, o), MUL(l, o), TRUNC(l, s, o))))
            + _steps(rows, ("recip", RECIP(l, s, o)))
            + _steps(N, ("scale", _seq(MUL(l, o), TRUNC(l, s, o)))))


def layernorm_steps(p: Params, rows: int, d: int) -> list[Step]:
    """fp-math.cpp layer_norm_iron / layer_norm_fix up to the weight: mean (TRUNC per row), (x - mu)^2
    (MUL + TRUNC), variance (TRUNC per row), SIRNN rsqrt per row, (x - mu) * rsqrt (MUL + TRUNC). The
    weight and bias are applied afterwards by the engine's own (measured) multiply."""
    l, s, o = p.ell, p.scale, p.ot
    N = rows * d
    return (_steps(rows, ("mean", TRUNC(l, 2 * s, o)))
            + _steps(N, ("square", _seq(MUL(l, o), TRUNC(l, s, o))))
            + _steps(rows, ("var", TRUNC(l, 2 * s, o)), ("rsqrt", RSQRT(l, s, o)))
            + _steps(N, ("scale", _seq(MUL(l, o), TRUNC(l, s, o)))))


def steps_cost(steps: list[Step]) -> Cost:
    """What `book` writes for these steps."""
    online = 0
    for st in steps:
        online += wire_bytes(st.count, st.p0) + wire_bytes(st.count, st.p1)
    return Cost(online, 0, sum(st.rounds for st in steps))


def steps_direction_bytes(steps: list[Step]) -> tuple[int, int]:
    """(bytes P0 -> P1, bytes P1 -> P0) that `book` writes."""
    return (sum(wire_bytes(st.count, st.p0) for st in steps), sum(wire_bytes(st.count, st.p1) for st in steps))


def steps_ot_instances(steps: list[Step]) -> float:
    """The steps' OT work in 1-of-2 OT equivalents (what `book` counts as work kind "ot")."""
    return sum(st.count * st.ots for st in steps)


try:   # the work counters of the compute model (comet_core/comm/work.py), where present
    from comet_core.comm.work import register_kind as _register_kind
    _register_kind("ot", "1-of-2 OT equivalent", "mpc/ideal.py: the OT instances of an OT-based ideal "
                   "functionality's modelled steps (log2 N per 1-out-of-N OT), priced by a per-OT CPU cost")
except ImportError:        # pragma: no cover - the counters are not on this branch yet
    _register_kind = None


def book(mpc: MPC, steps: list[Step]) -> None:
    """Write the modelled messages into the ledger (cost_source=model), each direction as the protocol
    sends it (an OT's receiver sends the lambda columns, its sender the masked messages), and their OT
    work as kind "ot" where the ledger keeps work counters (the hook of the compute model)."""
    led = mpc.ledger
    work = getattr(led, "work", None)
    if work is not None and _register_kind is not None:
        work.add("ot", steps_ot_instances(steps))
    for st in steps:
        for i in range(st.rounds):
            r = led.new_round()
            n = st.count if i == 0 else 0
            led.record("online", "P0", "P1", n, st.p0, r, cost_source="model")
            led.record("online", "P1", "P0", n, st.p1, r, cost_source="model")


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


def ring_he_lift(dealer, data: torch.Tensor, out_frac: int, modulus: int, f_in: int):
    """he_linear's lift (priced as BOLT's gt_p_sub): shares mod `modulus` (t = 2^ell, or BOLT's prime p) of
    x W + b at scale f_in -> fresh Z_2^64 shares of its signed value at out_frac, by one rounding. Exact
    while |x W + b| < t / 4 at scale f_in; a result within a factor 2 of that is logged."""
    v = torch.remainder(data[0] + data[1], modulus)         # two residues < 2^60: the sum fits int64
    v = torch.where(v >= modulus // 2, v - modulus, v)
    if v.numel() and int(v.abs().max()) >= modulus // 4:
        log.warning("he_linear: a result reaches %.3g, within a factor 2 of the exact range +-%.3g (t ~ 2^%d)",
                    float(v.abs().max()) / 2 ** f_in, modulus / 2 / 2 ** f_in, int(modulus).bit_length() - 1)
    shift = f_in - out_frac
    if shift > 0:
        v = (v + (1 << (shift - 1))) >> shift
    return dealer._arith(v, out_frac)


def ring_he_to_field(dealer, data: torch.Tensor, out_frac: int, p: int):
    """BOLT's ss_to_he conversion of the input, ideal: Z_2^64 shares -> shares mod the prime p of the signed
    value, P1's uniform in [0, p), P0's the value minus it (its free local step in BOLT's code)."""
    from comet_core.mpc.he_simd import uniform_mod

    xv = torch.remainder(data[0] + data[1], p)
    x1 = torch.from_numpy(uniform_mod(p, xv.numel()).view(np.int64).copy()).reshape(xv.shape)
    return torch.stack([torch.remainder(xv - x1, p), x1])


ring_he_lift.on_ring = ring_he_to_field.on_ring = True

FUNCTIONS = {
    "relu": plain_relu, "silu": plain_silu, "gelu_tanh": plain_gelu_tanh, "bolt_gelu": plain_bolt_gelu,
    "softmax": plain_softmax, "bolt_softmax": plain_bolt_softmax, "normalize": plain_normalize,
    "he_lift": ring_he_lift, "he_to_field": ring_he_to_field,
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
