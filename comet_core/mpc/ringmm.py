"""Exact matrix products over Z_2^64 (int64 with wrap-around) through float64 BLAS: the "limbs" and
"one_row" strategies of mpc/matmul.py (which chooses the kernel of every product; call it, not this).

int64 matmul has no BLAS path (torch's is a scalar loop, ~100x slower than float64 GEMM), so the
operands are split into small signed limbs held exactly in float64 and multiplied with float64
GEMMs whose every partial sum stays an integer of magnitude <= 2^53 (float64 is exact there).

The 5-GEMM kernel (`limb_matmul`)
---------------------------------
1. Split both operands at bit offsets 0 / 21 / 43 into limbs held exactly as float64:
       x = x0 + x1 * 2^21 + x2 * 2^43   (mod 2^64),   xs = x0 + x1 (the Karatsuba sum limb)
   Left operand a, balanced limbs (`_split`, 9 elementwise passes):
       t = a + (2^20 + 2^42);  a0 = (t & (2^21-1)) - 2^20;  t >>= 21   (t = (a - a0)/2^21 + 2^21)
       a1 = (t & (2^22-1)) - 2^21;  t >>= 22 (= a2)
       a0 in [-2^20, 2^20),  a1 in [-2^21, 2^21),  a2 in [-2^20, 2^20),  as in [-3*2^20, 3*2^20 - 2]
   (wrap-around in `a + ...` is harmless: only a2 mod 2^21 and a1 mod 2^22 enter the result, and the
   arithmetic shifts bound every limb whatever t is).
   Right operand b (the weight-sized one in the engine), unsigned low limbs (`_split_unsigned`,
   5 passes, no temporaries; two's complement makes the identity exact, not only mod 2^64):
       b0 = b & (2^21-1) in [0, 2^21),  b1 = (b >> 21) & (2^22-1) in [0, 2^22),
       b2 = b >> 43 in [-2^20, 2^20),   bs in [0, 3*2^21 - 2]
   The limbs are written straight into the GEMM operand buffers (no concatenation copies).
2. Of the products a_i b_j only those with shift < 64 matter:
       shift 0: a0 b0;  21: a0 b1 + a1 b0;  42: a1 b1;  43: a0 b2 + a2 b0.
   Karatsuba gives the middle term from one product, and the two shift-43 products are one GEMM over
   a doubled inner dimension ([a0 | a2] @ [b2 ; b0]):
       P0 = a0 @ b0,  P11 = a1 @ b1,  Pm = as @ bs,  P2 = [a0 | a2] @ [b2 ; b0]
       a @ b = P0 + 2^21 (Pm - P0 - P11) + 2^42 P11 + 2^43 P2
             = (1 - 2^21) P0 + 2^21 Pm + (2^42 - 2^21) P11 + 2^43 P2      (mod 2^64)
   Cost: 5 m*k*n multiply-adds in 3 GEMM calls (P0; P2; P11 and Pm as one batch of 2), against 6
   for the 22-bit-limb schoolbook kernel (`ring_matmul_6gemm`, kept for the benchmark and tests).
3. Exactness bound, which sets the inner-dimension chunk. With K terms per dot product:
       |as * bs| <= 3*2^20 * (3*2^21 - 2) < 9 * 2^41  ->  K * 9 * 2^41 <= 2^53  <=>  K <= floor(2^12 / 9) = 455
       |a1 * b1| < 2^43                              ->  K <= 2^10
       |a0 b0|, |a2 b0| < 2^41, |a0 b2| <= 2^40; P2 has 2K terms  ->  K <= 2^11
   Each term is an integer of magnitude < 2^53 (exact in float64); every partial sum, in any order
   BLAS or cuBLAS chooses and with or without fused multiply-add, is an integer bounded by the sum of
   the |terms| < K * 9 * 2^41 <= 2^53, hence exactly representable, so no step ever rounds.
   Hence CHUNK = 455: the inner dimension is cut into c = ceil(k / 455) chunks of equal length
   (zero-padded when no c up to 2*ceil(k/455) divides k); the chunks are a batch dimension of the
   same GEMM calls and their int64 results are summed (wrap-around is the ring). At K = 456 the bound
   fails: 455 odd products of -(3*2^20 - 1) * (3*2^21 - 3) and one even one of -3*2^20 * (3*2^21 - 3)
   sum to an odd integer of magnitude above 2^53 that float64 cannot hold (tests/test_ring.py checks
   that this positive control really breaks). Balanced right limbs would allow K <= 910 but cost
   8 more passes over the (large) right operand than the extra chunk outputs cost.
4. Recombine: the four float64 products are converted to int64 once (exact: |P| <= 2^53), summed
   over the chunks, weighted and summed over the 4 products (int64 wrap-around is the ring).

Reused operands: `split_right(b)` returns a `Limbs` object with b's limbs in GEMM layout; pass it as
`matmul.ring_matmul(a, b, b_limbs=...)` to skip b's split (the dominant elementwise cost when b is a
weight-sized mask used in several products). `split_left(a)` does the same for a left operand.

Few rows (decode: one token): on CPU, with at most 3 rows in a, splitting a weight-sized b costs more
than the whole product, so b is never split (mpc/matmul.py's rules 5-6): one row (`one_row_cpu`) is an elementwise int64 product
and a column sum (vectorised int64 multiply), and 2-3 rows use torch's int64 matmul (single-threaded,
but it reads b once for all rows; per-row passes lose there). Measured on the 2-core AMD EPYC
(results/ring_matmul/kernels.csv, 2 threads, load 0.7-1.0): one row 1.6-1.9x faster than torch's int64 matmul
on 576x1536, 1536x576, 768x3072 and 3072x768 (1 thread: 1.0-1.3x). CUDA has no int64 matmul, so it
always takes the limb path.

Measured speed against the previous kernel (same file, interleaved medians): 1.12x on
128x768 @ 768x3072, 0.96x on 128x3072 @ 3072x768, 1.12x on (12,128,64) @ (12,64,128); with b's limbs
cached 1.55x / 1.24x / 1.22x. The 5 GEMMs are 5/6 of the old flops, but writing b's 4 float64 limbs
is memory-bound (~1 GEMM's time for a 768x3072 operand), so the uncached gain is small; caching the
limbs of a reused operand, and the absent page faults (workspaces), are where the time goes.

Everything is device-agnostic (buffers are created on the operands' device); cost mode passes
data-free `Shape`s through `comet_core.mpc.matmul.ring_matmul`, not here.
"""

