"""Exact matrix products over Z_2^64 for few rows through int8 GEMMs (base-256 digits).

Decode multiplies one to a few rows by a weight-sized matrix: memory-bound, and torch's int64 matmul is
a scalar loop. Here both operands become balanced base-256 digits held as int8, and one int8 GEMM with
int32 accumulation (oneDNN / VNNI on CPU: `torch._int_mm`) reads the right operand once, 1 byte per digit.

1. Digits (`to_digits`, 2 elementwise passes, no arithmetic per digit): for C = 0x8080...80,
       t = (x + C) xor C   and   x = sum_j d_j 256^j (mod 2^64),   d_j = byte j of t read as int8,
   since x + C = sum_j u_j 256^j with the bytes u_j of x + C, and (u_j xor 0x80) read as a signed byte
   is u_j - 128. So d_j in [-128, 127], and t viewed as int8 is the digit array: (k, n) int64 ->
   (k, 8n) int8 with digit j of column c at 8c + j, no copy.
2. The left operand a (m, k) is small: its digits are transposed to (8m, k), digit i of row r at row
   i*m + r.
3. One GEMM X = A_digits (8m, k) @ B_digits (k, 8n) -> (8m, 8n) int32 holds every digit product
   X[i*m + r, 8c + j] = sum_l a_i[r, l] b_j[l, c]. Exact: |a_i b_j| <= 2^14, so k <= MAX_INNER =
   floor((2^31 - 1) / 2^14) = 131071 keeps every partial sum inside int32 (longer inner dimensions are
   cut into chunks whose results are added in int64). The GEMM's own arithmetic is integer; a machine
   whose int8 GEMM saturated (some AVX2 paths pair u8 x s8 products in int16) would break exactness,
   so `available()` runs a positive control with the extreme digits at MAX_INNER once and the engine
   falls back to the other kernels if it fails.
4. Combine: a @ b = sum_{i,j} X_ij 2^(8(i+j)) (mod 2^64); the 28 pairs with i + j >= 8 vanish mod 2^64.
   One int64 conversion of X, a multiply by the table 2^(8(i+j)), a sum over (i, j): 3 passes over
   64 m n words (small against the k n bytes of the right operand when k >> 64).

Cost per product: 2 passes over b to make its digits (skipped with cached `Digits` of a reused b),
one read of b's k*n*8 bytes by the GEMM, and O(m n) combine; against torch's int64 matmul or the
float64 limb kernel (split: 5 passes writing 32 bytes per element; right for many rows).

Measured (2-core AMD EPYC with AVX-512 VNNI, torch 2.13, a shared machine at load 7-9, min of 15):
the digits carry 8 bytes per element like int64, so few-row products stay memory-bound and gain
nothing over torch's int64 matmul, which AVX-512 (vpmullq) vectorises: a decode Beaver matmul
576 x 1536 took 26.7 ms with digits against 14.0 ms on the int64 paths (1 thread), SmolLM2's LM head
with cached digits 487 against 191 ms (the int8 GEMM runs at ~12 GMAC/s on an 8 x 393,216 output).
Hence `ringmm.USE_DIGITS` is off; the kernel stays exact and tested for machines whose int64 matmul
is a scalar loop (AVX2 only), where it is the only vectorised few-row path.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

_C = -0x7F7F7F7F7F7F7F80            # 0x8080808080808080 as a signed int64
MAX_INNER = (2 ** 31 - 1) // 2 ** 14   # 131071: largest exact inner dimension of one int32 GEMM


def _table(device) -> torch.Tensor:
    """(8, 1, 1, 8) int64: 2^(8(i+j)) mod 2^64 (zero for i + j >= 8)."""
    i = torch.arange(8).view(8, 1)
    j = torch.arange(8).view(1, 8)
    s = 8 * (i + j)
    w = torch.where(s < 64, torch.ones_like(s) << s.clamp(max=63), torch.zeros_like(s))
    return w.view(8, 1, 1, 8).to(device)


_TABLES: dict[str, torch.Tensor] = {}


def to_digits(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """t = (x + C) xor C as int64 (same shape): its bytes read as int8 are x's balanced base-256 digits."""
    t = torch.add(x, _C, out=out) if out is not None else torch.add(x, _C)
    return t.bitwise_xor_(_C)


def from_digits(t: torch.Tensor) -> torch.Tensor:
    """The inverse of to_digits: x = (t xor C) - C."""
    return torch.bitwise_xor(t, _C).sub_(_C)


