"""Perplexity and next-token accuracy of a plaintext reference decoder on held-out windows.

One evaluator and one set of windows for every system (experiments/accuracy.py, experiments/
baseline_accuracy.py): `n` windows of `length` tokens at evenly spread offsets over the test plays
(hamlet, macbeth; no toolkit model or predictor trained on them), every position of a window predicted
from the ones before it (teacher forcing, one full forward per window).
"""

from __future__ import annotations

import math

import torch


def held_out_windows(tok, n: int, length: int, max_chars: int | None = None):
    """(n, length) int64 windows of the test split."""
    from comet_core.models.corpus import spread_windows, token_ids

    return spread_windows(token_ids("test", tok, max_chars=max_chars), int(n), int(length))


def evaluate(decoder, windows) -> dict:
    """Cross-entropy and top-1 accuracy of next-token prediction over all positions of all windows."""
    nll, correct, count = 0.0, 0, 0
    for w in windows:
        ids = [int(t) for t in w]
        logits = decoder.forward(ids[:-1], decoder.new_cache(), all_positions=True)     # (L-1, V)
        target = torch.tensor(ids[1:])
        logp = torch.log_softmax(logits, -1)
        nll += float(-logp[torch.arange(len(target)), target].sum())
        correct += int((logits.argmax(-1) == target).sum())
        count += len(target)
    ce = nll / count
    return dict(cross_entropy_nats=ce, perplexity=math.exp(min(ce, 700.0)), next_token_acc=correct / count,
                positions=count)
