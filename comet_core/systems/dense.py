"""The `dense` system: every operator with the engine's exact functions, no sparsity.

A system decides which protocol runs for each operator of a decoder layer. The secure model
(comet_core/models/secure.py) calls only these methods, so a baseline or Comet replaces an operator
by overriding one method. Every method labels its messages with the operator name (ops.csv).

Operators are chosen by name from comet_core/systems/operators.py: the class attributes below are a
system's defaults, its YAML (`activations:`, `softmax:`, `norm:`, `params:`) may override them. Each
secure method has a plaintext twin (`plain_*`, float64 torch) that computes the same function, used by
the plaintext reference decoder (comet_core/models/reference.py).
"""

from __future__ import annotations

import math

import torch

from comet_core.errors import ConfigError
from comet_core.mpc import arith, nonlinear as nl
from comet_core.mpc.engine import AShare
from comet_core.systems import fused, operators as ops

ACT_KINDS = ("relu", "silu", "gelu")
# the weights and biases of the layers `linear` multiplies by (models/weights.py's layer names)
LINEAR_WEIGHTS = frozenset({"wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo", "w1", "b1", "w2", "b2",
                            "w_gate", "w_up", "w_down"})


class DenseSystem:
    name = "dense"
    ACTIVATIONS = {"relu": "exact", "silu": "exact", "gelu": "exact"}
    SOFTMAX = "exact"
    NORM = "exact"
    IDEAL_PARAMS = staticmethod(ops._iron_params)   # building-block sizes of modelled (OT) operators
    LINEARS = ("beaver",)                            # system.linear choices (iron and bolt add "he")
    HE_PACKINGS: tuple[str, ...] = ()                # system.he_packing choices, the first the default

    def __init__(self, cfg=None) -> None:
        """``cfg``: the system's typed params (comet_core/config/typed.py; a mapping is converted, None: defaults)."""
        from comet_core.config.typed import system_params

        self.cfg = cfg = system_params(cfg, default=self.name)
        acts = dict(self.ACTIVATIONS)
        acts.update({str(k): str(v) for k, v in cfg.activations.items()})
        unknown = set(acts) - set(ACT_KINDS)
        if unknown:
            raise ConfigError(f"system '{self.name}': activations has unknown kinds {sorted(unknown)}; valid: {', '.join(ACT_KINDS)}")
        self.params = {str(k): v for k, v in cfg.params.items()}
        if cfg.ot is not None:                          # system.ot: the OT flavour of modelled operators
            self.params["ot"] = str(cfg.ot)
        self.params["_ideal"] = self.IDEAL_PARAMS(self.params)
        self.linear_name = str(cfg.linear or "beaver")
        if self.linear_name not in self.LINEARS:
            raise ConfigError(f"system '{self.name}': linear={self.linear_name!r} is not available; valid: "
                              f"{', '.join(self.LINEARS)}")
        self.he_packing = str(cfg.he_packing or (self.HE_PACKINGS[0] if self.HE_PACKINGS else ""))
        if self.HE_PACKINGS and self.he_packing not in self.HE_PACKINGS:
            raise ConfigError(f"system '{self.name}': he_packing={self.he_packing!r} is not available; valid: "
                              f"{', '.join(self.HE_PACKINGS)}")
        self.act_ops = {k: ops.lookup(ops.ACTIVATIONS, v, "activation", self.name) for k, v in acts.items()}
        self.act_names = acts
        self.softmax_name = str(cfg.softmax or self.SOFTMAX)
        self.norm_name = str(cfg.norm or self.NORM)
        self.softmax_op = ops.lookup(ops.SOFTMAXES, self.softmax_name, "softmax", self.name)
        self.norm_op = ops.lookup(ops.NORMS, self.norm_name, "norm", self.name)

    def _act(self, kind: str):
        k = "gelu" if kind in ("gelu", "gelu_new") else kind
        if k not in self.act_ops:
            raise ValueError(f"unsupported activation {kind!r}; valid: relu, silu, gelu")
        return self.act_ops[k]

    def approximates(self) -> bool:
        """Whether any operator is an approximation (a name other than `exact`): the private tokens may then
        differ from the unmodified model's; with none, the run computes the plaintext function in fixed point."""
        return any(v != "exact" for v in (*self.act_names.values(), self.softmax_name, self.norm_name))

    def validate(self, mode: str, model, gen_tokens: int = 1) -> None:
        """Refuse (one-line CometError) a run this system cannot do, before any work: ``mode`` (exact | cost)
        and the typed ``model`` (ModelSchema)."""

    def after_layer(self, decoder, x: AShare, layer: int) -> AShare:
        """The hidden states handed to the next layer (identity; BOLT prunes tokens here)."""
        return x

    # -- request and step hooks (systems with per-request state override them) ----------------------
    def prepare(self, mpc, weights, model_cfg) -> None:
        """Once per deployment, after the model owner shared the weights (e.g. share predictors).
        Dense attention and FFN: the fused [W_q | W_k | W_v] and [W_gate | W_up] of every layer (local,
        no messages; otherwise built at their first use: systems/fused.py)."""
        for lw in weights.layers:
            fused.fuse_layer(mpc, lw)

    def owner_held(self) -> frozenset:
        """Layer weights P0 holds in the clear (models/weights.share_weights): under system.linear=he those of
        every linear layer, as Iron's and BOLT's server is the model owner; none otherwise."""
        return LINEAR_WEIGHTS if self.linear_name == "he" else frozenset()

    def fused_layout(self) -> tuple:
        """The layer weights `prepare` joins side by side (fused.LAYER_GROUPS): the model owner shares each
        group straight into one buffer (models/weights.share_weights), so `prepare` joins them as views."""
        return fused.LAYER_GROUPS

    def deploy(self, mpc, decoder) -> None:
        """Once per deployment, before its first request (stage `deploy`, outside MPC.inference): nothing
        here (Comet with system.permutation=deployment permutes its weights here)."""

    def preprocess(self, mpc, decoder) -> None:
        """Per request, before the prompt arrives (stage `preprocess`, inside MPC.inference): nothing here
        (Comet with system.permutation=preprocessed shuffles its weights here)."""

    def start_request(self, mpc, decoder, steps: int = 1) -> None:
        """At the start of one inference request (inside MPC.inference) of `steps` forward passes."""

    def start_step(self, step: int, n_tokens: int) -> None:
        """Before each forward pass: step 0 is the prefill of n_tokens, later steps decode one token."""

    # -- linear layers ---------------------------------------------------------------------------
    def linear(self, x: AShare, w: AShare, b: AShare | None = None, op: str = "linear",
               reuse_mask: bool | None = None) -> AShare:
        """y = x @ W (+ b): Beaver matmul of two secrets (masks re-opened per call by default), or with
        system.linear=he the system's HE product, its packing system.he_packing (mpc/he_linear.py)."""
        with x.mpc.label(op=op):
            if self.linear_name == "he":
                from comet_core.mpc import he_linear
                return he_linear.he_linear(x, w, b, self.params["_ideal"], self.he_packing)
            y = arith.matmul(x, w, reuse_mask=reuse_mask)
            return y + b if b is not None else y

    # -- activations / norms ---------------------------------------------------------------------
    def activation(self, x: AShare, kind: str, op: str = "ffn.act") -> AShare:
        """The FFN activation of `kind` (relu | silu | gelu | gelu_new) with this system's protocol."""
        fn = self._act(kind)
        with x.mpc.label(op=op):
            return fn.secure(x, kind, self.params)

    def norm(self, x: AShare, w: AShare, b: AShare | None, family: str, eps: float, op: str) -> AShare:
        """LayerNorm (family opt) or RMSNorm (llama) with secret weight (and bias)."""
        with x.mpc.label(op=op):
            return self.norm_op.secure(x, w, b, family, eps, self.params)

    def softmax(self, scores: AShare, mask: torch.Tensor | None, op: str = "attn.softmax") -> AShare:
        """Softmax along the last dim; `mask` (T, S) public 0/1 (1 = attend) or None."""
        with scores.mpc.label(op=op):
            return self.softmax_op.secure(scores, mask, self.params)

    # -- plaintext twins (float64; the function the secure methods compute) -----------------------
    def plain_linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        y = x.double() @ w.double()
        return y + b.double() if b is not None else y

    def plain_activation(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        return self._act(kind).plain(x, kind, self.params)

    def plain_norm(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, family: str,
                   eps: float) -> torch.Tensor:
        return self.norm_op.plain(x, w, b, family, eps, self.params)

    def plain_softmax(self, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.softmax_op.plain(scores, mask, self.params)

    def plain_ffn(self, x: torch.Tensor, lw: dict, meta: dict, layer: int) -> torch.Tensor:
        """OPT: fc2(act(fc1 x)); Llama: down(act(gate x) * up x), in float64."""
        act = meta["act"]
        if "w1" in lw:
            h = self.plain_activation(self.plain_linear(x, lw["w1"], lw["b1"]), act)
            return self.plain_linear(h, lw["w2"], lw["b2"])
        g = self.plain_activation(self.plain_linear(x, lw["w_gate"]), act)
        return self.plain_linear(g * self.plain_linear(x, lw["w_up"]), lw["w_down"])

    # -- description (conf/system/README.md table) ------------------------------------------------
    def describe(self) -> dict[str, tuple[str, str, str]]:
        """operator -> (protocol name, what it computes, source)."""
        out = {"linear": ("beaver", "secret x secret Beaver matmul, masks re-opened per call", "engine")}
        if self.linear_name == "he":
            out["linear"] = ("he", "BFV x W + b on shares (TenSEAL), BOLT's slot packing with BSGS rotations; "
                             "ideal mod-p lift", "BOLT sec. 4; EzPC bert: tests/bert/bert.cpp, he.cpp")
            if self.he_packing in ("cheetah", "iron"):
                out["linear"] = ("he", "BFV x W + b on shares (TenSEAL), Iron's coefficient packing; ideal lift",
                                 "Iron sec. 3.1; Cheetah sec. 3; EzPC bert he.cpp parameters")
        for k in ACT_KINDS:
            o = self.act_ops[k]
            what = ops.EXACT_ACT[k] if self.act_names[k] == "exact" else o.protocol
            out[k] = (self.act_names[k], what, o.source)
        out["softmax"] = (self.softmax_name, self.softmax_op.protocol, self.softmax_op.source)
        out["norm"] = (self.norm_name, self.norm_op.protocol, self.norm_op.source)
        return out

    # -- blocks ----------------------------------------------------------------------------------
    def attention(self, dec, x: AShare, lw: dict, layer: int, cache, start: int) -> AShare:
        """Multi-head (grouped-query) attention with the decoder's KV cache. Every head, every step.

        1. q, k, v in one Beaver matmul with the fused [W_q | W_k | W_v] (op attn.qkv: x opened once,
           q, k, v truncated together; systems/fused.py).
        2. RoPE (Llama) on q and k and the 1/sqrt(hd) scaling in one truncation (op attn.rope; OPT:
           attn.scale), or, for a power-of-four hd, the scaling as a shift of the scores' truncation.
        3. Scores over all cached positions (causal mask in prefill), softmax, context, output
           projection. Cost: dense_attention_cost.
        """
        sysm, meta, mpc, family = self, dec.meta, x.mpc, dec.family
        T = x.shape[0]
        H, Hkv, hd = meta["num_heads"], meta["num_kv_heads"], meta["head_dim"]
        wqkv = fused.fused_weight(mpc, lw, "wqkv", ("wq", "wk", "wv"))      # (d, (H + 2 Hkv) hd)
        bqkv = fused.fused_bias(mpc, lw, "bqkv", ("bq", "bk", "bv"))
        qkv = sysm.linear(x, wqkv, bqkv, op="attn.qkv")                     # (T, (H + 2 Hkv) hd)
        nq, nk = H * hd, Hkv * hd
        q = qkv[:, :nq].reshape(T, H, hd).transpose(0, 1)                  # (H, T, hd)
        k = qkv[:, nq:nq + nk].reshape(T, Hkv, hd).transpose(0, 1)         # (Hkv, T, hd)
        v = qkv[:, nq + nk:].reshape(T, Hkv, hd).transpose(0, 1)
        shift = fused.score_shift(hd)
        fac = 1.0 if shift is not None else 1.0 / math.sqrt(hd)
        with mpc.label(op="attn.rope" if family == "llama" else "attn.scale"):
            if family == "llama":
                pos = torch.arange(start, start + T)
                q, k = fused.rope_scale([(q, pos, fac), (k, pos, 1.0)], hd, meta["rope_theta"])
            elif shift is None:
                (q,) = fused.rope_scale([(q, None, fac)], hd, None)
        k_all, v_all = cache.append(layer, k, v)         # (Hkv, S, hd)
        if Hkv != H:                                     # grouped-query attention: repeat KV heads
            rep = torch.arange(Hkv).repeat_interleave(H // Hkv)
            k_all, v_all = k_all.index_select(0, rep), v_all.index_select(0, rep)
        S = k_all.shape[1]
        with mpc.label(op="attn.scores"):
            scores = fused.scaled_scores(q, k_all.transpose(1, 2), hd, shift)   # (H, T, S)
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
        """OPT: fc2(act(fc1 x)); Llama: down(act(gate x) * up x), gate and up as one Beaver matmul with
        the fused [W_gate | W_up] (op ffn.gate_up: x opened once). Cost: dense_ffn_cost."""
        act = meta["act"]
        if "w1" in lw:
            h = self.linear(x, lw["w1"], lw["b1"], op="ffn.fc1")
            h = self.activation(h, act)
            return self.linear(h, lw["w2"], lw["b2"], op="ffn.fc2")
        gu = self.linear(x, fused.fused_weight(x.mpc, lw, "w_gate_up", ("w_gate", "w_up")), op="ffn.gate_up")
        F = gu.shape[-1] // 2
        g, u = gu[:, :F], gu[:, F:]                       # (T, F) each
        g = self.activation(g, act)
        with x.mpc.label(op="ffn.gate_mul"):
            h = arith.mul(g, u)
        return self.linear(h, lw["w_down"], op="ffn.down")


# ---- cost formulas (the dense system's exact operators; pinned against the ledger by tests) -----------

def dense_attention_cost(mpc, T: int, S: int, d: int, H: int, Hkv: int, hd: int, llama: bool,
                         reused: bool = False):
    """One layer's DenseSystem.attention for T new tokens, S positions after the step (exact softmax).

    attn.qkv: one matmul (T, d) x (d, (H + 2 Hkv) hd); attn.rope / attn.scale: one truncation of q and
    k (Llama) or of q (OPT, only when sqrt(hd) is not a power of two); attn.scores (H, T, hd) x
    (H, hd, S); attn.softmax over H T rows of S; attn.context (H, T, S) x (H, S, hd); attn.out (T, H hd)
    x (H hd, d). `reused`: the weights' masks were opened earlier in the inference (decode steps).
    """

    n = (H + 2 * Hkv) * hd
    c = arith.matmul_cost(mpc, T * d, d * n, T * n, reused)
    if llama:
        c = c + fused.rope_scale_cost(mpc, T * (H + Hkv) * hd)
    elif fused.score_shift(hd) is None:
        c = c + fused.rope_scale_cost(mpc, T * H * hd)
    c = c + arith.matmul_cost(mpc, H * T * hd, H * S * hd, H * T * S)
    c = c + nl.softmax_cost(mpc, H * T, S)
    c = c + arith.matmul_cost(mpc, H * T * S, H * S * hd, H * T * hd)
    return c + arith.matmul_cost(mpc, T * H * hd, H * hd * d, T * d, reused)


def dense_ffn_cost(mpc, T: int, d: int, F: int, act: str, reused: bool = False):
    """One layer's DenseSystem.ffn with the exact activation `act` (relu | silu | gelu).

    OPT (relu / gelu): fc1 (T, d) x (d, F), activation, fc2 (T, F) x (F, d). Llama (silu): ffn.gate_up
    (T, d) x (d, 2F) (one matmul), SiLU on the gate half, ffn.gate_mul, ffn.down (T, F) x (F, d).
    """
    from comet_core.mpc import smallring

    n = T * F
    if act == "silu":
        c = arith.matmul_cost(mpc, T * d, d * 2 * F, 2 * n, reused) + nl.silu_cost(mpc, n)
        c = c + arith.mul_cost(mpc, n, n, n)
    else:
        c = arith.matmul_cost(mpc, T * d, d * F, n, reused)
        c = c + (smallring.activation_relu_cost(mpc, n) if act == "relu" else nl.gelu_cost(mpc, n))
    return c + arith.matmul_cost(mpc, n, F * d, T * d, reused)
