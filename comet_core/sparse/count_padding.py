"""What the revealed count of active units tells the servers: `system.count_padding=none`.

none: the exact count of predicted-active units of every (layer, step) is revealed (the bits of the
mask in permuted coordinates; sparse/masks.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from comet_core.errors import CometError

MODES = ("none",)


@dataclass(frozen=True)
class CountPadding:
    mode: str = "none"

    @classmethod
    def from_cfg(cls, get) -> "CountPadding":
        mode = str(get("count_padding", "none"))
        if mode not in MODES:
            raise CometError(f"system.count_padding must be one of {', '.join(MODES)}, got {mode!r}")
        return cls(mode)
