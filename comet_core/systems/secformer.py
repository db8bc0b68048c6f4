"""SecFormer (Luo et al., ACL Findings 2024): CrypTen 2PC with Fourier GeLU and Goldschmidt division.

Operators (conf/system/secformer.yaml):
  * GeLU -> 0.5x(1 + erf(x/sqrt2)) with erf a 7-term Fourier sine series on [-2.5, 2.5] (period 20,
    SecFormer's coefficients), one opening of x - t against dealer-made sin/cos of t.
  * ReLU (OPT) -> exact ReLU by the engine's comparison: SecFormer defines only GeLU, its own comparison
    protocol (CrypTen's LTZ, which the Fourier GeLU also uses for its clamps) gives ReLU exactly, so
    approximating ReLU would only lose accuracy.
  * SiLU (Llama) -> the engine's x * sigmoid(x): SecFormer has no SiLU, and its Fourier trick needs a
    bounded odd function on a fixed interval (erf); sigmoid by CrypTen's reciprocal method is what its
    CrypTen backend runs.
  * softmax -> 2Quad (x + 5)^2 / sum with a Goldschmidt division, 13 iterations (`operation/softmax.py`),
    deflated by a public power of two 2^ceil(log2(n * 256)) so it converges (SecFormer's code has none).
  * LayerNorm -> Goldschmidt inverse square root, 8 iterations (`operation/layernorm.py`), deflated by
    4^j (params.rsqrt_deflate_log4, default 1: the variances of shakespeare-opt reach 3.03, past the undeflated limit 3); RMSNorm (Llama) uses the same inverse square root.
  * linear -> dense Beaver matmul.
"""

from __future__ import annotations

from comet_core.systems.dense import DenseSystem


class SecFormerSystem(DenseSystem):
    name = "secformer"
    ACTIVATIONS = {"relu": "exact", "silu": "exact", "gelu": "fourier_gelu"}
    SOFTMAX = "2quad_goldschmidt"
    NORM = "goldschmidt"