from __future__ import annotations

import math
import threading

import torch

from comet_core.mpc.operand_id import operand_fingerprint

LIMB_OFFSETS = (0, 21, 43)
CHUNK = 455                          # max inner dimension per float64 GEMM chunk (proof above)
_ADD = (1 << 20) + (1 << 42)         # balances limb 0 and pre-adds limb 1's 2^21 offset
_M21 = (1 << 21) - 1
_M22 = (1 << 22) - 1
# weights of [P0, P2, P11, Pm] in a @ b (mod 2^64)
_WEIGHTS = (1 - (1 << 21), 1 << 43, (1 << 42) - (1 << 21), 1 << 21)
USE_WORKSPACE = True                 # CPU: reuse per-thread workspaces (see _Scratch); False for A/B timing
# ---- chunking and limb splitting -------------------------------------------------------------------

def chunking(k: int, chunk: int = CHUNK) -> tuple[int, int]:
    """(c, kc): c chunks of kc <= chunk inner elements, c * kc >= k; kc divides k when some c in
    [ceil(k/chunk), 2*ceil(k/chunk)] allows it (then no zero padding is needed)."""
    if k <= chunk:
        return 1, max(k, 1)
    c0 = -(-k // chunk)
    for c in range(c0, 2 * c0 + 1):
        if k % c == 0:
            return c, k // c
    return c0, -(-k // c0)


def _split(x: torch.Tensor, l0: torch.Tensor, l1: torch.Tensor, l2: torch.Tensor, ls: torch.Tensor,
           scratch: "_Scratch | None" = None) -> None:
    """Write x's balanced limbs (offsets 0/21/43) and l0 + l1 as float64 into the given views (left operand).

    # x: int64 of any strides; l0, l1, l2, ls: float64 views of x's shape. 9 elementwise passes; the two
    # int64 temporaries come from `scratch` when given (no fresh pages, see _Scratch).
    """
    if scratch is None:
        t = torch.add(x, _ADD)
        u = torch.empty_like(t)
    else:
        t = torch.add(x, _ADD, out=scratch.get("t", x.shape, torch.int64, x.device))
        u = scratch.get("u", x.shape, torch.int64, x.device)
    # t wraps mod 2^64: only residues matter (see the module doc)
    torch.bitwise_and(t, _M21, out=u)
    torch.sub(u, 1 << 20, out=l0)                # x0 in [-2^20, 2^20)
    t.bitwise_right_shift_(21)                   # (x - x0) / 2^21 + 2^21
    torch.bitwise_and(t, _M22, out=u)
    torch.sub(u, 1 << 21, out=l1)                # x1 in [-2^21, 2^21)
    t.bitwise_right_shift_(22)                   # x2 in [-2^20, 2^20)
    l2.copy_(t)
    torch.add(l0, l1, out=ls)                    # xs in [-3*2^20, 3*2^20 - 2]


def _split_unsigned(x: torch.Tensor, l0: torch.Tensor, l1: torch.Tensor, l2: torch.Tensor,
                    ls: torch.Tensor) -> None:
    """Write x's limbs at offsets 0/21/43 with unsigned low limbs, and l0 + l1, as float64 (right operand).

    # x: int64 of any strides; l0 in [0, 2^21), l1 in [0, 2^22), l2 = x >> 43 in [-2^20, 2^20),
    # ls in [0, 3*2^21 - 2]; x = l0 + l1 * 2^21 + l2 * 2^43 exactly (two's complement).
    # 5 passes (11 reads + writes of 8 bytes per element, against 19 for the balanced split), no temporaries.
    """
    if x.device.type != "cpu":                   # CUDA has no bitwise kernels writing float64 outputs
        l0.copy_(x & _M21)
        l1.copy_((x >> 21) & _M22)
        l2.copy_(x >> 43)
        torch.add(l0, l1, out=ls)
        return
    torch.bitwise_and(x, _M21, out=l0)
    torch.bitwise_and(x, _M22 << 21, out=l1)     # x1 * 2^21 < 2^43: exact in float64
    l1.mul_(2.0 ** -21)
    torch.bitwise_right_shift(x, 43, out=l2)
    torch.add(l0, l1, out=ls)


class _Scratch(threading.local):
    """Per-thread workspaces of the CPU kernel, reused across calls.

    Every fresh large tensor costs one page fault per 4 KiB page on first touch (glibc hands freed
    large blocks back to the kernel). In results/ring_matmul/allocators.csv the previous kernel takes
    ~22k faults per 128x768 @ 768x3072 product, 126 ms against 90 ms without them (1 thread). One
    flat buffer per role, grown to the largest size seen, removes those faults after the first call.
    Held memory: about 40 bytes per element of the largest right operand seen (4 float64 limbs; the
    one-row path's int64 product) plus the left operand's limbs and the chunked products;
    `release_workspace()` frees it. Per thread, so concurrent callers never share a buffer.
    The process-wide alternative for all other large temporaries: GLIBC_TUNABLES=glibc.malloc.hugetlb=1
    (2 MiB pages via madvise: 512x fewer faults).
    """

    def __init__(self) -> None:
        self.bufs: dict[tuple, torch.Tensor] = {}

    def get(self, role: str, shape, dtype: torch.dtype, device) -> torch.Tensor:
        n = math.prod(shape)
        key = (role, dtype, str(device))
        buf = self.bufs.get(key)
        if buf is None or buf.numel() < n:
            self.bufs.pop(key, None)                 # free the old one before growing
            buf = torch.empty(n, dtype=dtype, device=device)
            self.bufs[key] = buf
        return buf[:n].view(tuple(shape))


_SCRATCH = _Scratch()


def release_workspace() -> None:
    """Free this thread's kernel workspaces (they are re-created on the next product)."""
    _SCRATCH.bufs.clear()


def workspace_bytes() -> int:
    """Bytes held by this thread's kernel workspaces."""
    return sum(b.numel() * b.element_size() for b in _SCRATCH.bufs.values())


def _pad_inner(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """x with zeros appended along `dim` up to `size` (x itself when already that long)."""
    if x.shape[dim] == size:
        return x
    shape = list(x.shape)
    shape[dim] = size
    out = torch.zeros(shape, dtype=x.dtype, device=x.device)
    out.narrow(dim, 0, x.shape[dim]).copy_(x)
    return out


class Limbs:
    """One int64 operand split for the 5-GEMM kernel, in GEMM layout (reusable across products).

    side "left"  (a: (*B, m, k)):  wide (*B, c, m, 2kc) = [a0 | a2];  pair (2, *B, c, m, kc) = [a1, as]
    side "right" (b: (*B, k, n)):  wide (*B, c, 2kc, n) = [b2 ; b0];  pair (2, *B, c, kc, n) = [b1, bs]
    (left limbs are balanced, right limbs have unsigned b0, b1: see the module doc, step 1)
    `source` records the tensor it was made from (shape, strides, storage, version counter) so that
    `matmul.ring_matmul(a, b, b_limbs=...)` can refuse limbs of another or a since-modified tensor.
    Memory: 4 float64 words per element of the operand (32 bytes per element, with padding).
    """

    __slots__ = ("side", "batch", "rows", "k", "c", "kc", "wide", "pair", "source")

    def __init__(self, side, batch, rows, k, c, kc, wide, pair, source):
        self.side, self.batch, self.rows, self.k, self.c, self.kc = side, batch, rows, k, c, kc
        self.wide, self.pair, self.source = wide, pair, source

    def matches(self, x: torch.Tensor) -> bool:
        return self.source == operand_fingerprint(x)

    def __repr__(self) -> str:
        return (f"Limbs({self.side}, batch={tuple(self.batch)}, rows/cols={self.rows}, k={self.k}, "
                f"chunks={self.c}x{self.kc}, device={self.wide.device})")


def _empty(scratch, role, shape, device) -> torch.Tensor:
    if scratch is None:
        return torch.empty(shape, dtype=torch.float64, device=device)
    return scratch.get(role, shape, torch.float64, device)


def split_left(a: torch.Tensor, chunk: int = CHUNK, _scratch: "_Scratch | None" = None) -> Limbs:
    """Limbs of a left operand a: (*B, m, k) int64 (m >= 1 rows; 1-D operands: unsqueeze first).
    The returned Limbs own their memory (workspaces are used only inside limb_matmul)."""
    if a.dim() < 2:
        raise ValueError(f"split_left needs a (..., m, k) operand, got shape {tuple(a.shape)}")
    *batch, m, k = a.shape
    c, kc = chunking(k, chunk)
    ap = _pad_inner(a, -1, c * kc)
    src = ap.unflatten(-1, (c, kc)).movedim(-2, -3)                 # (*B, c, m, kc) view
    wide = _empty(_scratch, "aw", (*batch, c, m, 2 * kc), a.device)
    pair = _empty(_scratch, "ap", (2, *batch, c, m, kc), a.device)
    _split(src, wide[..., :kc], pair[0], wide[..., kc:], pair[1], _scratch)
    return Limbs("left", tuple(batch), m, k, c, kc, wide, pair, operand_fingerprint(a))


def split_right(b: torch.Tensor, chunk: int = CHUNK, _scratch: "_Scratch | None" = None) -> Limbs:
    """Limbs of a right operand b: (*B, k, n) int64 (a 1-D b: unsqueeze(-1) first), e.g. a weight
    mask used in several products. The returned Limbs own their memory (4 float64 words per element)."""
    if b.dim() < 2:
        raise ValueError(f"split_right needs a (..., k, n) operand, got shape {tuple(b.shape)}")
    *batch, k, n = b.shape
    c, kc = chunking(k, chunk)
    bp = _pad_inner(b, -2, c * kc)
    src = bp.unflatten(-2, (c, kc))                                  # (*B, c, kc, n) view
    wide = _empty(_scratch, "bw", (*batch, c, 2 * kc, n), b.device)
    pair = _empty(_scratch, "bp", (2, *batch, c, kc, n), b.device)
    _split_unsigned(src, wide[..., kc:, :], pair[0], wide[..., :kc, :], pair[1])
    return Limbs("right", tuple(batch), n, k, c, kc, wide, pair, operand_fingerprint(b))


# ---- the product -----------------------------------------------------------------------------------

def _lift(t: torch.Tensor, lead: int, extra: int) -> torch.Tensor:
    """View t with `extra` size-1 dims inserted after its first `lead` dims (batch alignment)."""
    if extra == 0:
        return t
    return t.reshape((*t.shape[:lead], *([1] * extra), *t.shape[lead:]))


_WEIGHT_TENSORS: dict[str, torch.Tensor] = {}


def _weights(device) -> torch.Tensor:
    key = str(device)
    if key not in _WEIGHT_TENSORS:
        _WEIGHT_TENSORS[key] = torch.tensor(_WEIGHTS, dtype=torch.int64, device=device)
    return _WEIGHT_TENSORS[key]


def matmul_limbs(la: Limbs, lb: Limbs, _scratch: "_Scratch | None" = None) -> torch.Tensor:
    """a @ b over Z_2^64 from both operands' limbs: (*broadcast(Ba, Bb), m, n) int64.

    3 GEMM calls (5 m*k*n float64 multiply-adds), 1 conversion, 1 weighted sum (module doc, steps 2-4).
    """
    if la.side != "left" or lb.side != "right":
        raise ValueError("matmul_limbs(left limbs, right limbs)")
    if la.k != lb.k or la.kc != lb.kc or la.c != lb.c:
        raise ValueError(f"inner dimensions differ: {la.k} (chunks {la.c}x{la.kc}) vs {lb.k} ({lb.c}x{lb.kc})")
    nb = max(len(la.batch), len(lb.batch))
    ea, eb = nb - len(la.batch), nb - len(lb.batch)
    aw, ap = _lift(la.wide, 0, ea), _lift(la.pair, 1, ea)
    bw, bp = _lift(lb.wide, 0, eb), _lift(lb.pair, 1, eb)
    batch = torch.broadcast_shapes(la.batch, lb.batch)
    kc, m, n = la.kc, la.rows, lb.rows
    g = _empty(_scratch, "g", (4, *batch, la.c, m, n), la.wide.device)
    # g: [P0, P2, P11, Pm], each (*B, c, m, n), exact integers of magnitude <= 2^53
    torch.matmul(aw[..., :kc], bw[..., kc:, :], out=g[0])            # a0 @ b0
    torch.matmul(aw, bw, out=g[1])                                   # [a0 | a2] @ [b2 ; b0]
    torch.matmul(ap, bp, out=g[2:])                                  # [a1 @ b1, as @ bs]
    gi = torch.empty(g.shape, dtype=torch.int64, device=g.device) if _scratch is None else \
        _scratch.get("gi", g.shape, torch.int64, g.device)
    gi.copy_(g)                                                      # exact: |P| <= 2^53
    gs = gi.sum(dim=-3) if la.c > 1 else gi.squeeze(-3)              # over the chunks: (4, *B, m, n)
    gs.mul_(_weights(gi.device).view(4, *([1] * (gs.dim() - 1))))    # wraps mod 2^64
    return gs.sum(dim=0)


def one_row_cpu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in int64 for one row of a (a: (*Ba, 1, k), b: (*Bb, k, n)) without splitting b.

    Two vectorised passes (AVX2/AVX-512 int64 multiply into a workspace of b's size, then a column
    sum), against torch's scalar int64 GEMM loop; only two parallel regions, so a loaded machine
    (where every OpenMP barrier can cost a time slice) hurts it little. Wrap-around is the ring.
    """
    scratch = _SCRATCH if USE_WORKSPACE else None
    col = a.transpose(-1, -2)                                        # (*Ba, k, 1)
    shape = torch.broadcast_shapes(b.shape, col.shape)
    prod = torch.empty(shape, dtype=torch.int64, device=a.device) if scratch is None else \
        scratch.get("t", shape, torch.int64, a.device)
    torch.mul(b, col, out=prod)
    return prod.sum(dim=-2, keepdim=True)


def limb_matmul(a: torch.Tensor, b: torch.Tensor, b_limbs: Limbs | None = None, chunk: int = CHUNK) -> torch.Tensor:
    """a (*Ba, m, k) @ b (*Bb, k, n) over Z_2^64 by the 5-GEMM limb kernel (steps 1-4 of the module doc);
    b_limbs: b's split made earlier (used when its chunking matches). CPU: per-thread workspaces."""
    # CUDA has torch's caching allocator; on CPU fresh pages cost a fault each
    scratch = _SCRATCH if a.device.type == "cpu" and USE_WORKSPACE else None
    lb = b_limbs if b_limbs is not None and b_limbs.c == chunking(a.shape[-1], chunk)[0] else \
        split_right(b, chunk, scratch)
    return matmul_limbs(split_left(a, chunk, scratch), lb, scratch)


# ---- the previous kernel, kept as the benchmark's and tests' baseline ------------------------------

_L22_BITS = 22
_L22_HALF = 1 << 21
_L22_MASK = (1 << 22) - 1
_L22_MAX_INNER = 1 << 11


def _limbs22(x: torch.Tensor) -> list[torch.Tensor]:
    """Split int64 into 3 balanced limbs (22, 22, 20 bits) as float64: x = l0 + l1*2^22 + l2*2^44."""
    out = []
    t = x + _L22_HALF
    for i in range(2):
        out.append((t & _L22_MASK).sub_(_L22_HALF).to(torch.float64))
        t = t.__irshift__(_L22_BITS)
        if i == 0:
            t.add_(_L22_HALF)
    out.append(t.to(torch.float64))
    return out


def ring_matmul_6gemm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The previous exact kernel (before issue 15), unchanged: 22-bit limbs, the 6 limb products with
    shift < 64 in 3 float64 GEMM calls, inner chunks of 2^11; torch's int64 matmul for <= 3 rows on CPU.
    Kept as the baseline of benchmarks/ring_matmul.py and of the tests."""
    if a.device.type == "cpu" and (a.dim() == 1 or a.shape[-2] <= 3):
        return torch.matmul(a, b)
    k = a.shape[-1]
    if k > _L22_MAX_INNER:
        out = None
        for s in range(0, k, _L22_MAX_INNER):
            part = ring_matmul_6gemm(a[..., s : s + _L22_MAX_INNER], b[..., s : s + _L22_MAX_INNER, :])
            out = part if out is None else out + part
        return out
    vec_a, vec_b = a.dim() == 1, b.dim() == 1
    if vec_a:
        a = a.unsqueeze(0)
    if vec_b:
        b = b.unsqueeze(-1)
    a0, a1, a2 = _limbs22(a)
    b0, b1, b2 = _limbs22(b)
    m = a.shape[-2]
    p0 = torch.matmul(torch.cat([a0, a1, a2], dim=-2), b0).to(torch.int64)
    p1 = torch.matmul(torch.cat([a0, a1], dim=-2), b1).to(torch.int64)
    p2 = torch.matmul(a0, b2).to(torch.int64)
    s0 = p0[..., :m, :]
    s22 = p0[..., m : 2 * m, :] + p1[..., :m, :]
    s44 = p0[..., 2 * m :, :] + p1[..., m:, :] + p2
    out = s0 + s22 * (1 << 22) + s44 * (1 << 44)
    if vec_a:
        out = out.squeeze(-2)
    if vec_b:
        out = out.squeeze(-1)
    return out
