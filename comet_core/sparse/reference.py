"""The plaintext references of private Comet: the plaintext model with the private run's masks, and the
plaintext model with its own float predictors (independent of anything the private run computed).

`masked_generate` with the masks the private run revealed (in real coordinates: the simulation knows pi)
is what private Comet must equal token for token. It cannot see a wrong predictor, threshold or
permutation in the private path: those change the masks, and so both sides, equally.

`predicted_generate` runs the float predictors and thresholds of the checkpoint on the plaintext model's
own layer inputs; its masks (and tokens) differ from the private run's when the private path computed
other masks than the predictors define (`jaccard` per layer and step, experiments/run.py).

Both use KV-cached semantics: every position keeps the mask of the step that computed it (the prefill's
positions the union mask of step 0, the position decoded at step s the mask of step s). Applying
per-position masks in a full recomputation is then the same function as the cached private run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from comet_core.models.generate import Generation, plaintext_generate
from comet_core.predictor.sites import attn_hidden, layer_sites


@dataclass
class PredictedGeneration(Generation):
    """A generation with the masks it used: ffn[(layer, step)] (F,) bool, head[(layer, step)] (H_kv,) bool."""

    ffn_masks: dict = field(default_factory=dict)
    head_masks: dict = field(default_factory=dict)


class FloatPredictors:
    """Masks of one step from the float predictors on the step's new rows (union over a prefill's rows).

    ffn: per layer a LowRankPredictor (d -> F); head: per layer one (d -> H) or None (dense attention).
    A KV group is active iff any of its G query heads is predicted active for any row (as the private run)."""

    def __init__(self, ffn: list, head: list | None, kv_heads: int | None = None, block: int = 1) -> None:
        self.ffn, self.head, self.kv_heads, self.block = ffn, head, kv_heads, block

    @torch.no_grad()
    def ffn_mask(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        p = self.ffn[layer]
        blocks = (p(x.reshape(-1, x.shape[-1])) > float(p.threshold)).any(0)                 # (F / block,)
        return blocks.repeat_interleave(self.block)                                          # (F,)

    @torch.no_grad()
    def head_mask(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        p = self.head[layer]
        scores = p(x.reshape(-1, x.shape[-1]))                                                # (T, H)
        return (scores > float(p.threshold)).reshape(scores.shape[0], self.kv_heads, -1).any(-1).any(0)


def _step_of(t: int, P: int) -> int:
    return 0 if t < P else t - P + 1


@torch.no_grad()
def masked_generate(model, prompt_ids: list[int], new_tokens: int, masks: dict[tuple[int, int], torch.Tensor],
                    head_masks: dict[tuple[int, int], torch.Tensor] | None = None,
                    predict: FloatPredictors | None = None) -> Generation:
    """Greedy decoding of the HF model with FFN masks[(layer, step)] (F,) bool and KV-group masks
    head_masks[(layer, step)] (H_kv,) bool applied per position: a masked neuron contributes nothing, a
    masked group's query heads output zero (their K/V stay complete: the refilled cache's semantics).

    With `predict`, a (layer, step) missing from the tables is computed at that step from the layer's
    inputs at the step's new positions and added to them (the tables are filled in place)."""
    head_masks = {} if head_masks is None else head_masks
    sites = layer_sites(model)
    P = len(prompt_ids)
    hooks = []
    inputs: dict[tuple[str, int], torch.Tensor] = {}      # the current forward's layer inputs

    def position_masks(layer: int, T: int, F: int, dtype, table) -> torch.Tensor:
        ones = torch.ones(F, dtype=torch.bool)
        return torch.stack([table.get((layer, _step_of(t, P)), ones) for t in range(T)]).to(dtype)

    def fill(table, kind: str, layer: int, T: int, compute) -> None:
        """The current step's mask from the rows of its new positions (all of the prompt at step 0)."""
        step = _step_of(T - 1, P)
        if predict is None or (layer, step) in table:
            return
        x = inputs[(kind, layer)]
        x = x.reshape(-1, x.shape[-1])                                # (T, d): batch 1 (OPT flattens it)
        table[(layer, step)] = compute(layer, x[:P] if step == 0 else x[-1:]).cpu()

    for l, s in enumerate(sites):
        if predict is not None:
            hooks.append(s.ffn_in.register_forward_pre_hook(
                lambda m, a, l=l: inputs.__setitem__(("ffn", l), a[0])))
            if predict.head is not None:
                hooks.append(s.attn.register_forward_pre_hook(
                    lambda m, a, k, l=l: inputs.__setitem__(("head", l), attn_hidden(a, k)), with_kwargs=True))

        def pre(module, args, l=l):
            h = args[0]                                    # (B, T, F) input of fc2 / down_proj
            fill(masks, "ffn", l, h.shape[-2], lambda layer, x: predict.ffn_mask(layer, x))
            return (h * position_masks(l, h.shape[-2], h.shape[-1], h.dtype, masks),) + tuple(args[1:])
        hooks.append(s.ffn_down.register_forward_pre_hook(pre))

        def pre_heads(module, args, l=l, s=s):
            a = args[0]                                    # (B, T, H*hd) input of out_proj / o_proj
            if predict is not None and predict.head is not None:
                fill(head_masks, "head", l, a.shape[-2], lambda layer, x: predict.head_mask(layer, x))
            if not any(k[0] == l for k in head_masks):
                return None
            H = s.num_heads
            T = a.shape[-2]
            g = position_masks(l, T, next(v for k, v in head_masks.items() if k[0] == l).numel(), a.dtype,
                               head_masks)                 # (T, H_kv)
            per_head = g.repeat_interleave(H // g.shape[-1], dim=-1)              # (T, H)
            return (a * per_head.repeat_interleave(a.shape[-1] // H, dim=-1),) + tuple(args[1:])
        hooks.append(s.attn_out.register_forward_pre_hook(pre_heads))
    try:
        return plaintext_generate(model, prompt_ids, new_tokens)   # the hooks apply the masks
    finally:
        for h in hooks:
            h.remove()


def predicted_generate(model, prompt_ids: list[int], new_tokens: int, predict: FloatPredictors) -> PredictedGeneration:
    """Greedy decoding of the HF model with the masks its own float predictors give (no private input)."""
    ffn, heads = {}, {}
    g = masked_generate(model, prompt_ids, new_tokens, ffn, heads, predict=predict)
    return PredictedGeneration(tokens=g.tokens, logits=g.logits, stage_seconds=g.stage_seconds,
                               ffn_masks=ffn, head_masks=heads)


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a & b| / |a | b| of two bool masks (1.0 when both are empty)."""
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0
