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


class layer_progress:
    """A bar over every decoder layer of every forward pass of a SecureDecoder (tokens x layers):
    private generation is otherwise silent for minutes. Wraps ``model.layer`` for the block's duration.

    with layer_progress(model, passes=gen_tokens): private_generate(...)
    """

    def __init__(self, model, passes: int, desc: str = "private layers"):
        self.model, self.passes, self.desc = model, int(passes), desc

    def __enter__(self):
        model, n = self.model, int(self.model.n_layers)
        self.bar = progress(total=self.passes * n, desc=self.desc, unit="layer", position=1)
        orig = model.layer
        self.done = 0

        def layer(x, i, *args, **kwargs):
            out = orig(x, i, *args, **kwargs)
            self.done += 1
            self.bar.set_postfix_str(f"token {(self.done - 1) // n + 1}/{self.passes}, layer {i + 1}/{n}", refresh=False)
            self.bar.update(1)
            return out

        model.layer = layer  # instance attribute shadows the method
        return self

    def __exit__(self, *exc):
        self.model.__dict__.pop("layer", None)
        self.bar.close()
        return False
