"""Where, in an OPT or Llama decoder layer, the predictors read their input and the labels come from.

Per decoder layer ``l`` (both families):

- FFN predictor input: the normalised FFN input (what ``fc1`` / ``gate_proj`` see). It is available in
  MPC right before the FFN, so no look-ahead is needed.
- FFN neuron score: ``|act(pre)|`` with ``pre = fc1(x)`` (OPT) or ``gate_proj(x)`` (Llama). A neuron is
  active iff its score > ``tau_l``: ``tau_l = 0`` for ReLU (exact zeros), a calibrated per-layer
  quantile for SiLU (CATS, Lee et al. 2024).
- Head predictor input: the normalised attention input (what ``q/k/v_proj`` see).
- Head importance (our definition, after Deja Vu's head-output norm, Liu et al. 2023): the L2 norm of
  head h's contribution to the residual stream at token t, ``c_h = || W_o[:, h] a_h ||``, normalised to
  a share ``c_h / sum_h c_h``. A head is active iff its share > ``tau_l`` (calibrated per layer to a
  target head sparsity). ``W_o[:, h]`` folds in the output projection, so a head with a large output
  that the projection cancels is not counted as important.
- Masks are applied at the input of ``fc2`` / ``down_proj`` (FFN neurons) and of ``out_proj`` /
  ``o_proj`` (heads), i.e. a masked unit contributes nothing, as when the protocol skips it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LayerSites:
    ffn_in: torch.nn.Module      # forward-pre-hook: args[0] is the FFN predictor input
    ffn_pre: torch.nn.Module     # forward-hook: output is the pre-activation of the neuron score
    ffn_act: object              # callable: pre-activation -> activation
    ffn_down: torch.nn.Module    # forward-pre-hook: args[0] is the (N, F) hidden to mask
    attn: torch.nn.Module        # forward-pre-hook (with kwargs): hidden_states is the head predictor input
    attn_out: torch.nn.Module    # forward-pre-hook: args[0] is (.., H*hd) concatenated head outputs
    num_heads: int
    head_dim: int


def layer_sites(model) -> list[LayerSites]:
    from comet_core.models.zoo import decoder_layers

    cfg = model.config
    H = cfg.num_attention_heads
    out = []
    for layer in decoder_layers(model):
        if hasattr(layer, "fc1"):  # OPT
            out.append(LayerSites(layer.fc1, layer.fc1, layer.activation_fn, layer.fc2, layer.self_attn,
                                  layer.self_attn.out_proj, H, layer.self_attn.head_dim))
        else:  # Llama
            mlp = layer.mlp
            out.append(LayerSites(mlp.gate_proj, mlp.gate_proj, mlp.act_fn, mlp.down_proj, layer.self_attn,
                                  layer.self_attn.o_proj, H, layer.self_attn.head_dim))
    return out


def ffn_dim(model) -> int:
    c = model.config
    return int(getattr(c, "ffn_dim", None) or c.intermediate_size)


def head_shares(attn_out: torch.nn.Linear, a: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Per-head share of the residual contribution: a (..., H*hd) -> (..., H), rows sum to 1."""
    hd = a.shape[-1] // num_heads
    w = attn_out.weight  # (d, H*hd)
    contrib = torch.stack([
        (a[..., h * hd:(h + 1) * hd] @ w[:, h * hd:(h + 1) * hd].T).norm(dim=-1) for h in range(num_heads)
    ], dim=-1)
    return contrib / contrib.sum(-1, keepdim=True).clamp_min(1e-12)


def attn_hidden(args, kwargs) -> torch.Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
