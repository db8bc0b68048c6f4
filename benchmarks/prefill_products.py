#!/usr/bin/env python3
"""Benchmark: a 32-token prefill's ring products of SmolLM2-135M by torch's int64 GEMM, the float64 limb
kernel and the numba int64 kernel (mpc/fewrowmm.py), each checked against torch's int64 product first.

    PYTHONPATH=. python benchmarks/prefill_products.py        (prints one line per shape; min of 3,
                                                               interleaved; the limbs' workspace size)
Run it under results/matmul/avx2_emulation.sh for an AVX2-only host (results/matmul/README.md).
"""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from comet_core.mpc import fewrowmm, matmul, ringmm  # noqa: E402


def main() -> int:
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)

    def w(*s):
        return torch.randint(-2 ** 63, 2 ** 63 - 1, s, generator=g, dtype=torch.int64)

    cases = [("embed_onehot 32x49152@49152x576", w(32, 49152), w(49152, 576)),
             ("ffn_gate_up 32x576@576x3072", w(32, 576), w(576, 3072)),
             ("ffn_down 32x1536@1536x576", w(32, 1536), w(1536, 576)), ("qkv 32x576@576x960", w(32, 576), w(576, 960)),
             ("beaver_parties 64x576@576x1536", w(64, 576), w(576, 1536))]
    print("torch capability", matmul.cpu_capability(), "NUMBA_CPU_NAME", os.environ.get("NUMBA_CPU_NAME"),
          "load %.2f" % os.getloadavg()[0])
    for name, a, b in cases:
        ref = torch.matmul(a, b)
        ks = {"int64_torch": lambda: torch.matmul(a, b), "limbs": lambda: ringmm.limb_matmul(a, b),
              "int64_numba": lambda: fewrowmm.matmul_2d(a, b)}
        for k, f in ks.items():
            if not torch.equal(f(), ref):
                raise SystemExit(f"{k} differs from torch's int64 product on {name}")
        ts = {k: [] for k in ks}
        for _ in range(3):
            for k, f in ks.items():
                t = time.perf_counter()
                f()
                ts[k].append(time.perf_counter() - t)
        ws = ringmm.workspace_bytes() >> 20
        print(f"{name}: " + ", ".join(f"{k} {min(v) * 1e3:.1f} ms" for k, v in ts.items()) + f"; limb workspaces {ws} MiB")
        ringmm.release_workspace()
    print("load after %.2f" % os.getloadavg()[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
