"""The plaintext reference decoder: what a private run must compute, in float64, step by step.

`PlainDecoder` mirrors `SecureDecoder` (comet_core/models/secure.py) on plaintext weights: the same
embedding (one-hot rows times the table, i.e. a row lookup; OPT's learned positions), KV cache, causal
mask in prefill, RoPE and grouped-query attention for Llama, and last-position logits. Every non-linear
operator goes through the system's plaintext twins (`plain_activation`, `plain_softmax`, `plain_norm`,
`plain_ffn`), so for a baseline that approximates (MPCFormer, SecFormer, PUMA, BOLT) it computes the
approximated model, which the private run must equal up to fixed-point rounding; for `dense` it computes
the model itself (equal to the Hugging Face model within 1e-6, tests/test_reference.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from comet_core.models.secure import rope_tables
from comet_core.models.weights import PlainWeights


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


class PlainCache:
    """Per layer: K and V of all past tokens, (kv_heads, S, head_dim) float64."""

    def __init__(self, n_layers: int) -> None:
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k[layer] is not None:
            k, v = torch.cat([self.k[layer], k], 1), torch.cat([self.v[layer], v], 1)
        self.k[layer], self.v[layer] = k, v
        return k, v

    @property
    def length(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[1]


class PlainDecoder:
    """Float64 decoder over `PlainWeights` with the operators of `system` (a DenseSystem or subclass)."""

    def __init__(self, weights: PlainWeights, system) -> None:
        self.w = weights
        self.system = system
        self.meta = weights.meta
        self.family = weights.family

    @property
    def n_layers(self) -> int:
        return len(self.w.layers)

    def new_cache(self) -> PlainCache:
        return PlainCache(self.n_layers)

    def embed(self, ids: list[int], start: int) -> torch.Tensor:
        """x: (T, d) = rows of the embedding table (+ learned positions for OPT)."""
        idx = torch.tensor(ids, dtype=torch.long)
        x = self.w.globals["embed"].double()[idx]
        if self.family == "opt":
            x = x + self.w.globals["pos"].double()[start:start + len(ids)]
        return x

    def attention(self, x: torch.Tensor, lw: dict, layer: int, cache: PlainCache, start: int) -> torch.Tensor:
        sysm, meta = self.system, self.meta
        T = x.shape[0]
        H, Hkv, hd = meta["num_heads"], meta["num_kv_heads"], meta["head_dim"]
        q = sysm.plain_linear(x, lw["wq"], lw.get("bq")).reshape(T, H, hd).transpose(0, 1)      # (H, T, hd)
        k = sysm.plain_linear(x, lw["wk"], lw.get("bk")).reshape(T, Hkv, hd).transpose(0, 1)    # (Hkv, T, hd)
        v = sysm.plain_linear(x, lw["wv"], lw.get("bv")).reshape(T, Hkv, hd).transpose(0, 1)
        if self.family == "llama":
            cos, sin = rope_tables(torch.arange(start, start + T), hd, meta["rope_theta"])
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
        q = q / math.sqrt(hd)
        k_all, v_all = cache.append(layer, k, v)                     # (Hkv, S, hd)
        if Hkv != H:                                                 # grouped-query attention
            rep = torch.arange(Hkv).repeat_interleave(H // Hkv)
            k_all, v_all = k_all.index_select(0, rep), v_all.index_select(0, rep)
        S = k_all.shape[1]
        scores = q @ k_all.transpose(1, 2)                           # (H, T, S)
        mask = None
        if T > 1:
            mask = (torch.arange(S)[None, :] <= torch.arange(start, start + T)[:, None]).to(torch.int64)
        probs = sysm.plain_softmax(scores, mask)
        ctx = (probs @ v_all).transpose(0, 1).reshape(T, H * hd)     # (T, H*hd)
        ctx = self.head_outputs(ctx, x, lw, layer)
        return sysm.plain_linear(ctx, lw["wo"], lw.get("bo"))

    def head_outputs(self, ctx: torch.Tensor, x: torch.Tensor, lw: dict, layer: int) -> torch.Tensor:
        """The heads' outputs ctx (T, H*hd) before the output projection (a sparse evaluation masks them;
        x (T, d) is the attention input)."""
        return ctx

    def ffn(self, h: torch.Tensor, lw: dict, layer: int) -> torch.Tensor:
        return self.system.plain_ffn(h, lw, self.meta, layer)

    def layer(self, x: torch.Tensor, layer: int, cache: PlainCache, start: int) -> torch.Tensor:
        lw, meta, sysm = self.w.layers[layer], self.meta, self.system
        h = sysm.plain_norm(x, lw["ln1_w"], lw.get("ln1_b"), self.family, meta["eps"])
        x = x + self.attention(h, lw, layer, cache, start)
        h = sysm.plain_norm(x, lw["ln2_w"], lw.get("ln2_b"), self.family, meta["eps"])
        return x + self.ffn(h, lw, layer)

    def head(self, x_last: torch.Tensor) -> torch.Tensor:
        g = self.w.globals
        h = self.system.plain_norm(x_last, g["final_w"], g.get("final_b"), self.family, self.meta["eps"])
        return h @ g["head"].double()

    @torch.no_grad()
    def forward(self, ids: list[int], cache: PlainCache, all_positions: bool = False) -> torch.Tensor:
        """New tokens through the model (appending to `cache`); logits (1, V) of the last one, or (T, V)
        of every position with `all_positions` (perplexity; the private run computes only the last)."""
        start = cache.length
        x = self.embed(ids, start)
        for i in range(self.n_layers):
            x = self.layer(x, i, cache, start)
        return self.head(x if all_positions else x[-1:])


@dataclass
class ReferenceGeneration:
    tokens: list[int]
    logits: list[torch.Tensor] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)


def reference_generate(decoder: PlainDecoder, prompt_ids: list[int], new_tokens: int) -> ReferenceGeneration:
    """Greedy, KV-cached: prefill the prompt, then one token per step (as private_generate does)."""
    cache = decoder.new_cache()
    out = ReferenceGeneration(tokens=[])
    ids = list(prompt_ids)
    t0 = time.perf_counter()
    for step in range(new_tokens):
        logits = decoder.forward(ids if step == 0 else ids[-1:], cache)[0]
        nxt = int(torch.argmax(logits))
        out.logits.append(logits.float())
        out.tokens.append(nxt)
        ids.append(nxt)
    out.stage_seconds = {"total": time.perf_counter() - t0}
    return out
