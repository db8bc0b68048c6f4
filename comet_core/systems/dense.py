"""The `dense` system: every operator with the engine's exact functions, no sparsity.

A system decides which protocol runs for each operator of a decoder layer. The secure model
(comet_core/models/secure.py) calls only these methods, so a baseline or Comet replaces an operator
by overriding one method. Every method labels its messages with the operator name (ops.csv).
"""

from __future__ import annotations

import torch

import math

from comet_core.mpc import arith, compare, nonlinear as nl
from comet_core.mpc.engine import AShare
from comet_core.models.secure import _rotate_half, rope_tables


class DenseSystem:
    name = "dense"

    def __init__(self, cfg=None) -> None:
        self.cfg = cfg

    # -- request and step hooks (systems with per-request state override them) ----------------------
    def prepare(self, mpc, weights, model_cfg) -> None:
        """Once per deployment, after the model owner shared the weights (e.g. share predictors)."""

    def start_request(self, mpc, decoder, steps: int = 1) -> None:
        """At the start of one inference request (inside MPC.inference) of `steps` forward passes."""

    def start_step(self, step: int, n_tokens: int) -> None:
        """Before each forward pass: step 0 is the prefill of n_tokens, later steps decode one token."""

    # -- linear layers ---------------------------------------------------------------------------
    def linear(self, x: AShare, w: AShare, b: AShare | None = None, op: str = "linear",
               reuse_mask: bool | None = None) -> AShare:
        """y = x @ W (+ b): Beaver matmul of two secrets (masks re-opened per call by default)."""
        with x.mpc.label(op=op):
            y = arith.matmul(x, w, reuse_mask=reuse_mask)
            return y + b if b is not None else y

    # -- activations / norms ---------------------------------------------------------------------
    def activation(self, x: AShare, kind: str, op: str = "ffn.act") -> AShare:
        with x.mpc.label(op=op):
            if kind == "relu":
                return compare.relu(x)
            if kind == "silu":
                return nl.silu(x)
            if kind in ("gelu", "gelu_new"):
                return nl.gelu(x)
            raise ValueError(f"unsupported activation {kind!r}; valid: relu, silu, gelu")

    def norm(self, x: AShare, w: AShare, b: AShare | None, family: str, eps: float, op: str) -> AShare:
        with x.mpc.label(op=op):
            if family == "opt":
                return nl.layernorm(x, w, b, eps)
            return nl.rmsnorm(x, w, eps)

    def softmax(self, scores: AShare, mask: torch.Tensor | None, op: str = "attn.softmax") -> AShare:
        with scores.mpc.label(op=op):
            return nl.softmax(scores, -1, mask)

    # -- blocks ----------------------------------------------------------------------------------
    def attention(self, dec, x: AShare, lw: dict, layer: int, cache, start: int) -> AShare:
        """Multi-head (grouped-query) attention with the decoder's KV cache: q, k, v projections,
        RoPE (Llama) / scaling, scores over all cached positions (causal mask in prefill), softmax,
        context and the output projection. Every head, every step."""
        sysm, meta, mpc, family = self, dec.meta, x.mpc, dec.family
        T = x.shape[0]
        H, Hkv, hd = meta["num_heads"], meta["num_kv_heads"], meta["head_dim"]
        q = sysm.linear(x, lw["wq"], lw.get("bq"), op="attn.q")
        k = sysm.linear(x, lw["wk"], lw.get("bk"), op="attn.k")
        v = sysm.linear(x, lw["wv"], lw.get("bv"), op="attn.v")
        q = q.reshape(T, H, hd).transpose(0, 1)          # (H, T, hd)
        k = k.reshape(T, Hkv, hd).transpose(0, 1)        # (Hkv, T, hd)
        v = v.reshape(T, Hkv, hd).transpose(0, 1)
        with mpc.label(op="attn.rope" if family == "llama" else "attn.scale"):
            if family == "llama":
                cos, sin = rope_tables(torch.arange(start, start + T), hd, meta["rope_theta"])
                q = arith.mul_public(q, cos) + arith.mul_public(_rotate_half(q), sin)
                k = arith.mul_public(k, cos) + arith.mul_public(_rotate_half(k), sin)
            q = arith.mul_public(q, 1.0 / math.sqrt(hd))
        k_all, v_all = cache.append(layer, k, v)         # (Hkv, S, hd)
        if Hkv != H:                                     # grouped-query attention: repeat KV heads
            rep = torch.arange(Hkv).repeat_interleave(H // Hkv)
            k_all, v_all = k_all.index_select(0, rep), v_all.index_select(0, rep)
        S = k_all.shape[1]
        with mpc.label(op="attn.scores"):
            scores = arith.matmul(q, k_all.transpose(1, 2))   # (H, T, S)
        mask = None
        if T > 1:
            pos_q = torch.arange(start, start + T)[:, None]
            mask = (torch.arange(S)[None, :] <= pos_q).to(torch.int64)   # (T, S) causal
        probs = sysm.softmax(scores, mask)
        with mpc.label(op="attn.context"):
            ctx = arith.matmul(probs, v_all)                # (H, T, hd)
        ctx = ctx.transpose(0, 1).contiguous().reshape(T, H * hd)
        return sysm.linear(ctx, lw["wo"], lw.get("bo"), op="attn.out")

    def ffn(self, x: AShare, lw: dict, meta: dict, layer: int) -> AShare:
        """OPT: fc2(act(fc1 x)); Llama: down(act(gate x) * up x)."""
        act = meta["act"]
        if "w1" in lw:
            h = self.linear(x, lw["w1"], lw["b1"], op="ffn.fc1")
            h = self.activation(h, act)
            return self.linear(h, lw["w2"], lw["b2"], op="ffn.fc2")
        g = self.linear(x, lw["w_gate"], op="ffn.gate")
        u = self.linear(x, lw["w_up"], op="ffn.up")
        g = self.activation(g, act)
        with x.mpc.label(op="ffn.gate_mul"):
            h = arith.mul(g, u)
        return self.linear(h, lw["w_down"], op="ffn.down")
