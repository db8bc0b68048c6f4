"""Exact int64 products of a few rows by a numba kernel: the "int64_numba" strategy of mpc/matmul.py (for
hosts whose torch int64 GEMM loses to the float64 limb kernel: AVX2-only CPUs; call matmul, not this).

a (m, k) @ b (k, n) over Z_2^64 for m <= ROWS, in one pass over b:

    for each chunk of columns j0 .. j1 (split over the threads; m x width accumulators stay in L1/L2):
      for each row i of b:  out[r, j0:j1] += a[r, i] * b[i, j0:j1]   for r = 0 .. m-1

int64 multiply-adds wrap mod 2^64 (the ring), so the result is torch's int64 matmul bit for bit, for every
inner dimension (no exactness bound, unlike the float64 limbs). The inner loops vectorise: AVX-512DQ's
vpmullq, or AVX2's three vpmuludq per 4 products. Against the limb kernel it writes no limbs: the limb split
of a b holds 32-40 bytes per element in workspaces (1.1 GB for SmolLM2's 49152 x 576 embedding table, which a
32-token prefill multiplies by its one-hot rows), this kernel none.
"""

from __future__ import annotations

import importlib.util

import torch

numba = np = None   # imported on the first product (numba's import and cache load: not for every command)
ROWS = 64           # at most this many rows of a (more rows: the limb kernel's GEMMs reuse b better)
_ACC_WORDS = 1 << 14   # m x width accumulator words per column chunk (128 KiB: L2)
_compiled = None


def available() -> bool:
    return importlib.util.find_spec("numba") is not None


def _kernel():
    global numba, np, _compiled
    if _compiled is None:
        import numba as _nb
        import numpy as _np

        numba, np = _nb, _np
        _compiled = _nb.njit(parallel=True, cache=True, nogil=True)(_gemm_kernel)
    return _compiled


def _gemm_kernel(a, b, out, width):
    m, k = a.shape
    n = b.shape[1]
    for cj in numba.prange((n + width - 1) // width):
        j0 = cj * width
        j1 = min(n, j0 + width)
        w = j1 - j0
        acc = np.zeros((m, w), np.int64)
        for i in range(k):
            br = b[i, j0:j1]
            for r in range(m):
                x = a[r, i]
                ar = acc[r]
                for j in range(w):
                    ar[j] += x * br[j]
        for r in range(m):
            out[r, j0:j1] = acc[r]


def _width(m: int, n: int, threads: int) -> int:
    """Columns per chunk: the accumulators in _ACC_WORDS, at least one chunk per thread, whole vectors."""
    per = -(-n // max(1, threads))
    w = min(max(8, _ACC_WORDS // max(1, m)), per)
    return max(8, -(-w // 8) * 8)


def matmul_2d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (m, k) @ b (k, n) int64 CPU tensors over Z_2^64, m <= ROWS: (m, n) int64."""
    kernel = _kernel()
    a, b = a.contiguous(), b.contiguous()
    m, n = a.shape[0], b.shape[1]
    out = torch.empty((m, n), dtype=torch.int64)
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))   # torch's setting rules
    numba.set_num_threads(threads)
    kernel(a.numpy(), b.numpy(), out.numpy(), _width(m, n, threads))
    return out


def fewrow_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (m, k) or (B|1, m, k) @ b (k, n) or (B, k, n) over Z_2^64 (one kernel call per batch entry)."""
    if a.dim() == 2 and b.dim() == 2:
        return matmul_2d(a, b)
    if b.dim() == 2:   # (B, m, k) @ (k, n)
        return torch.stack([matmul_2d(a[i], b) for i in range(a.shape[0])])
    a3 = a if a.dim() == 3 else a.unsqueeze(0)
    return torch.stack([matmul_2d(a3[i if a3.shape[0] > 1 else 0], b[i]) for i in range(b.shape[0])])
