"""The plaintext reference that private Comet must equal: the plaintext model with the same FFN masks.

"The same masks" are the masks the private run revealed (in real coordinates: the simulation knows pi),
with KV-cached semantics: every position keeps the mask of the step that computed it (the prefill's
positions the union mask of step 0, the position decoded at step s the mask of step s). Applying
per-position masks in a full recomputation is then the same function as the cached private run.
"""

from __future__ import annotations

import torch

from comet_core.models.generate import Generation, plaintext_generate
from comet_core.predictor.sites import layer_sites


@torch.no_grad()
def masked_generate(model, prompt_ids: list[int], new_tokens: int, masks: dict[tuple[int, int], torch.Tensor],
                    head_masks: dict[tuple[int, int], torch.Tensor] | None = None) -> Generation:
    """Greedy decoding of the HF model with FFN masks[(layer, step)] (F,) bool and KV-group masks
    head_masks[(layer, step)] (H_kv,) bool applied per position: a masked neuron contributes nothing, a
    masked group's query heads output zero (their K/V stay complete: the refilled cache's semantics)."""
    head_masks = head_masks or {}
    sites = layer_sites(model)
    P = len(prompt_ids)
    hooks = []

    def position_masks(layer: int, T: int, F: int, dtype, table=masks) -> torch.Tensor:
        rows = []
        for t in range(T):
            step = 0 if t < P else t - P + 1
            m = table.get((layer, step))
            rows.append(torch.ones(F, dtype=torch.bool) if m is None else m)
        return torch.stack(rows).to(dtype)

    for l, s in enumerate(sites):
        def pre(module, args, l=l):
            h = args[0]                                    # (B, T, F) input of fc2 / down_proj
            return (h * position_masks(l, h.shape[-2], h.shape[-1], h.dtype),) + tuple(args[1:])
        hooks.append(s.ffn_down.register_forward_pre_hook(pre))

        def pre_heads(module, args, l=l, s=s):
            a = args[0]                                    # (B, T, H*hd) input of out_proj / o_proj
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
