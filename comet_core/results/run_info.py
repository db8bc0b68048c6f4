"""What a run ran on: software versions, git revision, machine, threads, load; saved as run_info.json.

``RunInfo.start()`` records the machine state before the work (load average, time), ``finish()`` after
it (load average, wall time, peak memory); ``as_dict()`` is what ``run_info.json`` holds.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "transformers", "numpy", "pandas", "hydra-core", "omegaconf")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def toolkit_version() -> str:
    """The installed distribution's version (pyproject.toml), or the source tree's if not installed."""
    try:
        return metadata.version("comet-mpc")
    except metadata.PackageNotFoundError:
        import re

        text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
        m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
        return m.group(1) if m else "unknown"


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _peak_rss_bytes() -> int:
    """This process's peak resident memory. Linux: VmHWM of /proc/self/status, the high-water mark of this
    process's own memory (getrusage's ru_maxrss carries over the RSS of the parent it was forked from when
    it exec'd: a run started by a 1.3 GB test runner would report 1.3 GB); elsewhere ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024   # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024   # macOS: bytes, Linux: KiB
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale
    except (ImportError, OSError):
        return -1


@dataclass
class RunInfo:
    started: float = 0.0
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)
    wall_s: float = float("nan")
    peak_rss_bytes: int = -1
    extra: dict = field(default_factory=dict)   # e.g. transport=tcp: each role's pid and address

    @classmethod
    def start(cls) -> "RunInfo":
        return cls(started=time.time(), load_before=_load())

    def finish(self) -> "RunInfo":
        self.load_after = _load()
        self.wall_s = round(time.time() - self.started, 3)
        self.peak_rss_bytes = _peak_rss_bytes()
        return self

    def as_dict(self) -> dict:
        from comet_core.results.tables import git_revision

        try:
            import torch

            threads = torch.get_num_threads()
            from comet_core.mpc import ringmm

            # the CPU ring-product kernel this run took (both are exact; chosen by speed on this host)
            kernel = ringmm.kernel_record()
        except ImportError:  # pragma: no cover
            threads, kernel = -1, "unknown"
        return {
            "toolkit_version": toolkit_version(), "git_revision": git_revision(), "packages": package_versions(),
            "python": sys.version.split()[0], "platform": platform.platform(), "host": socket.gethostname(),
            "cpu_count": os.cpu_count(), "torch_threads": threads, "ring_kernel": kernel,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "wall_s": self.wall_s, "load_avg_before": self.load_before, "load_avg_after": self.load_after,
            "peak_rss_bytes": self.peak_rss_bytes, "argv": sys.argv, **self.extra,
        }

    def save(self, folder: Path) -> None:
        (Path(folder) / "run_info.json").write_text(json.dumps(self.as_dict(), indent=2) + "\n")
