"""Training one predictor (one layer, one kind) with weighted BCE and early stopping on validation.

- Loss: BCE with a per-unit positive weight ``(1 - p_j) / p_j`` clipped to ``[1, pos_weight_max]``
  (p_j = unit j's active rate on train), so rare positives are not ignored (Deja Vu / PowerInfer use
  plain BCE on the same labels; the weight trades precision for the recall the protocol needs).
- Early stopping on validation recall. ``early_stop: recall`` monitors recall at the untuned threshold
  (logit > 0); ``early_stop: sparsity_at_recall`` (default) monitors the predicted sparsity reached
  when the threshold is tuned to ``target_recall`` on validation, i.e. recall held at the target and
  the skipped share maximised (plain recall alone is maximised by predicting every unit active).
  The best epoch's weights are kept; training stops after ``patience`` epochs without improvement.
- Blocks (``block = b > 1``, the paper's "spatial locality"): one output per block of b consecutive
  neurons, labelled active iff any of its neurons is; recall, sparsity and the threshold are measured on
  the neurons the block mask keeps (a kept block keeps all its neurons), so they compare across b.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from comet_core.predictor.metrics import confusion, scores, threshold_for_recall
from comet_core.predictor.model import LowRankPredictor

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    rank: int
    target_recall: float = 0.93
    lr: float = 1e-3
    batch_size: int = 1024
    max_epochs: int = 20
    patience: int = 3
    pos_weight_max: float = 20.0
    weight_decay: float = 0.0
    early_stop: str = "sparsity_at_recall"
    block: int = 1


def block_labels(Y: torch.Tensor, block: int) -> torch.Tensor:
    """(N, F) neuron labels -> (N, F / block): a block is active iff any of its neurons is."""
    if block == 1:
        return Y
    N, F = Y.shape
    if F % block:
        from comet_core.errors import CometError

        raise CometError(f"block={block} does not divide the {F} FFN neurons")
    return Y.reshape(N, F // block, block).any(-1)


def neuron_logits(logits: torch.Tensor, block: int) -> torch.Tensor:
    """Block logits (N, F / block) as per-neuron logits (N, F): each neuron takes its block's."""
    return logits if block == 1 else logits.repeat_interleave(block, dim=-1)


def _logits(pred: LowRankPredictor, X: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([pred(X[i:i + chunk]) for i in range(0, len(X), chunk)])


def evaluate(pred: LowRankPredictor, X: torch.Tensor, Y: torch.Tensor, threshold: float) -> dict:
    """Scores of ``logit > threshold`` against labels Y."""
    return scores(confusion(_logits(pred, X) > threshold, Y))


def fit(Xtr, Ytr, Xva, Yva, s: TrainSettings, seed: int = 0) -> tuple[LowRankPredictor, dict]:
    """Train on (Xtr, Ytr), early-stop on (Xva, Yva), tune the threshold to ``s.target_recall`` on
    validation. Inputs: float arrays (N, d) and bool arrays (N, out) of neuron labels. Returns (predictor,
    history); the history's validation logits are per neuron (a block's logit repeated over its neurons)."""
    torch.manual_seed(seed)
    Xtr = torch.from_numpy(np.array(Xtr, dtype=np.float32))
    Ytr = torch.from_numpy(np.array(Ytr, dtype=bool))
    Xva = torch.from_numpy(np.array(Xva, dtype=np.float32))
    Yva = torch.from_numpy(np.array(Yva, dtype=bool))
    b = int(s.block)
    Ytr = block_labels(Ytr, b)
    n, d = Xtr.shape
    out = Ytr.shape[1]
    pred = LowRankPredictor(d, int(s.rank), out)
    p = Ytr.float().mean(0).clamp(1e-4, 1 - 1e-4)
    with torch.no_grad():
        pred.w2.bias.copy_(torch.log(p / (1 - p)))  # start at the base rate
    pos_weight = ((1 - p) / p).clamp(1.0, float(s.pos_weight_max))
    lossf = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    opt = torch.optim.Adam(pred.parameters(), lr=float(s.lr), weight_decay=float(s.weight_decay))
    gen = torch.Generator().manual_seed(seed)
    best, best_state, bad, hist = -1.0, None, 0, []
    for epoch in range(int(s.max_epochs)):
        pred.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, int(s.batch_size)):
            idx = perm[i:i + int(s.batch_size)]
            loss = lossf(pred(Xtr[idx]), Ytr[idx].float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        pred.eval()
        lv = neuron_logits(_logits(pred, Xva), b)
        if s.early_stop == "recall":
            metric = scores(confusion(lv > 0, Yva))["recall"]
        else:
            delta = threshold_for_recall(lv[Yva.bool()], s.target_recall)
            metric = scores(confusion(lv > delta, Yva))["predicted_sparsity"]
        hist.append({"epoch": epoch, "train_loss": total / n, "val_metric": metric})
        if metric > best + 1e-4:
            best, bad = metric, 0
            best_state = {k: v.clone() for k, v in pred.state_dict().items()}
        else:
            bad += 1
            if bad >= int(s.patience):
                break
    pred.load_state_dict(best_state)
    pred.eval()
    lv = neuron_logits(_logits(pred, Xva), b)
    delta = threshold_for_recall(lv[Yva.bool()], s.target_recall)
    pred.threshold.fill_(delta)
    return pred, {"epochs": len(hist), "history": hist, "val_logits_pos": lv[Yva.bool()], "val_logits": lv}
