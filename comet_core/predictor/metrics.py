"""Prediction quality over (token, unit) pairs, micro-averaged per layer and kind.

recall = TP / (TP + FN): the share of truly active units the predictor keeps (missed ones are dropped).
precision = TP / (TP + FP). true_sparsity = 1 - mean(truth); predicted_sparsity = 1 - mean(prediction).
"""

from __future__ import annotations

import math

import torch


def confusion(pred: torch.Tensor, true: torch.Tensor) -> dict:
    pred, true = pred.bool(), true.bool()
    return {"tp": int((pred & true).sum()), "fp": int((pred & ~true).sum()),
            "fn": int((~pred & true).sum()), "tn": int((~pred & ~true).sum())}


def scores(c: dict) -> dict:
    """recall, precision, true_sparsity, predicted_sparsity from confusion counts."""
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    n = tp + fp + fn + tn
    return {
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "true_sparsity": (fp + tn) / n if n else 0.0,
        "predicted_sparsity": (fn + tn) / n if n else 0.0,
    }


def add(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) + b[k] for k in b}


def threshold_for_recall(pos_logits: torch.Tensor, target_recall: float) -> float:
    """Largest threshold delta with recall (fraction of positive logits > delta) >= target_recall."""
    if pos_logits.numel() == 0:
        return float("inf")
    s = torch.sort(pos_logits.float().reshape(-1)).values
    k = int(math.floor((1.0 - float(target_recall)) * s.numel() + 1e-9))  # at most k positives may fall at or below delta
    if k <= 0:
        return float(s[0]) - 1e-6
    # delta just below s[k]: positives s[k:] are above it (count n-k >= target*n)
    return float(s[k - 1]) if s[k - 1] < s[k] else float(torch.nextafter(s[k], torch.tensor(-float("inf"))))
