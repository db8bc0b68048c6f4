"""Which tensor an operand's precomputed split came from, so a split reused on a changed tensor is refused.

Shared by ringmm (Limbs) and digitmm (Digits): below both, so neither imports the other for it.
"""

from __future__ import annotations

import torch


def operand_fingerprint(x: torch.Tensor) -> tuple:
    """Shape, strides, storage address, device and in-place version counter of x."""
    return (tuple(x.shape), tuple(x.stride()), x.data_ptr(), x.device, x._version)
