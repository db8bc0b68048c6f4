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
  * linear -> dense Beaver matmul (Comet's linear layers; BOLT's HE matmul and word elimination unused).
"""

from __future__ import annotations

from comet_core.systems import operators as ops
from comet_core.systems.dense import DenseSystem


class BoltSystem(DenseSystem):
    name = "bolt"
    ACTIVATIONS = {"relu": "ot_relu", "silu": "ot_silu", "gelu": "bolt_gelu"}
    SOFTMAX = "bolt"
    NORM = "ot_exact"
    IDEAL_PARAMS = staticmethod(ops._bolt_params)
