"""The plaintext reference decoder with Comet's masks per token, for accuracy on held-out text.

`SparsePlainDecoder` is `PlainDecoder` (float64, the function a private run computes) whose FFN neurons
and attention heads are masked as private Comet masks them at a decode step, every position with its
own mask (the semantics of KV-cached decoding; a private prefill would take the union over its rows):

  * FFN: a masked neuron's hidden value is zeroed before W_out (fc2 / down_proj). `predicted`: the float
    predictor on the FFN input, logit > its threshold (what the protocol reveals); `oracle`: the true
    label |act(pre)| > ffn_tau (ReLU: exactly the non-zero neurons).
  * heads, in KV groups as the private run computes them (a group is kept iff any of its G query heads is
    marked; G = 1 for multi-head attention): a dropped group's query heads output zero before W_o; K/V
    stay complete. `predicted`: the head predictor on the attention input; `oracle`: the toolkit's own
    head importance (comet_core/predictor/sites.py: the head's share of the output projection's norm,
    after Deja Vu; not the paper's definition, which it does not state) > head_tau.
"""

from __future__ import annotations

import torch

from comet_core.models.reference import PlainDecoder

MODES = ("dense", "predicted", "oracle")


class SparsePlainDecoder(PlainDecoder):
    """PlainDecoder with per-token FFN and head-group masks; `kept[kind]` counts [kept, total] units."""

    def __init__(self, weights, system, predictors, ffn: str = "dense", heads: str = "dense") -> None:
        super().__init__(weights, system)
        if ffn not in MODES or heads not in MODES:
            raise ValueError(f"ffn and heads must be one of {MODES}, got {ffn!r}, {heads!r}")
        self.ps, self.ffn_mode, self.head_mode = predictors, ffn, heads
        self.kept = {"ffn": [0, 0], "head": [0, 0]}

    def _count(self, kind: str, mask: torch.Tensor) -> None:
        self.kept[kind][0] += int(mask.sum())
        self.kept[kind][1] += mask.numel()

    def density(self, kind: str) -> float:
        k, n = self.kept[kind]
        return k / n if n else 1.0

    @torch.no_grad()
    def _predicted(self, p, x: torch.Tensor) -> torch.Tensor:
        return p(x.float()) > float(p.threshold)                                  # (T, units)

    def ffn(self, h: torch.Tensor, lw: dict, layer: int) -> torch.Tensor:
        if self.ffn_mode == "dense":
            return super().ffn(h, lw, layer)
        sysm, act = self.system, self.meta["act"]
        if "w1" in lw:                                                            # OPT: fc2(act(fc1 h))
            hidden = sysm.plain_activation(sysm.plain_linear(h, lw["w1"], lw["b1"]), act)
            score = hidden
        else:                                                                     # Llama: down(act(gate h) * up h)
            score = sysm.plain_activation(sysm.plain_linear(h, lw["w_gate"]), act)
            hidden = score * sysm.plain_linear(h, lw["w_up"])
        if self.ffn_mode == "oracle":
            mask = score.abs() > self.ps.ffn_tau[layer]                           # (T, F)
        else:
            from comet_core.predictor.apply import expand_blocks

            mask = expand_blocks(self._predicted(self.ps.ffn[layer], h), hidden.shape[-1])   # blocks -> neurons
        self._count("ffn", mask)
        return sysm.plain_linear(hidden * mask.to(hidden.dtype), lw["w_down" if "w_down" in lw else "w2"], lw.get("b2"))

    def head_outputs(self, ctx: torch.Tensor, x: torch.Tensor, lw: dict, layer: int) -> torch.Tensor:
        if self.head_mode == "dense":
            return ctx
        H, Hkv, hd = self.meta["num_heads"], self.meta["num_kv_heads"], self.meta["head_dim"]
        T = ctx.shape[0]
        if self.head_mode == "oracle":
            wo = lw["wo"].double().reshape(H, hd, -1)                             # (H, hd, d)
            contrib = torch.einsum("thk,hkd->thd", ctx.reshape(T, H, hd), wo).norm(dim=-1)   # (T, H)
            share = contrib / contrib.sum(-1, keepdim=True).clamp_min(1e-12)
            heads = share > self.ps.head_tau[layer]
        else:
            heads = self._predicted(self.ps.head[layer], x)                       # (T, H)
        groups = heads.reshape(T, Hkv, H // Hkv).any(-1)                          # (T, H_kv)
        self._count("head", groups)
        keep = groups.repeat_interleave((H // Hkv) * hd, dim=-1)                  # (T, H*hd)
        return ctx * keep.to(ctx.dtype)
