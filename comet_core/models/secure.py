"""Secure decoder-only transformers (OPT and Llama families) over the 2PC engine, with a KV cache.

Private pipeline of one inference (the same for every system):
  * Embedding: the client secret-shares the one-hot rows of its tokens, and the servers multiply them
    with the shared embedding table (Beaver matmul; the table's mask is opened once per inference and
    reused, so each later token opens only its one-hot mask). OPT's learned positions are public
    indices into the shared position table: a local row selection.
  * Decoder layers: the system's protocols (comet_core/systems), with the secret-shared K and V of
    past tokens kept per layer (KV cache); a causal public mask in prefill.
  * LM head: only the last position's logits are computed (mask reused like the embedding). A tied
    head (model.tie_word_embeddings, Llama family: SmolLM2) is the embedding table's one sharing, the
    embedding reading it transposed (models/weights.py); each product keeps its own mask. With
    output=token (the default) the servers run a secure argmax over the vocabulary (`next_token`) and
    reveal only the token id to the client; with output=logits the client receives the whole logit
    vector (which leaks the LM head's subspace) and takes the argmax itself.
"""

from __future__ import annotations


import torch

from comet_core.mpc import arith, pairmax
from comet_core.mpc.engine import MPC, AShare
from comet_core.models.weights import SharedWeights


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, head_dim) for the HF Llama rotary layout (halves duplicated)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    freqs = positions.to(torch.float64)[:, None] * inv[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: AShare) -> AShare:
    h = x.shape[-1] // 2
    return AShare.cat([-x[..., h:], x[..., :h]], -1)


class KVCache:
    """Per layer: shared K and V of all past tokens, (kv_heads, S, head_dim)."""

    def __init__(self, n_layers: int) -> None:
        self.k: list[AShare | None] = [None] * n_layers
        self.v: list[AShare | None] = [None] * n_layers
        self.positions = 0   # tokens processed so far (a system may keep its own K/V, e.g. Comet's heads)

    def append(self, layer: int, k: AShare, v: AShare) -> tuple[AShare, AShare]:
        if self.k[layer] is not None:
            k = AShare.cat([self.k[layer], k], 1)
            v = AShare.cat([self.v[layer], v], 1)
        self.k[layer], self.v[layer] = k, v
        return k, v

    @property
    def length(self) -> int:
        return self.positions


class SecureDecoder:
    def __init__(self, mpc: MPC, weights: SharedWeights, system) -> None:
        self.mpc = mpc
        self.w = weights
        self.system = system
        self.meta = weights.meta
        self.family = weights.family

    @property
    def n_layers(self) -> int:
        return len(self.w.layers)

    def new_cache(self) -> KVCache:
        return KVCache(self.n_layers)

    # -- pieces --------------------------------------------------------------------------------------
    def embed(self, onehot: AShare, start: int) -> AShare:
        """[x]: (T, d) over Z_2^64 = onehot (T, V) @ embed (V, d) (+ positions for OPT)."""
        with self.mpc.label(layer=-1, op="embed"):
            x = arith.matmul(onehot, self.w.globals["embed"], reuse_mask=True)
            if self.family == "opt":
                idx = torch.arange(start, start + onehot.shape[0])
                x = x + self.w.globals["pos"].index_select(0, idx)
            return x

    def attention(self, x: AShare, lw: dict, layer: int, cache: KVCache, start: int) -> AShare:
        """The system's attention operator (systems differ here: Comet skips inactive heads)."""
        return self.system.attention(self, x, lw, layer, cache, start)

    def layer(self, x: AShare, layer: int, cache: KVCache, start: int) -> AShare:
        lw, meta, sysm = self.w.layers[layer], self.meta, self.system
        with self.mpc.label(layer=layer):
            h = sysm.norm(x, lw["ln1_w"], lw.get("ln1_b"), self.family, meta["eps"], op="attn.norm")
            x = x + self.attention(h, lw, layer, cache, start)
            h = sysm.norm(x, lw["ln2_w"], lw.get("ln2_b"), self.family, meta["eps"], op="ffn.norm")
            return x + sysm.ffn(h, lw, meta, layer)

    def head(self, x_last: AShare) -> AShare:
        """Final norm and LM head on the last position: logits (1, V)."""
        g, sysm = self.w.globals, self.system
        with self.mpc.label(layer=-1):
            h = sysm.norm(x_last, g["final_w"], g.get("final_b"), self.family, self.meta["eps"], op="final.norm")
            with self.mpc.label(op="lm_head"):
                return arith.matmul(h, g["head"], reuse_mask=True)

    def next_token(self, logits: AShare) -> AShare:
        """Secure argmax of the logits (1, V): the next token's id as a share (op `lm_head.argmax`):
        tournament levels, then the last survivors all pairs in one tree (pairmax.argmax_last)."""
        with self.mpc.label(layer=-1, op="lm_head.argmax"):
            return pairmax.argmax_last(logits)

    def forward(self, onehot: AShare, cache: KVCache) -> AShare:
        """Run new tokens (one-hot shares, (T, V)) through the model; logits of the last one."""
        start = cache.length
        x = self.embed(onehot, start)
        for i in range(self.n_layers):
            x = self.layer(x, i, cache, start)
            x = self.system.after_layer(self, x, i)    # identity except BOLT's word elimination
        cache.positions += onehot.shape[0]
        return self.head(x[-1:])
