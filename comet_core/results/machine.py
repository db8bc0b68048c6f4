"""What a benchmark records about the machine it ran on, and the refusal to overwrite a results file."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512dq", "avx512_vnni", "amx_tile")


def cpu_info() -> tuple[str, str]:
    """(model name, vector extensions) from /proc/cpuinfo; (platform.processor() or "unknown", "") elsewhere."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "model name" and not model:
                model = val.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(val.split())
    except OSError:
        pass
    return model or platform.processor() or "unknown", "+".join(f for f in VECTOR_FLAGS if f in flags)


def refuse_existing(out: Path, overwrite: bool) -> bool:
    """True (after one line on stderr) if `out` exists and may not be replaced: results are never
    overwritten silently."""
    if Path(out).exists() and not overwrite:
        print(f"error: {out} exists; pass --overwrite or choose another --out", file=sys.stderr)
        return True
    return False
