#!/usr/bin/env python3
"""Wall time of the FFN's ReLU 128x3072 in exact mode under engine.comparison=circuit|fss and
engine.relu_bits=64|16|12 (issue 27: where fss's time goes, and how much shorter DCF domains recover).

    python benchmarks/relu_bits_wall.py

One process simulates the dealer and both parties (smallring.activation_relu, the FFN's ReLU operator);
inputs N(0, 2^2) on 16 fractional bits (inside relu_range's default window at 16 bits); median of 3 after a
warm-up; prints wall seconds, rounds, online and offline MB, the largest |error| against plaintext ReLU, and
the CPU model, its vector flags and the 1-minute load before and after (only a quiet sitting, load < 1, compares wall times fairly).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from comet_core.mpc import smallring  # noqa: E402
from comet_core.mpc.engine import MPC, EngineConfig  # noqa: E402
from comet_core.results.machine import cpu_info  # noqa: E402


def main() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.round(torch.randn(128, 3072, generator=g, dtype=torch.float64) * 2.0 * 2**16) / 2**16
    model, flags = cpu_info()
    print(f"CPU {model} ({flags}), torch threads {torch.get_num_threads()}; load {os.getloadavg()[0]:.2f} before")
    for comparison in ("circuit", "fss"):
        for bits in (64, 16, 12):
            m = MPC(EngineConfig(comparison=comparison, relu_bits=bits), seed=1, mode="exact")
            smallring.activation_relu(m.share(x))   # warm-up (numba, tables)
            walls = []
            for _ in range(3):
                xs = m.share(x)
                mark = m.ledger.mark()
                t0 = time.perf_counter()
                out = smallring.activation_relu(xs)
                walls.append(time.perf_counter() - t0)
                c = m.ledger.cost_since(mark)
            err = float((m.reveal(out) - x.clamp_min(0)).abs().max())
            print(f"{comparison:8s} relu_bits {bits:2d}: wall {statistics.median(walls):.3f} s, rounds {c.rounds}, "
                  f"online {c.online_bytes / 1e6:.2f} MB, offline {c.offline_bytes / 1e6:.1f} MB, max |error| {err:.3g}")
    print(f"load {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
