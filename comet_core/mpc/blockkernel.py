"""The products of one block of a few-row Beaver matmul (mpc/blocked.py), in one pass over the block.

For a block of h rows of a weight (k, n) with mask halves b0, b1 (the dealer's draws) and the weight's
shares y0, y1, and the few rows (R <= 3) of the dealer's a, the opened e and the parties' a_p + [p = 0] e:

    f   = (y0 - b0) + (y1 - b1)                       the opened value (or the kept f of a reused mask)
    c  += a @ b0 + a @ b1                             the dealer's product (computed as a @ (b0 + b1))
    z_p += e @ b_p + (a_p + [p = 0] e) @ f            party P_p's products, p = 0, 1

all over Z_2^64 (int64 wrap-around). Every product is computed from its own party's operands; the
kernel only reads each block element once for all of them. Two kernels, the same results bit for bit
(tests/test_blocked.py):
  * numba (the `numba` package, installed with the toolkit): column chunks split over torch's threads,
    AVX-512 / AVX2 int64 multiplies (torch's int64 GEMM of a few rows costs a pass over its matrix
    whatever the rows; `benchmarks/decode_matmul.py` times both kernels, results/decode_matmul/smollm2-135m.csv);
  * torch, when numba is missing (the same steps as three GEMM passes; a log line says how to install).
"""

from __future__ import annotations

import importlib.util
import logging

import torch

log = logging.getLogger(__name__)

numba = np = None   # imported on the first block (numba's import and cache load cost ~0.5 s: not for every command)
USE_NUMBA = importlib.util.find_spec("numba") is not None   # False: torch's passes (tests, benchmarks)
_CHUNK = 512   # columns per parallel chunk: f, b0 + b1 and the accumulators' chunk stay in L1
MAX_KERNEL_ROWS = 3   # more rows (a streamed reused mask's prefill product): torch's GEMMs per block
_compiled = None


def _numba_kernel():
    """The compiled kernel (numba compiles it on first use, then caches it on disk next to this module)."""
    global numba, np, _compiled
    if _compiled is None:
        import numba as _nb
        import numpy as _np

        numba, np = _nb, _np
        _compiled = _nb.njit(parallel=True, cache=True, nogil=True)(_block_kernel)
    return _compiled


def _block_kernel(y0, y1, b0, b1, f_in, av, e, ea0, ea1, c, z0, z1, f_out, have_f, keep_f, threads):
    h, n = b0.shape
    R = av.shape[0]
    # columns split evenly over the threads (multiples of 8 words: whole vectors), <= _CHUNK each
    per = -(-n // threads)
    width = min(_CHUNK, max(8, -(-per // 8) * 8))
    for cj in numba.prange((n + width - 1) // width):
        j0 = cj * width
        j1 = min(n, j0 + width)
        m = j1 - j0
        f = np.empty(m, np.int64)
        s = np.empty(m, np.int64)
        for i in range(h):
            b0r = b0[i, j0:j1]
            b1r = b1[i, j0:j1]
            if have_f:
                fr = f_in[i, j0:j1]
                for j in range(m):
                    f[j] = fr[j]
            else:
                y0r = y0[i, j0:j1]
                y1r = y1[i, j0:j1]
                for j in range(m):
                    f[j] = (y0r[j] - b0r[j]) + (y1r[j] - b1r[j])
                if keep_f:
                    fo = f_out[i, j0:j1]
                    for j in range(m):
                        fo[j] = f[j]
            for j in range(m):
                s[j] = b0r[j] + b1r[j]
            for r in range(R):   # one loop per output: single-store loops vectorise
                a_, e_, p0, p1 = av[r, i], e[r, i], ea0[r, i], ea1[r, i]
                cr = c[r, j0:j1]
                z0r = z0[r, j0:j1]
                z1r = z1[r, j0:j1]
                for j in range(m):
                    cr[j] += a_ * s[j]
                for j in range(m):
                    z0r[j] += e_ * b0r[j] + p0 * f[j]
                for j in range(m):
                    z1r[j] += e_ * b1r[j] + p1 * f[j]


def available() -> bool:
    return USE_NUMBA


_warned = False


def block_products(b: torch.Tensor, av: torch.Tensor, e: torch.Tensor, ea: torch.Tensor, c: torch.Tensor,
                   z: torch.Tensor, y: torch.Tensor | None = None, f: torch.Tensor | None = None,
                   f_out: torch.Tensor | None = None, product=None) -> None:
    """One block's products, accumulated in place into c (R, n) and z (2, R, n).
    b: (2, h, n) mask halves; av, e: (R, h); ea: (2, R, h); either y (2, h, n), the weight's shares (f is
    opened here and written to f_out (h, n) if given), or f (h, n), a reused mask's kept opening.
    product: the torch fallback's ring product (matmul.ring_matmul; torch.matmul, exact for int64, if None)."""
    global _warned, _broken
    operands = (b[0], b[1], av, e, ea, c, z, *(y if y is not None else ()), *(t for t in (f, f_out) if t is not None))
    if not USE_NUMBA or _broken or av.shape[0] > MAX_KERNEL_ROWS or not all(t.is_contiguous() for t in operands):
        if not USE_NUMBA and not _warned:
            _warned = True
            log.info("numba is not installed: the decode matmul takes torch's slower GEMM passes "
                     "(pip install numba, or reinstall the toolkit: make install)")
        _block_torch(b, av, e, ea, c, z, y, f, f_out, product)
        return
    try:
        kernel = _numba_kernel()
        _block_numba_call(kernel, b, av, e, ea, c, z, y, f, f_out)
    except (ImportError, _numba_error()) as err:   # numba unusable, or compiling failed (before any write)
        _broken = True
        log.warning("the numba block kernel did not compile here (%s); torch's GEMM passes instead",
                    str(err).splitlines()[0])
        _block_torch(b, av, e, ea, c, z, y, f, f_out, product)


_broken = False


def _numba_error() -> type:
    """numba's compile-time error class (ImportError while numba is not imported)."""
    return numba.core.errors.NumbaError if numba is not None else ImportError


def _block_numba_call(kernel, b, av, e, ea, c, z, y, f, f_out) -> None:
    n = b.shape[-1]
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))   # torch's setting rules
    numba.set_num_threads(threads)
    none = np.empty((0, n), np.int64)
    np_ = lambda t: t.numpy() if t is not None else none   # noqa: E731 - zero-copy views
    kernel(np_(y[0] if y is not None else None), np_(y[1] if y is not None else None),
           b[0].numpy(), b[1].numpy(), np_(f), av.numpy(), e.numpy(), ea[0].numpy(), ea[1].numpy(),
           c.numpy(), z[0].numpy(), z[1].numpy(), np_(f_out), f is not None, f_out is not None, threads)


def _block_torch(b, av, e, ea, c, z, y, f, f_out, product) -> None:
    """The same products as torch GEMM passes: rows [a; e] against each b_p (the dealer's a @ b_p and P_p's
    e @ b_p), both parties' rows against f."""
    R, h = av.shape
    product = product or torch.matmul
    if f is None:
        f = torch.sub(y[0], b[0], out=f_out).add_(y[1]).sub_(b[1])
    prod = product(torch.cat([av, e]), b)                # (2, 2R, n)
    c.add_(prod[0, :R]).add_(prod[1, :R])
    z.add_(prod[:, R:]).add_(product(ea.reshape(2 * R, h), f).view(2, R, -1))
