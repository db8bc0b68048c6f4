"""BOLT (Pang et al., S&P 2024) as Comet compared it: Comet's linear layers, BOLT's non-linear protocols.

BOLT's non-linear protocols are OT-based (SCI building blocks at l = 37, scale 12; GeLU at l = 20,
scale 11); they run here as ideal functionalities (comet_core/mpc/ideal.py) priced per building block
(cost_source=model). Where BOLT approximates, the functionality evaluates BOLT's approximation:
  * GeLU -> BOLT's degree-4 polynomial in |x| plus 0.5x, (x + |x|)/2 beyond |x| > 2.7 (gelu_approx).
  * softmax -> BOLT's exp4 (range reduction by ln 2, 0.3585(p + 1.353)^2 + 0.344, shift clipped at 13)
    divided by the row sum (softmax_fix).
  * LayerNorm / RMSNorm -> exact normalisation (layer_norm_fix: SIRNN rsqrt) + engine affine.
  * ReLU (OPT) -> exact ReLU priced as CrypTFlow2's DReLU + MUX (BOLT defines only GeLU; SCI's ReLU).
  * SiLU (Llama) -> exact x * sigmoid(x) priced as SIRNN's sigmoid + one multiplication.
  * linear -> dense Beaver matmul (Comet's linear layers, the default as Comet compared BOLT), or with
    `system.linear=he` BOLT's HE products priced by the BFV ciphertexts its code sends and the mod-p
    reduction after each (comet_core/mpc/he_linear.py): with `system.he_packing=bolt` (default) BOLT's
    compact packing as an ideal functionality, with `system.he_packing=cheetah` a real BFV product on the
    shares in exact mode (TenSEAL; Cheetah's coefficient packing, more ciphertexts than BOLT's).
  * word elimination (`system.word_elimination=true`, off by default, encoder passes only): after layer
    `we_layer` only ceil(keep * T) tokens go on, chosen by an oblivious bitonic sort of their scores
    (its compare-swaps priced as MSB + MUX over the token's d + 1 values: BOLT's code sorts and swaps
    by a bitonic network, fp-math.cpp bitonic_sort_and_swap [S]). The layer (4) and the kept share (1/2)
    are recalled from the BOLT paper's word-elimination section [R]; mode=cost only (the exact-mode
    choice of tokens by score is not implemented).
"""

from __future__ import annotations

import math

from comet_core.errors import CometError
from comet_core.mpc import ideal
from comet_core.systems import operators as ops
from comet_core.systems.dense import DenseSystem


def word_elimination_steps(p: ideal.Params, tokens: int, d: int) -> list[ideal.Step]:
    """Bitonic sort of `tokens` scores carrying their d-wide token vectors: (T/2) log2 T (log2 T + 1) / 2
    compare-swaps (T padded to a power of two), each an MSB on the score difference and a MUX of d + 1 values."""
    t = 1 << max(1, math.ceil(math.log2(max(tokens, 2))))
    k = int(math.log2(t))
    swaps = (t // 2) * k * (k + 1) // 2
    cmp = ideal.MSB(p.ell, p.ot)
    mux = ideal.MUX(p.ell, p.ot) * (d + 1)
    return [ideal.Step("word_elim.cmp", swaps, math.ceil(cmp.p0), math.ceil(cmp.p1), cmp.rounds * k * (k + 1) // 2),
            ideal.Step("word_elim.swap", swaps, math.ceil(mux.p0), math.ceil(mux.p1), ideal.MUX(p.ell, p.ot).rounds)]


class BoltSystem(DenseSystem):
    name = "bolt"
    ACTIVATIONS = {"relu": "ot_relu", "silu": "ot_silu", "gelu": "bolt_gelu"}
    SOFTMAX = "bolt"
    NORM = "ot_exact"
    IDEAL_PARAMS = staticmethod(ops._bolt_params)
    LINEARS = ("beaver", "he")
    HE_PACKINGS = ("bolt", "cheetah")

    def __init__(self, cfg=None) -> None:
        super().__init__(cfg)
        self.word_elimination = bool(self.cfg.word_elimination)
        self.we_layer = int(self.params.get("we_layer", 4))
        self.we_keep = float(self.params.get("we_keep", 0.5))

    def validate(self, mode: str, model, gen_tokens: int = 1) -> None:
        if not self.word_elimination:
            return
        if mode != "cost":
            raise CometError("system.word_elimination=true is priced in mode=cost only (the exact choice of "
                             "tokens by score is not implemented); use mode=cost or drop it")
        if int(gen_tokens) > 1:
            raise CometError("system.word_elimination=true prunes an encoder pass; it is off for generation "
                             "(use gen_tokens=1)")

    def after_layer(self, decoder, x, layer: int):
        """Word elimination after layer `we_layer - 1`: book the sort, keep the first ceil(keep T) rows
        (cost mode: which rows is immaterial to the ledger)."""
        if not self.word_elimination or layer != self.we_layer - 1:
            return x
        T, d = x.shape[0], x.shape[-1]
        keep = max(1, math.ceil(self.we_keep * T))
        mpc = x.mpc
        with mpc.label(layer=layer, op="word_elim"), mpc.ledger.protocol("ideal.word_elim"):
            ideal.book(mpc, word_elimination_steps(self.params["_ideal"], T, d))
        return x[:keep]
