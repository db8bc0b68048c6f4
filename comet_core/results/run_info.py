"""What a run ran on: software versions, git revision, machine, threads, load; saved as run_info.json.

``RunInfo.start()`` records the machine state before the work (load average, time) and samples the load
average while the run works (a daemon thread, every few seconds), ``finish()`` after it (load average, the
highest sample, wall time, peak memory); ``as_dict()`` is what ``run_info.json`` holds.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import threading
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


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 0


LOAD_SAMPLE_S = 5.0


class _LoadSampler(threading.Thread):
    """The highest 1-minute load average seen while the run works."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="comet-load-sampler")
        self.stop = threading.Event()
        self.peak = (_load() or [float("nan")])[0]

    def run(self) -> None:
        while not self.stop.wait(LOAD_SAMPLE_S):
            now = _load()
            if now:
                self.peak = max(self.peak, now[0])


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
    load_max: float = float("nan")   # highest 1-minute load average sampled during the run
    extra: dict = field(default_factory=dict)   # e.g. transport=tcp: each role's pid and address
    _sampler: _LoadSampler | None = field(default=None, repr=False)

    @classmethod
    def start(cls) -> "RunInfo":
        info = cls(started=time.time(), load_before=_load())
        info._sampler = _LoadSampler()
        info._sampler.start()
        return info

    def stop(self) -> None:
        """End the load sampling (also when the run failed)."""
        if self._sampler is not None:
            self._sampler.stop.set()
            self.load_max = self._sampler.peak

    def finish(self) -> "RunInfo":
        self.load_after = _load()
        self.stop()
        samples = [x for x in (self.load_max, *self.load_after[:1], *self.load_before[:1]) if x == x]
        self.load_max = max(samples) if samples else float("nan")
        self.wall_s = round(time.time() - self.started, 3)
        self.peak_rss_bytes = _peak_rss_bytes()
        return self

    def as_dict(self) -> dict:
        from comet_core.results.tables import git_revision

        try:
            import torch

            threads = torch.get_num_threads()
            from comet_core.mpc import matmul

            # the CPU ring-product kernel this run took (both are exact; chosen by speed on this host)
            kernel = matmul.kernel_record()
        except ImportError:  # pragma: no cover
            threads, kernel = -1, "unknown"
        return {
            "toolkit_version": toolkit_version(), "git_revision": git_revision(), "packages": package_versions(),
            "python": sys.version.split()[0], "platform": platform.platform(), "host": socket.gethostname(),
            "cpu_count": os.cpu_count(), "usable_cores": usable_cores(), "torch_threads": threads, "ring_kernel": kernel,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "wall_s": self.wall_s, "load_avg_before": self.load_before, "load_avg_after": self.load_after,
            "load_avg_max": self.load_max if self.load_max == self.load_max else None,
            "peak_rss_bytes": self.peak_rss_bytes, "argv": sys.argv, **self.extra,
        }

    def save(self, folder: Path) -> None:
        (Path(folder) / "run_info.json").write_text(json.dumps(self.as_dict(), indent=2) + "\n")
