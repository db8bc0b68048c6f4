"""Apply FFN-neuron and head sparsity to a plaintext model and measure its language-model accuracy.

Modes per kind: ``dense`` (no mask), ``oracle`` (the true labels: ReLU zeros / the CATS or product
threshold for FFN, per the checkpoint's ``labels`` setting; the head-share threshold for heads), ``predicted`` (the predictors at their tuned thresholds, evaluated
on the live layer inputs, so errors of earlier layers propagate as they would in the protocol).
A masked unit contributes nothing: its hidden value is zeroed before ``fc2``/``down_proj`` (neurons) or
its head output before ``out_proj``/``o_proj`` (heads). A block predictor (``F / block`` outputs, one per
block of ``block`` consecutive neurons) keeps or drops whole blocks (``expand_blocks``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch

from comet_core.predictor.sites import attn_hidden, head_shares, layer_sites
from comet_core.progress import progress


def expand_blocks(mask: torch.Tensor, units: int) -> torch.Tensor:
    """A (..., F / b) block mask as the (..., F) neuron mask it keeps (block i = neurons i*b .. i*b+b-1)."""
    b = units // mask.shape[-1]
    return mask if b == 1 else mask.repeat_interleave(b, dim=-1)


@contextmanager
def sparsity_applied(model, ps, ffn: str = "dense", head: str = "dense", ffn_thresholds=None,
                     head_thresholds=None, ffn_test=None):
    """Install masking hooks; yields per-layer ``[kept, total]`` counters ``{"ffn": [...], "head": [...]}``.

    ``ffn_thresholds`` / ``head_thresholds`` override the predictors' tuned thresholds (threshold sweeps).
    ``ffn_test(logits, threshold) -> bool mask`` replaces ``logits > threshold`` for predicted FFN masks
    (the reduced-ring test of system.predictor_bits: smallring.plain_ge_zero).
    """
    sites = layer_sites(model)
    product = (getattr(ps, "settings", None) or {}).get("labels", "cats") == "product"
    state = [dict() for _ in sites]
    kept = {"ffn": [[0, 0] for _ in sites], "head": [[0, 0] for _ in sites]}
    hooks = []

    def count(kind, l, m):
        kept[kind][l][0] += int(m.sum())
        kept[kind][l][1] += m.numel()

    for l, s in enumerate(sites):
        st = state[l]
        if ffn != "dense":
            hooks.append(s.ffn_in.register_forward_pre_hook(lambda m, a, st=st: st.__setitem__("fx", a[0])))
            hooks.append(s.ffn_pre.register_forward_hook(
                lambda m, a, o, st=st, act=s.ffn_act: st.__setitem__("score", act(o).abs())))

            def ffn_mask(m, a, l=l, st=st):
                if ffn == "oracle":
                    mask = (a[0].abs() if product else st["score"]) > ps.ffn_tau[l]
                else:
                    thr = ps.ffn[l].threshold if ffn_thresholds is None else ffn_thresholds[l]
                    z = ps.ffn[l](st["fx"])
                    mask = expand_blocks(z > thr if ffn_test is None else ffn_test(z, thr), a[0].shape[-1])
                count("ffn", l, mask)
                return (a[0] * mask.to(a[0].dtype),) + tuple(a[1:])
            hooks.append(s.ffn_down.register_forward_pre_hook(ffn_mask))
        if head != "dense":
            hooks.append(s.attn.register_forward_pre_hook(
                lambda m, a, k, st=st: st.__setitem__("ax", attn_hidden(a, k)), with_kwargs=True))

            def head_mask(m, a, l=l, st=st, s=s):
                x = a[0]
                if head == "oracle":
                    mask = head_shares(m, x, s.num_heads) > ps.head_tau[l]
                else:
                    thr = ps.head[l].threshold if head_thresholds is None else head_thresholds[l]
                    mask = ps.head[l](st["ax"]) > thr
                count("head", l, mask)
                full = mask.to(x.dtype).repeat_interleave(x.shape[-1] // s.num_heads, dim=-1)
                return (x * full,) + tuple(a[1:])
            hooks.append(s.attn_out.register_forward_pre_hook(head_mask))
    try:
        yield kept
    finally:
        for h in hooks:
            h.remove()


def lm_accuracy(model, windows, batch_size: int = 8, desc: str = "eval") -> dict:
    """Perplexity (per token) and next-token top-1 accuracy over int64 windows (n, L)."""
    nll, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for i in progress(range(0, len(windows), batch_size), desc=desc, unit="batch"):
            x = torch.as_tensor(np.asarray(windows[i:i + batch_size]))
            logits = model(input_ids=x).logits[:, :-1].float()
            y = x[:, 1:]
            nll += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                     reduction="sum").item()
            correct += int((logits.argmax(-1) == y).sum())
            count += y.numel()
    return {"ppl": math.exp(nll / count), "next_token_acc": correct / count, "tokens": count}


def density(kept: dict, kind: str) -> float:
    k = sum(a for a, _ in kept[kind])
    n = sum(b for _, b in kept[kind])
    return k / n if n else 1.0