class Digits:
    """A right operand b: (*B, k, n) int64 as digit bytes (*B, k, 8n) int8, reusable across products.
    `source` fingerprints the tensor it came from (operand_id.operand_fingerprint): a changed b is refused."""

    __slots__ = ("bytes", "k", "n", "batch", "source")

    def __init__(self, t: torch.Tensor, source) -> None:
        *batch, k, n = t.shape
        self.bytes = t.view(torch.int8)                                 # (*B, k, 8n): t's memory
        self.k, self.n, self.batch, self.source = k, n, tuple(batch), source

    def matches(self, x: torch.Tensor) -> bool:
        from comet_core.mpc.operand_id import operand_fingerprint

        return self.source is not None and self.source == operand_fingerprint(x)

    def nbytes(self) -> int:
        return self.bytes.numel()


def split_digits(b: torch.Tensor, source=None) -> Digits:
    """Digits of a right operand (contiguous copy: the int64 digit words own new memory)."""
    return Digits(to_digits(b.contiguous()), source)


def _left(a: torch.Tensor) -> torch.Tensor:
    """(m, k) int64 -> (8m, k) int8 digits, digit i of row r at row i*m + r."""
    m, k = a.shape
    return to_digits(a.contiguous()).view(torch.int8).view(m, k, 8).permute(2, 0, 1).reshape(8 * m, k)


def _combine(x: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """(8m, 8n) int32 digit products -> (m, n) int64 = sum_ij X_ij 2^(8(i+j)) mod 2^64."""
    key = str(x.device)
    if key not in _TABLES:
        _TABLES[key] = _table(x.device)
    y = x.view(8, m, n, 8).to(torch.int64)
    y.mul_(_TABLES[key])
    return y.sum(dim=(0, 3))


def _gemm(ad: torch.Tensor, bd: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """(8m, k) int8 @ (k, 8n) int8 -> (m, n) int64 over Z_2^64 (inner dimension chunked at MAX_INNER)."""
    k = ad.shape[1]
    out = None
    for s in range(0, k, MAX_INNER):
        e = min(k, s + MAX_INNER)
        part = _combine(torch._int_mm(ad[:, s:e].contiguous(), bd[s:e]), m, n)
        out = part if out is None else out.add_(part)
    return out


def digit_matmul(a: torch.Tensor, b: torch.Tensor | None = None, b_digits: Digits | None = None) -> torch.Tensor:
    """a @ b over Z_2^64 for a: (m, k) int64 and b: (*B, k, n) int64 (or its Digits): (*B, m, n) int64.

    One int8 GEMM per batch entry of b (a's digits made once); the caller folds a's batch into m.
    """
    if b_digits is None:
        b_digits = split_digits(b)
    m, k = a.shape
    if k != b_digits.k:
        raise ValueError(f"digit_matmul: inner dimensions differ ({k} vs {b_digits.k})")
    ad = _left(a)
    n = b_digits.n
    if not b_digits.batch:
        return _gemm(ad, b_digits.bytes, m, n)
    flat = b_digits.bytes.reshape(-1, k, 8 * n)
    out = torch.stack([_gemm(ad, flat[i], m, n) for i in range(flat.shape[0])])
    return out.reshape(*b_digits.batch, m, n)


_AVAILABLE: bool | None = None


def available() -> bool:
    """Whether torch's int8 GEMM exists here and is exact at the extremes (checked once, a positive control:
    the digits -128 and 127 summed over MAX_INNER terms against int64 arithmetic)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        try:
            k = MAX_INNER
            a = torch.tensor([[-128] * 2 + [127] * 2 + [-128] * 4], dtype=torch.int8).t().contiguous()  # (8, 1)
            a = a.expand(8, k).contiguous()
            b = torch.tensor([-128, 127] * 8, dtype=torch.int8).view(1, 16).expand(k, 16).contiguous()
            got = torch._int_mm(a, b).to(torch.int64)
            want = a[:, :1].to(torch.int64) * b[:1].to(torch.int64) * k
            g = torch.Generator().manual_seed(1)
            ra = torch.randint(-128, 128, (16, 4096), dtype=torch.int8, generator=g)
            rb = torch.randint(-128, 128, (4096, 32), dtype=torch.int8, generator=g)
            ok = torch.equal(got, want) and torch.equal(torch._int_mm(ra, rb).to(torch.int64),
                                                        ra.to(torch.int64) @ rb.to(torch.int64))
        except (RuntimeError, AttributeError) as ex:   # no int8 GEMM in this torch build
            log.info("int8 digit kernel unavailable (%s): few-row products use the int64 paths", ex)
            ok = False
        if not ok:
            log.warning("torch._int_mm is not exact at the extremes on this machine: digit kernel disabled")
        _AVAILABLE = bool(ok)
    return _AVAILABLE
