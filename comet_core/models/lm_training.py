"""Train a small ReLU OPT-architecture causal LM on the Shakespeare train plays (byte tokens).

Byte-level tokens keep the model self-contained (vocab 256, no tokenizer files) and make the loss
directly comparable across runs: loss is in nats per byte, perplexity is per byte.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from comet_core.progress import progress

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: object
    curve: list[dict] = field(default_factory=list)
    sparsity: list[float] = field(default_factory=list)
    val_loss: float = float("nan")
    steps: int = 0
    seconds: float = 0.0
    stopped_early: bool = False


def model_cfg_from_lm(lm) -> dict:
    """The zoo model config (conf/model schema) for an lm preset."""
    return dict(name=lm.name, family="opt", source="checkpoint", checkpoint=lm.name, tokenizer="bytes",
                vocab_size=256, hidden_size=lm.hidden_size, num_layers=lm.num_layers, ffn_dim=lm.ffn_dim,
                num_heads=lm.num_heads, num_kv_heads=lm.num_heads, max_positions=lm.max_positions,
                activation="relu", layers=None)


def relu_zero_fractions(model, batch) -> list[float]:
    """Fraction of exact zeros after the FFN activation, per decoder layer, on one batch."""
    import torch

    from comet_core.models.zoo import decoder_layers

    stats: list[list[float]] = []
    hooks = []
    for layer in decoder_layers(model):
        acc = [0.0, 0.0]
        stats.append(acc)
        hooks.append(layer.activation_fn.register_forward_hook(
            lambda m, i, o, acc=acc: acc.__setitem__(slice(0, 2), [acc[0] + (o == 0).sum().item(), acc[1] + o.numel()])))
    try:
        with torch.no_grad():
            model(input_ids=batch)
    finally:
        for h in hooks:
            h.remove()
    return [z / n for z, n in stats]


def eval_loss(model, windows, batch_size: int) -> float:
    """Mean next-token cross-entropy (nats/token) over int64 windows (n, L)."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(windows), batch_size):
            x = torch.as_tensor(windows[i: i + batch_size])
            out = model(input_ids=x, labels=x)
            n = x.numel() - x.shape[0]
            total += out.loss.item() * n
            count += n
    return total / max(count, 1)


def train_lm(lm, seed: int = 0) -> TrainResult:
    """Train per the lm preset; returns the trained model, the curve and the final per-layer sparsity."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from comet_core.models.corpus import spread_windows, token_ids
    from comet_core.models.tokenizers import ByteTokenizer
    from comet_core.models.zoo import build_hf_config

    tok = ByteTokenizer()
    train_ids = token_ids("train", tok)
    val_ids = token_ids("validation", tok)
    L, B = int(lm.seq_len), int(lm.batch_size)
    val_curve = spread_windows(val_ids, int(lm.eval_batches) * B, L)
    val_final = spread_windows(val_ids, int(lm.final_eval_windows), L)

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = AutoModelForCausalLM.from_config(build_hf_config(model_cfg_from_lm(lm)))
    log.info("training %s: %.2fM params, %d steps of %dx%d bytes", lm.name,
             sum(p.numel() for p in model.parameters()) / 1e6, lm.steps, B, L)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": float(lm.weight_decay)},
                             {"params": no_decay, "weight_decay": 0.0}], lr=float(lm.lr))
    steps, warm = int(lm.steps), int(lm.warmup_steps)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    res = TrainResult(model=model)
    t0 = time.monotonic()
    running = None

    def point(step: int, train_loss: float):
        vl = eval_loss(model, val_curve, B)
        sp = relu_zero_fractions(model, torch.as_tensor(val_curve[:B]))
        row = {"step": step, "train_loss": train_loss, "val_loss": vl, "val_ppl": math.exp(vl),
               "elapsed_s": time.monotonic() - t0, "lr": opt.param_groups[0]["lr"]}
        row.update({f"zeros_layer{i}": z for i, z in enumerate(sp)})
        res.curve.append(row)
        log.info("step %d: train %.3f val %.3f nats/byte, zeros %s", step, train_loss, vl,
                 " ".join(f"{z:.2f}" for z in sp))
        model.train()

    point(0, float("nan"))
    bar = progress(range(1, steps + 1), desc=f"train-lm {lm.name}", unit="step")
    step = 0
    for step in bar:
        starts = rng.integers(0, len(train_ids) - L, size=B)
        x = torch.as_tensor(np.stack([train_ids[s: s + L] for s in starts]))
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(lm.grad_clip))
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        bar.set_postfix(loss=f"{running:.3f}")
        out_of_time = time.monotonic() - t0 > 60 * float(lm.max_minutes)
        if step % int(lm.eval_every) == 0 or step == steps or out_of_time:
            point(step, running)
        if out_of_time:
            log.warning("stopping at step %d: max_minutes=%s reached", step, lm.max_minutes)
            res.stopped_early = True
            break
    res.steps = step
    res.seconds = time.monotonic() - t0
    model.eval()
    res.val_loss = eval_loss(model, val_final, B)
    res.sparsity = relu_zero_fractions(model, torch.as_tensor(val_final[: 4 * B]))
    return res
