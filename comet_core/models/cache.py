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


def resolve_in_cache(path: str | os.PathLike) -> Path:
    """An absolute path as is; a relative one inside the cache dir."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else cache_dir() / p
