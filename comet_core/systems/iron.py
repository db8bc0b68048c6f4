"""Iron (Hao et al., NeurIPS 2022) as Comet compared it: Comet's linear layers, Iron's non-linear protocols.

Iron's non-linear protocols are OT-based (CrypTFlow2 / SIRNN building blocks); they run here as ideal
functionalities (comet_core/mpc/ideal.py) priced by a per-building-block model and booked with
cost_source=model. Iron computes its functions to fixed-point precision, so the ideal functionalities
evaluate the exact functions:
  * GeLU -> exact tanh-form GeLU (fp-math.cpp gelu_iron: x^2, x^3, SIRNN tanh).
  * ReLU (OPT) -> exact ReLU priced as CrypTFlow2's DReLU + MUX: Iron defines only GeLU; its OT library
    (SCI) has this ReLU, the natural comparison protocol for it.
  * SiLU (Llama) -> exact x * sigmoid(x) priced as SIRNN's sigmoid + one multiplication (SCI's sigmoid).
  * softmax -> exact, priced as softmax_fix_iron_1 (tree max, LUT exp, per-element division).
  * LayerNorm / RMSNorm -> exact normalisation priced as layer_norm_iron; the weight and bias go through
    the engine's (measured) Beaver multiply.
  * linear -> dense Beaver matmul (Comet's linear layers, no sparsity: the default as Comet compared Iron),
    or with `system.linear=he` Iron's HE matrix product, run for real in exact mode (TenSEAL), its
    coefficient packing (`system.he_packing=iron`, mpc/he_bfv.py), the ciphertexts booked as sent, then
    the lift to the OT ring priced as gt_p_sub (comet_core/mpc/he_linear.py).
"""

from __future__ import annotations

from comet_core.systems import operators as ops
from comet_core.systems.dense import DenseSystem


class IronSystem(DenseSystem):
    name = "iron"
    ACTIVATIONS = {"relu": "ot_relu", "silu": "ot_silu", "gelu": "iron_gelu"}
    SOFTMAX = "iron"
    NORM = "ot_exact"
    IDEAL_PARAMS = staticmethod(ops._iron_params)
    LINEARS = ("beaver", "he")
    HE_PACKINGS = ("iron",)
