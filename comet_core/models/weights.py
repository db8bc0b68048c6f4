"""Model weights as the servers hold them: secret-shared by the model owner, one layout for all families.

Linear weights are stored as (in, out) matrices so that y = x @ W + b. The model owner shares every
tensor once per deployment (ledger phase `setup`, not counted in per-inference traffic).

Layer keys:
  OPT:   ln1_w ln1_b wq bq wk bk wv bv wo bo ln2_w ln2_b w1 b1 w2 b2
  Llama: ln1_w wq wk wv wo ln2_w w_gate w_up w_down
Global keys: embed (V, d), pos (positions, d; OPT only), final_w, final_b (OPT), head (d, V).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from comet_core.mpc.engine import MPC, AShare
from comet_core.memory import drop_mapped_pages


@dataclass
class PlainWeights:
    family: str
    layers: list[dict[str, torch.Tensor]]
    globals: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)  # num_heads, num_kv_heads, head_dim, eps, rope_theta, act


def _t(linear) -> torch.Tensor:
    return linear.weight.detach().t()


def extract(model, family: str, activation: str, tied: bool | None = None) -> PlainWeights:
    """Pull the weights out of an HF OPTForCausalLM / LlamaForCausalLM (real or meta tensors).
    `tied`: the run's model config's tie_word_embeddings (Llama family; None: the HF config's), which
    weight_shapes reads too, so that exact and cost mode share the same tables."""
    cfg = model.config
    heads = cfg.num_attention_heads
    hd = cfg.hidden_size // heads
    if family == "opt":
        dec = model.model.decoder
        assert dec.project_in is None and dec.project_out is None, "word_embed_proj_dim != hidden_size"
        layers = []
        for L in dec.layers:
            a = L.self_attn
            layers.append(dict(
                ln1_w=L.self_attn_layer_norm.weight.detach(), ln1_b=L.self_attn_layer_norm.bias.detach(),
                wq=_t(a.q_proj), bq=a.q_proj.bias.detach(), wk=_t(a.k_proj), bk=a.k_proj.bias.detach(),
                wv=_t(a.v_proj), bv=a.v_proj.bias.detach(), wo=_t(a.out_proj), bo=a.out_proj.bias.detach(),
                ln2_w=L.final_layer_norm.weight.detach(), ln2_b=L.final_layer_norm.bias.detach(),
                w1=_t(L.fc1), b1=L.fc1.bias.detach(), w2=_t(L.fc2), b2=L.fc2.bias.detach(),
            ))
        glob = dict(embed=dec.embed_tokens.weight.detach(),
                    pos=dec.embed_positions.weight.detach()[2:],  # OPT offsets positions by 2
                    final_w=dec.final_layer_norm.weight.detach(), final_b=dec.final_layer_norm.bias.detach(),
                    head=model.lm_head.weight.detach().t())
        meta = dict(num_heads=heads, num_kv_heads=heads, head_dim=hd, eps=1e-5, act=activation)
        return PlainWeights("opt", layers, glob, meta)
    if family == "llama":
        m = model.model
        layers = []
        for L in m.layers:
            a, f = L.self_attn, L.mlp
            layers.append(dict(
                ln1_w=L.input_layernorm.weight.detach(), wq=_t(a.q_proj), wk=_t(a.k_proj), wv=_t(a.v_proj),
                wo=_t(a.o_proj), ln2_w=L.post_attention_layernorm.weight.detach(),
                w_gate=_t(f.gate_proj), w_up=_t(f.up_proj), w_down=_t(f.down_proj),
            ))
        glob = dict(embed=m.embed_tokens.weight.detach(), final_w=m.norm.weight.detach(),
                    head=model.lm_head.weight.detach().t())
        rope = getattr(cfg, "rope_parameters", None) or {}
        theta = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
        meta = dict(num_heads=heads, num_kv_heads=cfg.num_key_value_heads, head_dim=hd,
                    eps=float(cfg.rms_norm_eps), rope_theta=theta, act=activation,
                    tied_head=_tied(model, bool(getattr(cfg, "tie_word_embeddings", False) if tied is None else tied)))
        return PlainWeights("llama", layers, glob, meta)
    raise ValueError(f"unknown family {family}")


def _tied(model, declared: bool) -> bool:
    """Whether a Llama-family model's LM head is its embedding table (tie_word_embeddings: SmolLM2): then
    the owner shares the table once (share_weights). A config that declares it of weights that are not
    tied is refused (the shares would not be the model's)."""
    same = model.lm_head.weight is model.model.embed_tokens.weight
    if declared and not same and not model.lm_head.weight.is_meta:
        from comet_core.errors import CometError

        raise CometError("the model config sets tie_word_embeddings but the checkpoint's LM head is not its "
                         "embedding table; set model.tie_word_embeddings=false")
    return declared


@dataclass
class SharedWeights:
    family: str
    layers: list[dict[str, AShare]]
    globals: dict[str, AShare]
    meta: dict


def share_weights(mpc: MPC, w: PlainWeights, groups: tuple = (), held: frozenset = frozenset()) -> SharedWeights:
    """The model owner secret-shares every tensor (phase `setup`).

    `held`: layer weights P0 holds in the clear (P1's share zero: MPC.share's to_p0), those of the linear
    layers of a system whose server is the model owner (``system.owner_held()``: system.linear=he).

    A Llama-family model with tied embeddings (meta `tied_head`: the config's tie_word_embeddings, as
    SmolLM2) shares its table once, as the LM head (d, V): the embedding is a transposed view of the same
    shares (registered apart, so each product keeps its own Beaver mask), so the setup sends V * d fewer
    words and the parties hold one copy. OPT's configs declare no tie and share both, as before.

    Once shared, a plaintext tensor that views a checkpoint's memory map has its resident pages handed back
    (memory.drop_mapped_pages: read again from the page cache if the plaintext model runs afterwards), so
    the peak is the shares and not shares + model.

    `groups`: ((name, parts), ...) of layer weights the system's `prepare` joins side by side along their
    last dim (systems/fused.py LAYER_GROUPS; ``system.fused_layout()``). In an exact simulation on the
    CPU each group's parts are shared straight into the columns of one buffer, so the join is a view
    (fused.fused_weight) instead of a copy. The same shares, stream draws (tensors in the layer's order),
    ledger rows and weight ids as sharing each tensor alone: only where the shares are stored changes.
    """
    def sh(t: torch.Tensor, out: torch.Tensor | None = None, to_p0: bool = False) -> AShare:
        where = {} if out is None else dict(out=out)   # `out` only when grouped (wrappers of share stay valid)
        if to_p0:
            where["to_p0"] = True
        shared = mpc.register_weight(mpc.share(t, owner="model_owner", phase="setup", **where))
        drop_mapped_pages(t)   # a checkpoint's mapped pages go back to the kernel as they are shared
        return shared

    def share_layer(layer: dict[str, torch.Tensor]) -> dict[str, AShare]:
        dest = _group_columns(layer, groups) if fast else {}
        return {k: sh(v, dest.get(k), k in held) for k, v in layer.items()}

    fast = bool(groups) and mpc.simulated and not mpc.is_cost and mpc.device.type == "cpu"
    with mpc.label(stage="setup"):
        layers = [share_layer(layer) for layer in w.layers]
        tied = bool(w.meta.get("tied_head")) and {"embed", "head"} <= set(w.globals)
        glob = {k: sh(v) for k, v in w.globals.items() if not (tied and k == "embed")}
        if tied:   # one table: the embedding is the head's shares seen transposed, a weight of its own (its mask)
            glob["embed"] = mpc.register_weight(glob["head"].transpose(0, 1))
    return SharedWeights(w.family, layers, glob, dict(w.meta))


def _group_columns(layer: dict[str, torch.Tensor], groups: tuple) -> dict[str, torch.Tensor]:
    """{part: its columns (2, ..., n) of its group's party-stacked int64 buffer} for every group whose
    parts are all float tensors of this layer with the same leading shape (others are shared alone)."""
    dest = {}
    for _, parts in groups:
        ts = [layer.get(p) for p in parts]
        if any(t is None or not t.is_floating_point() or t.dim() == 0 for t in ts) \
                or len({tuple(t.shape[:-1]) for t in ts}) != 1:
            continue
        buf = torch.empty((2, *ts[0].shape[:-1], sum(t.shape[-1] for t in ts)), dtype=torch.int64)
        o = 0
        for p, t in zip(parts, ts):
            dest[p] = buf[..., o:o + t.shape[-1]]
            o += t.shape[-1]
    return dest


def weight_shapes(model_cfg, n_layers: int) -> PlainWeights:
    """The same layout as `extract`, as data-free `Shape`s from a model config (cost mode: no HF model)."""
    from comet_core.mpc.shape import Shape

    f = lambda *s: Shape(s, torch.float32)  # noqa: E731
    d, ff, V = int(model_cfg.hidden_size), int(model_cfg.ffn_dim), int(model_cfg.vocab_size)
    H, Hkv = int(model_cfg.num_heads), int(model_cfg.num_kv_heads)
    hd = d // H
    act = str(model_cfg.activation)
    if model_cfg.family == "opt":
        layer = dict(ln1_w=f(d), ln1_b=f(d), wq=f(d, d), bq=f(d), wk=f(d, d), bk=f(d), wv=f(d, d), bv=f(d),
                     wo=f(d, d), bo=f(d), ln2_w=f(d), ln2_b=f(d), w1=f(d, ff), b1=f(ff), w2=f(ff, d), b2=f(d))
        glob = dict(embed=f(V, d), pos=f(int(model_cfg.max_positions), d), final_w=f(d), final_b=f(d),
                    head=f(d, V))
        meta = dict(num_heads=H, num_kv_heads=H, head_dim=hd, eps=1e-5, act=act)
    else:
        layer = dict(ln1_w=f(d), wq=f(d, H * hd), wk=f(d, Hkv * hd), wv=f(d, Hkv * hd), wo=f(H * hd, d),
                     ln2_w=f(d), w_gate=f(d, ff), w_up=f(d, ff), w_down=f(ff, d))
        glob = dict(embed=f(V, d), final_w=f(d), head=f(d, V))
        meta = dict(num_heads=H, num_kv_heads=Hkv, head_dim=hd, eps=float(model_cfg.get("rms_norm_eps", 1e-5)),
                    rope_theta=float(model_cfg.get("rope_theta", 10000.0)), act=act,
                    tied_head=bool(model_cfg.get("tie_word_embeddings", False)))
    return PlainWeights(str(model_cfg.family), [dict(layer) for _ in range(n_layers)], glob, meta)
