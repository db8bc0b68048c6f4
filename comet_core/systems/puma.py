"""PUMA (Dong et al., arXiv 2307.12533): piecewise polynomials, ported to 2PC as the SecFormer repo did.

PUMA runs on SecretFlow-SPU's 3-party ABY3; the paper compared it on the CrypTen 2PC backend that the
SecFormer repository ships (`efficiency/utils.py`: puma_gelu, puma_softmax, puma_norm). We follow that
port's structure (CrypTen-style comparisons and Beaver powers) but evaluate PUMA's own definitions
(spu `hack_gelu`, `hack_silu`, `hack_softmax`), fixing the port's two bugs (see mpc/approx.py).

Operators (conf/system/puma.yaml):
  * GeLU -> 4 pieces at -4, -1.95, 3: 0 | degree 3 | degree 6 (+0.5x) | x.
  * SiLU (Llama) -> PUMA's own 4-piece SiLU from its LLaMA-7B example (flax_llama7b `hack_silu`).
  * ReLU (OPT) -> exact ReLU by the engine's comparison: PUMA's piecewise polynomials are built from that
    same comparison, and ReLU needs nothing more.
  * softmax -> x - max, exp(x) (limit method, 8 squarings) times [x > -14], Newton reciprocal of the sum.
  * LayerNorm / RMSNorm -> the port's puma_norm: mean, variance, inverse square root (the engine's
    Newton iteration), i.e. the engine's exact norm.
  * linear -> dense Beaver matmul.
"""

from __future__ import annotations

from comet_core.systems.dense import DenseSystem


class PumaSystem(DenseSystem):
    name = "puma"
    ACTIVATIONS = {"relu": "exact", "silu": "puma_silu", "gelu": "puma_gelu"}
    SOFTMAX = "puma"
    NORM = "exact"
