"""MPCFormer (Li et al., ICLR 2023): CrypTen 2PC with its quadratic approximations.

Operators (conf/system/mpcformer.yaml):
  * GeLU -> Quad 0.125x^2 + 0.5x + 0.25 (MPCFormer `activation_quad`).
  * ReLU (OPT) and SiLU (Llama) -> Quad as well. MPCFormer's recipe is "replace every costly activation
    by a quadratic, then recover accuracy by distillation"; the paper defines only GeLU's, and ReLU and
    SiLU have the same shape (about 0 for x << 0, about x for x >> 0), which that quadratic fits. Its
    cost (one square) is what MPCFormer brings to any FFN. No distillation is available here, so the
    model's function changes: experiments/baseline_accuracy.py measures by how much.
  * softmax -> 2Quad (x + 5)^2 / sum (MPCFormer `softmax_2QUAD`), divided with the engine's Newton
    reciprocal (MPCFormer calls CrypTen's reciprocal).
  * LayerNorm / RMSNorm -> the engine's exact norm: MPCFormer's CrypTen benchmark replaces LayerNorm by
    BatchNorm (an affine map, "crypten has not implemented LayerNorm"), which would drop its cost and
    change the model; we keep the function and price it as CrypTen's LayerNorm would be.
  * linear -> dense Beaver matmul (CrypTen's).
"""

from __future__ import annotations

from comet_core.systems.dense import DenseSystem


class MPCFormerSystem(DenseSystem):
    name = "mpcformer"
    ACTIVATIONS = {"relu": "quad", "silu": "quad", "gelu": "quad"}
    SOFTMAX = "2quad"
    NORM = "exact"
