"""The paper's predictor: ``y = threshold(W2 (W1 x + b1) + b2)`` (paper-notes 2).

Two low-rank fully-connected layers with NO non-linearity between them (a rank-r factorisation, as in
Deja Vu), then a threshold layer: unit j is predicted active iff its logit > ``threshold`` (one scalar
per predictor, i.e. per layer and kind, tuned to a target recall on validation data).
"""

from __future__ import annotations

import torch
from torch import nn


class LowRankPredictor(nn.Module):
    def __init__(self, d_in: int, rank: int, d_out: int):
        super().__init__()
        self.w1 = nn.Linear(d_in, rank)
        self.w2 = nn.Linear(rank, d_out)
        self.register_buffer("threshold", torch.zeros(()))

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.w1.in_features, self.w1.out_features, self.w2.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``W2 (W1 x + b1) + b2`` (float32)."""
        return self.w2(self.w1(x.float()))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean mask of predicted-active units: logit > threshold."""
        return self(x) > self.threshold

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def macs(self) -> int:
        """Multiply-accumulates per token: d*r + r*out."""
        d, r, o = self.shape
        return d * r + r * o
