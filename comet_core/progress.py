"""Progress bars that go quiet when not on a TTY or under CI=true."""

from __future__ import annotations

import os
import sys


def quiet() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes") or not sys.stderr.isatty()


def progress(iterable=None, **kwargs):
    """tqdm over `iterable`, disabled when `quiet()`."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", quiet())
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)
