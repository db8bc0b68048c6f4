"""Model zoo: build or load the plaintext HF causal LM that a ``conf/model/*.yaml`` describes.

``load_plain_model(model_cfg, seed=0) -> (model, tokenizer)``: an eval-mode float32 ``OPTForCausalLM``
or ``LlamaForCausalLM`` plus a toolkit tokenizer (``comet_core.models.tokenizers``).

``source`` in the model config:

- ``random``: built from ``OPTConfig`` / ``LlamaConfig`` with the yaml's shape, seeded; no download.
  With ``layers: n`` only n decoder layers are built (so paper-scale shapes fit in memory).
- ``smollm2-gguf``: the real SmolLM2-135M-Instruct (``comet_core.models.smollm2``).
- ``checkpoint``: a toolkit-trained model saved by ``comet train-lm`` (path relative to the cache dir).

``layers: n`` keeps the first n decoder layers of any model (the final norm and LM head stay).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from comet_core.errors import CometError, ConfigError
from comet_core.models.cache import resolve_in_cache
from comet_core.models.tokenizers import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

FAMILIES = ("opt", "llama")
SOURCES = ("random", "smollm2-gguf", "checkpoint")


def _m(model_cfg):
    """The typed model (ModelSchema, comet_core/config/typed.py): its defaults fill what a YAML omits."""
    from comet_core.config.typed import model_params

    return model_params(model_cfg)


def n_layers(model_cfg) -> int:
    """Decoder layers that actually run (``layers`` if set, else ``num_layers``)."""
    model_cfg = _m(model_cfg)
    total = int(model_cfg.num_layers)
    n = model_cfg.layers
    if n is None:
        return total
    n = int(n)
    if not 1 <= n <= total:
        raise ConfigError(f"model.layers={n} is out of range for {model_cfg.name} (1..{total})")
    return n


def build_hf_config(model_cfg, num_layers: int | None = None):
    """The ``transformers`` config for the yaml's shape (random-weight models and training)."""
    model_cfg = _m(model_cfg)
    family = model_cfg.family
    layers = int(num_layers if num_layers is not None else model_cfg.num_layers)
    common = dict(
        vocab_size=int(model_cfg.vocab_size),
        hidden_size=int(model_cfg.hidden_size),
        num_hidden_layers=layers,
        num_attention_heads=int(model_cfg.num_heads),
        max_position_embeddings=int(model_cfg.max_positions),
    )
    act = model_cfg.activation
    if family == "opt":
        from transformers import OPTConfig

        if int(model_cfg.num_kv_heads) != common["num_attention_heads"]:
            raise ConfigError("OPT models have one KV head per query head; set num_kv_heads = num_heads")
        return OPTConfig(
            **common, ffn_dim=int(model_cfg.ffn_dim), word_embed_proj_dim=common["hidden_size"],
            activation_function=act, do_layer_norm_before=True, dropout=float(model_cfg.dropout),
            attention_dropout=0.0, pad_token_id=None, bos_token_id=None, eos_token_id=None,
        )
    if family == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(
            **common, intermediate_size=int(model_cfg.ffn_dim),
            num_key_value_heads=int(model_cfg.num_kv_heads), hidden_act=act,
            rms_norm_eps=float(model_cfg.rms_norm_eps),
            rope_parameters={"rope_type": "default", "rope_theta": float(model_cfg.rope_theta)},
            tie_word_embeddings=bool(model_cfg.tie_word_embeddings),
        )
    raise ConfigError(f"unknown model family '{family}'; valid: {', '.join(FAMILIES)}")


def decoder_layers(model):
    """The ``nn.ModuleList`` of decoder layers of an OPT or Llama causal LM."""
    if hasattr(model, "model") and hasattr(model.model, "decoder"):
        return model.model.decoder.layers
    return model.model.layers


def truncate_layers(model, n: int):
    """Keep only the first n decoder layers (in place)."""
    import torch

    layers = decoder_layers(model)
    if n < len(layers):
        kept = torch.nn.ModuleList(list(layers)[:n])
        if hasattr(model.model, "decoder"):
            model.model.decoder.layers = kept
        else:
            model.model.layers = kept
        model.config.num_hidden_layers = n
        if isinstance(getattr(model.config, "layer_types", None), list):
            model.config.layer_types = model.config.layer_types[:n]
    return model


def seeded_init(model, seed: int) -> None:
    """Re-initialise weights so that decoder layer i depends only on (seed, i): a random model built
    with ``layers: n`` equals the first n layers of the full model (embeddings, final norm and head
    depend only on the seed)."""
    import torch

    def init(module):
        for mod in module.modules():
            for p in mod.parameters(recurse=False):
                p._is_hf_initialized = False  # transformers 5 skips parameters flagged as initialised
            model._init_weights(mod)

    layers = decoder_layers(model)
    in_layers = {id(m) for m in layers.modules()}
    torch.manual_seed(seed)
    for mod in model.modules():
        if id(mod) not in in_layers and mod is not model:
            init_one = [mod] if not list(mod.children()) else []
            for m in init_one:
                init(m)
    for i, layer in enumerate(layers):
        torch.manual_seed(seed * 1_000_003 + i + 1)
        init(layer)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()


