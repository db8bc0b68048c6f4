"""Where the toolkit keeps large local artefacts (converted weights, trained checkpoints, predictors).

``$COMET_CACHE`` if set, else ``<repo>/.cache/comet`` (gitignored). Never committed.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    env = os.environ.get("COMET_CACHE")
    path = Path(env).expanduser() if env else REPO_ROOT / ".cache" / "comet"
    path.mkdir(parents=True, exist_ok=True)
    return path


SHIPPED_DIR = REPO_ROOT / "models"  # small checkpoints the toolkit ships (made by its own commands)


def resolve_in_cache(path: str | os.PathLike) -> Path:
    """An absolute path as is; a relative one inside the cache dir, or, when the cache does not hold it,
    in the repo's models/ folder (the shipped copy, e.g. shakespeare-opt made by `comet train-lm`)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    cached = cache_dir() / p
    shipped = SHIPPED_DIR / p
    return shipped if not cached.exists() and shipped.exists() else cached


def cache_path(path: str | os.PathLike) -> Path:
    """Where a command WRITES an artefact: an absolute path as is, a relative one in the cache dir
    (never the shipped models/ folder, which only serves as a read fallback)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else cache_dir() / p
