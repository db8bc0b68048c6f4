"""What one (layer, step) of a sparse system revealed: shared by the FFN (comet) and head (comet_heads) paths."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class StepRecord:
    """What one (layer, step) revealed, for sparsity.csv and the masked plaintext reference."""

    layer: int
    step: int
    active: int
    total: int
    kind: str = "ffn"                         # ffn (neurons) | head (KV groups)
    revealed: str = ""                        # head groups: the opened mask in permuted coordinates
    real_mask: torch.Tensor | None = None    # (F,) bool in real coordinates (simulation only)
    revealed_count: int | None = None         # count padding: the padded count the servers saw (None: = active;
    #                                           a tcp party, which cannot know the real count, records it as active)
    flips: int | float = math.nan             # MPC mask != float predictor mask
    max_flip_margin: float = math.nan         # largest |score - threshold| among flipped units