def _check_shape(model, model_cfg, where: str, fix: str):
    model_cfg = _m(model_cfg)
    c = model.config
    ffn = getattr(c, "ffn_dim", None) or getattr(c, "intermediate_size", None)
    want = {"hidden_size": c.hidden_size, "num_layers": c.num_hidden_layers, "ffn_dim": ffn,
            "num_heads": c.num_attention_heads, "vocab_size": c.vocab_size}
    for key, have in want.items():
        if int(getattr(model_cfg, key)) != int(have):
            raise CometError(f"{where} has {key}={have} but model config '{model_cfg.name}' "
                             f"says {getattr(model_cfg, key)}; {fix}")


def _load_checkpoint(model_cfg):
    model_cfg = _m(model_cfg)
    import torch
    from transformers import AutoModelForCausalLM

    ckpt = model_cfg.checkpoint
    if not ckpt:
        raise ConfigError(f"model '{model_cfg.name}' has source: checkpoint but no checkpoint path")
    path = resolve_in_cache(ckpt)
    hint = model_cfg.checkpoint_hint or "comet train-lm"
    if not (path / "config.json").is_file():
        raise CometError(f"checkpoint {path} not found; create it with: {hint}")
    try:
        # safetensors only: a pytorch_model.bin would be unpickled (a file's pickle can run code)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, use_safetensors=True)
    except Exception as e:
        raise CometError(f"checkpoint {path} is corrupt ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                         f"recreate it with: {hint} overwrite=true") from e
    _check_shape(model, model_cfg, f"checkpoint {path}", f"recreate it with: {hint} overwrite=true")
    return model


def load_plain_model(model_cfg, seed: int = 0, empty: bool = False,
                     tokenizer: Tokenizer | None = None) -> tuple[Any, Tokenizer]:
    """(eval float32 HF causal LM with ``layers`` applied, tokenizer) for a model config.

    ``empty=True`` (random source only) builds on the meta device: shapes without memory, for cost mode.
    ``tokenizer``: the model's tokenizer when the caller has loaded it already (it is checked, not
    loaded again: SmolLM2's BPE tokenizer takes 0.2-1.5 s to load).
    """
    model_cfg = _m(model_cfg)
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    source = model_cfg.source
    n = n_layers(model_cfg)
    if source == "random":
        from transformers import AutoModelForCausalLM

        hf_cfg = build_hf_config(model_cfg, num_layers=n)
        if empty:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(hf_cfg)
        else:
            with torch.random.fork_rng(devices=[]):
                model = AutoModelForCausalLM.from_config(hf_cfg)
                seeded_init(model, int(seed))
    elif source == "smollm2-gguf":
        from comet_core.models.smollm2 import load_smollm2_model

        model = load_smollm2_model()
        _check_shape(model, model_cfg, "the SmolLM2 GGUF model", "fix conf/model/ to match the real model")
    elif source == "checkpoint":
        model = _load_checkpoint(model_cfg)
    else:
        raise ConfigError(f"unknown model source '{source}'; valid: {', '.join(SOURCES)}")
    truncate_layers(model, n)
    model = model.float().eval() if not empty else model.eval()
    tok = tokenizer if tokenizer is not None else load_tokenizer(model_cfg.tokenizer)
    if tok.vocab_size > int(model_cfg.vocab_size):
        raise ConfigError(f"tokenizer '{tok.name}' has {tok.vocab_size} ids but the model's vocab is "
                          f"{model_cfg.vocab_size}")
    return model, tok


def positions_needed(n_tokens: int, gen_tokens: int = 0) -> int:
    """Positions a greedy run occupies: the prompt plus every generated token but the last, which is
    produced by the final forward pass and never fed back (prompt 127 + 2 new tokens needs 128)."""
    return n_tokens + max(int(gen_tokens) - 1, 0)


def check_positions(n_tokens: int, model_cfg, gen_tokens: int = 0) -> None:
    """Raise a one-line CometError if prompt + generated tokens need more than the model's positions."""
    model_cfg = _m(model_cfg)
    limit = int(model_cfg.max_positions)
    need = positions_needed(n_tokens, gen_tokens)
    if need > limit:
        raise CometError(f"prompt of {n_tokens} tokens + {gen_tokens} generated needs {need} positions and exceeds "
                         f"the {limit} positions of model '{model_cfg.name}'; shorten the prompt or set "
                         f"prompt_len= (at most {limit - max(int(gen_tokens) - 1, 0)}) or fewer gen_tokens=")


def encode_prompt(tokenizer: Tokenizer, text: str, model_cfg, gen_tokens: int = 0,
                  prompt_len: int | None = None) -> list[int]:
    """Token ids of ``text`` (truncated to its last ``prompt_len`` tokens if set), length-checked."""
    ids = tokenizer.encode(text)
    if prompt_len is not None:
        ids = ids[-int(prompt_len):]
    if not ids:
        raise CometError("the prompt is empty after tokenization; give a non-empty prompt=")
    check_positions(len(ids), model_cfg, gen_tokens)
    return ids
