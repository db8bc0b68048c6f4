"""The one entry point for matrix products over Z_2^64: every caller's `ring_matmul`, and the choice of
kernel (strategy) for each product, made here and only here.

Every strategy is exact (ring arithmetic wraps mod 2^64), so the choice changes time and memory, never
a bit of a share, an opening or a ledger row (tests/test_ring.py, test_digitmm.py, test_blocked.py).

Product strategies (`product_strategy(a, b)`, a (*Ba, m, k) @ b (*Bb, k, n) int64; the first rule that
matches wins; m counts the rows of a after a 2-D b folds a's batch into them):

    rule                                                          strategy   implementation
    1. a data-free operand (cost mode)                            "shape"    a Shape of torch.matmul's shape
    2. k == 0                                                     "zeros"    zeros
    3. CPU and int64_gemm_faster() (KERNEL: "int64", or "auto"    "int64"    torch.matmul (int64 wraps)
       and torch's int64 GEMM beat the limb kernel when timed once
       on this host: true where the CPU vectorises int64 multiplies,
       AVX-512's vpmullq, or runs a fast scalar imul loop)
    4. CPU, USE_DIGITS, m <= DIGIT_ROWS (<= DIGIT_ROWS_LARGE      "digits"   digitmm.digit_matmul (int8
       against a b of >= DIGIT_LARGE_ELEMENTS) and b >= DIGIT_MIN_ELEMENTS  GEMM on base-256 digits)
       per batch entry (or its digits given), torch's int8 GEMM exact here
    5. CPU, INT64_MATMUL_ROWS < m <= fewrowmm.ROWS (4..64), a and "int64_numba" fewrowmm (one pass over
       b of at most 3 dims (<= FEWROW_BATCH entries), no b_limbs,            b, int64 multiply-adds, no
       and fewrow_faster() (USE_FEWROW "auto": the numba kernel              limbs: none of the limb
       beat the limb kernel when timed once; reached only where              split's 32-40 bytes per
       rule 3 failed, so never on AVX-512 hosts)                             element of b)
    6. CPU, m <= INT64_ROWS (1)                                   "one_row"  ringmm.one_row_cpu (product
                                                                             and column sum, vectorised)
    7. CPU, m <= INT64_MATMUL_ROWS (3) and no b_limbs given       "int64"    torch.matmul
    8. otherwise (CUDA always)                                    "limbs"    ringmm (5 float64 GEMMs on
                                                                             21-bit limbs, K chunks of 455)

Beaver-level strategy (`beaver_strategy(x, y)`, for arith.matmul of two secrets):

    "blocked" when blocked.ENABLED, a simulated CPU exact run, y a (k, n) matrix larger than one block
              (blocked.BLOCK_ELEMENTS) and x at most FEW_ROWS rows of k, and the few-row products are not
              digit products (rule 4: those keep the whole steps, which cache a reused mask's digits):
              blocked.few_rows_matmul, the same steps in cache-sized blocks of y's rows, all products of a
              block in one pass (blockkernel: numba, else torch's GEMM passes);
    "whole"   otherwise: arith.matmul's whole-matrix steps, each product through ring_matmul above.

CPU features enter in one place, `int64_gemm_faster()` (rule 3, decided once per process and logged with
torch's vector capability, `cpu_capability()`) and, only where it fails, `fewrow_faster()` (rule 5): on
AVX-512 hosts torch's int64 GEMM is 2-10x faster than the limb kernel at every engine shape; on AVX2-only
hosts it is a scalar loop, and products of up to 64 rows take the numba int64 kernel (AVX2: three vpmuludq
per 4 products, no limb split) where it beats the float64 limb kernel (full-width AVX2 FMAs, which keeps
the products of more rows). The int8 digits (rule 4) are no AVX2 path: oneDNN's AVX2 int8 GEMM pairs
u8 x s8 products in saturating int16 (measured: digitmm.available() refuses it with ONEDNN_MAX_CPU_ISA=AVX2). The timing decides rather than a feature flag, because
the flag does not predict it (an Intel host with ATEN_CPU_CAPABILITY=avx2 keeps a fast int64 GEMM). The
decode kernel (blockkernel, numba) is compiled for the host: int64 multiplies are one vpmullq with
AVX-512DQ and three vpmuludq with AVX2; it beats the whole-matrix steps on both (results/matmul/).

Pre-split operands: `split_right(b)` (limbs) and `split_digits(b)` (digits) of a right operand used in
several products (a weight mask), passed as `b_limbs=` / `b_digits=`; `takes_digits(a, b)` says whether
rule 4 applies, so a caller knows whether digits pay off. Cost: none of these move bytes or rounds; the
protocols' cost formulas are those of their callers (arith.matmul_cost).
"""

from __future__ import annotations

import logging
import os
import time

import torch

from comet_core.mpc import blocked, digitmm, fewrowmm, ringmm
from comet_core.mpc.operand_id import operand_fingerprint
from comet_core.mpc.shape import Shape, broadcast

log = logging.getLogger(__name__)

# CPU kernel of rule 3: "limbs", "int64" or "auto" (time both once per process, keep the faster)
KERNEL = os.environ.get("COMET_RING_KERNEL", "auto")
KERNELS = ("auto", "int64", "limbs")
_INT64_FASTER: bool | None = None    # the "auto" decision of this process
INT64_ROWS = 1                       # rule 6: up to this many rows of a, never split b (measured)
INT64_MATMUL_ROWS = 3                # rule 7: 2..3 rows, torch's int64 matmul beats the split and per-row passes
USE_DIGITS = False                   # rule 4 off: on the 2-core AVX-512 EPYC the digits lost to the int64
                                     # paths (digitmm's docstring); kept exact and tested for other hosts
DIGIT_ROWS = 16                      # rule 4: up to this many rows of a take the digit kernel (measured)
DIGIT_MIN_ELEMENTS = 1 << 14         # ... when b (per batch entry) has at least this many elements
DIGIT_ROWS_LARGE = 64                # and up to this many rows against a very large b (an embedding table:
DIGIT_LARGE_ELEMENTS = 1 << 22       # the limb split's 32 bytes per element of b would be GBs; digits take 8)
FEW_ROWS = 3                         # Beaver "blocked": up to this many rows of x (the dealer's few-row c too)

USE_FEWROW = os.environ.get("COMET_FEWROW_KERNEL", "auto")   # rule 5: "auto" (timed), "on" or "off"
FEWROW_BATCH = 16                    # rule 5: at most this many batch entries (one kernel call each)
_FEWROW_FASTER: bool | None = None   # the "auto" decision of this process

STRATEGIES = ("shape", "zeros", "int64", "digits", "int64_numba", "one_row", "limbs")
Limbs = ringmm.Limbs


# ---- the rule ---------------------------------------------------------------------------------------

def cpu_capability() -> str:
    """torch's CPU vector capability ("AVX512", "AVX2", "DEFAULT"; ATEN_CPU_CAPABILITY lowers it)."""
    try:
        return torch.backends.cpu.get_cpu_capability()
    except AttributeError:   # pragma: no cover - older torch
        return "unknown"


def int64_gemm_faster() -> bool:
    """Rule 3: whether this process's CPU products take torch's int64 matmul (KERNEL; "auto": timed once,
    median of 3 on a 64x768 @ 768x768 product, ~0.1 s). Both kernels are exact: the choice changes time,
    never a bit."""
    global _INT64_FASTER
    if KERNEL not in KERNELS:
        from comet_core.errors import CometError

        raise CometError(f"COMET_RING_KERNEL must be one of {', '.join(KERNELS)}, got {KERNEL!r}")
    if KERNEL != "auto":
        return KERNEL == "int64"
    if _INT64_FASTER is None:
        t_int64, t_limbs = _against_limbs(torch.matmul, 64)
        _INT64_FASTER = t_int64 < t_limbs
        log.info("ring product kernel: %s (int64 matmul %.4f s, limb kernel %.4f s on 64x768 @ 768x768; "
                 "torch CPU capability %s)", "int64" if _INT64_FASTER else "limbs", t_int64, t_limbs,
                 cpu_capability())
    return _INT64_FASTER


def _against_limbs(kernel, rows: int) -> tuple[float, float]:
    """Median seconds of `kernel` and of the limb kernel on one random rows x 768 @ 768 x 768 ring product."""
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-2 ** 62, 2 ** 62, (rows, 768), generator=g, dtype=torch.int64)
    b = torch.randint(-2 ** 62, 2 ** 62, (768, 768), generator=g, dtype=torch.int64)
    return (_median_s(lambda: kernel(a, b)),
            _median_s(lambda: ringmm.matmul_limbs(ringmm.split_left(a), ringmm.split_right(b))))


def _median_s(f) -> float:
    f()
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[1]


def fewrow_faster() -> bool:
    """Rule 5: whether products of 4-64 rows take the numba int64 kernel (USE_FEWROW; "auto": timed once
    against the limb kernel, median of 3 on 32x768 @ 768x768, ~0.1 s plus numba's compile or cache load)."""
    global _FEWROW_FASTER
    if USE_FEWROW not in ("auto", "on", "off"):
        from comet_core.errors import CometError

        raise CometError(f"COMET_FEWROW_KERNEL must be one of auto, on, off, got {USE_FEWROW!r}")
    if USE_FEWROW != "auto" or not fewrowmm.available():
        return USE_FEWROW == "on" and fewrowmm.available()
    if _FEWROW_FASTER is None:
        t_numba, t_limbs = _against_limbs(fewrowmm.matmul_2d, 32)
        _FEWROW_FASTER = t_numba < t_limbs
        log.info("products of 4-64 rows: %s (numba int64 %.4f s, limb kernel %.4f s on 32x768 @ 768x768)",
                 "numba int64" if _FEWROW_FASTER else "limbs", t_numba, t_limbs)
    return _FEWROW_FASTER


def _fewrow_rule(a: torch.Tensor, b: torch.Tensor, have_limbs: bool) -> bool:
    """Rule 5 for a (*Ba, m, k) @ b (*Bb, k, n) (a's batch already folded when b is 2-D)."""
    if a.device.type != "cpu" or have_limbs or a.dim() > 3 or b.dim() > 3:
        return False
    if not INT64_MATMUL_ROWS < a.shape[-2] <= fewrowmm.ROWS:
        return False
    if a.dim() == 3 and b.dim() == 3 and a.shape[0] not in (1, b.shape[0]):
        return False
    if max(a.shape[0] if a.dim() == 3 else 1, b.shape[0] if b.dim() == 3 else 1) > FEWROW_BATCH:
        return False
    return fewrow_faster()


def kernel_in_use() -> str:
    """The CPU kernel of products above 3 rows in this process ("int64" or "limbs"), for run records."""
    return "int64" if int64_gemm_faster() else "limbs"


def kernel_record() -> str:
    """What a run record says of the kernel, without timing anything: the setting when it is explicit,
    the decision when "auto" has decided, else "not used" (no CPU product ran)."""
    if KERNEL != "auto":
        return KERNEL
    return "not used" if _INT64_FASTER is None else kernel_in_use()


def _digit_rule(a: torch.Tensor, b: torch.Tensor, have_digits: bool) -> bool:
    """Rule 4 for a (*Ba, m, k) @ b (*Bb, k, n) (a's batch already folded when b is 2-D)."""
    if not USE_DIGITS or a.device.type != "cpu" or b.dim() > 3 or a.dim() > 3:
        return False
    if int64_gemm_faster():   # rule 3 comes first: digits made for it would go unused
        return False
    if a.shape[-2] > DIGIT_ROWS and not (a.shape[-2] <= DIGIT_ROWS_LARGE and b.numel() >= DIGIT_LARGE_ELEMENTS):
        return False
    if a.shape[-1] < 2 or (not have_digits and b.shape[-1] * b.shape[-2] < DIGIT_MIN_ELEMENTS):
        return False
    if a.dim() == 3 and b.dim() == 3 and a.shape[0] != b.shape[0] and a.shape[0] != 1:
        return False
    return digitmm.available()


def product_strategy(a, b, have_limbs: bool = False, have_digits: bool = False, chunk: int = ringmm.CHUNK) -> str:
    """The strategy of ring_matmul(a, b) (rules 1-8 of the module doc); a and b as ring_matmul gets them
    after its 1-D and batch folding (`_fold`)."""
    if getattr(a, "is_meta", False) or getattr(b, "is_meta", False):
        return "shape"
    if a.shape[-1] == 0:
        return "zeros"
    cpu = a.device.type == "cpu"
    if cpu and chunk == ringmm.CHUNK and int64_gemm_faster():
        return "int64"
    if _digit_rule(a, b, have_digits):
        return "digits"
    if cpu and chunk == ringmm.CHUNK and _fewrow_rule(a, b, have_limbs):
        return "int64_numba"
    if cpu and a.shape[-2] <= INT64_ROWS:
        return "one_row"
    if cpu and a.shape[-2] <= INT64_MATMUL_ROWS and not have_limbs:
        return "int64"
    return "limbs"


def block_elements() -> int:
    """A Beaver weight of more elements takes the blocked steps (blocked.BLOCK_ELEMENTS, read when asked:
    tests lower it to get several blocks)."""
    return blocked.BLOCK_ELEMENTS


def beaver_strategy(x, y, reuse: bool = False) -> str:
    """The strategy of arith.matmul(x, y) for shares x, y (AShare): "blocked" or "whole" (module doc).
    `reuse`: y's mask is a reused one; the dealer streaming it (weight_masks.StreamMask), a product of up to
    STREAMED_ROWS rows also takes the blocks, so that b, b0 + b1 and f are never whole (a prefill's
    embedding)."""
    mpc = x.mpc
    if not blocked.ENABLED or not mpc.simulated or mpc.is_cost or mpc.device.type != "cpu":
        return "whole"
    if y.dim() != 2 or x.dim() < 2 or x.data.is_meta or y.data.is_meta:
        return "whole"
    k, n = y.shape
    rows = x.numel() // max(k, 1)
    if x.shape[-1] != k or rows <= 0 or k * n <= block_elements():
        return "whole"
    if rows > FEW_ROWS and not (reuse and rows <= STREAMED_ROWS and streams_masks()):
        return "whole"
    return "whole" if takes_digits(x.data[0].reshape(rows, k), y.data[0]) else "blocked"


STREAMED_ROWS = 512   # rows of a product with a streamed reused mask that still take the blocks


def streams_masks() -> bool:
    """Whether a simulation's reused masks are streamed (weight_masks.StreamMask) on the CPU: not with
    KEEP_MASKS_IN_MEMORY, nor with the digit strategy (whose cached digits need a b that stays)."""
    from comet_core.mpc import weight_masks

    return not weight_masks.KEEP_MASKS_IN_MEMORY and not (USE_DIGITS and not int64_gemm_faster())


def beaver_blocked(x, y, key=None) -> torch.Tensor:
    """The party-stacked shares of x @ y (not yet truncated) by the "blocked" strategy (blocked.py)."""
    return blocked.few_rows_matmul(x, y, key, product=ring_matmul)


# ---- the entry point --------------------------------------------------------------------------------

def _matmul_shape(a, b) -> tuple:
    """torch.matmul's output shape (1-D operands and batch broadcasting included)."""
    sa, sb = tuple(a.shape), tuple(b.shape)
    if len(sa) == 1 and len(sb) == 1:
        return ()
    if len(sa) == 1:
        return (*sb[:-2], sb[-1])
    if len(sb) == 1:
        return sa[:-1]
    return (*broadcast(sa[:-2], sb[:-2]), sa[-2], sb[-1])


def _digit_product(a: torch.Tensor, b: torch.Tensor, bd: "digitmm.Digits | None") -> torch.Tensor:
    """a @ b by the digit kernel: a (m, k) or (B|1, m, k), b (k, n) or (B, k, n)."""
    if a.dim() == 2 or a.shape[0] == 1:
        out = digitmm.digit_matmul(a.reshape(a.shape[-2], a.shape[-1]), b, bd)
        return out if a.dim() == 2 or b.dim() == 3 else out.unsqueeze(0)
    if b.dim() == 2:   # (B, m, k) @ (k, n): one product over B*m rows
        return digitmm.digit_matmul(a.reshape(-1, a.shape[-1]), b, bd).reshape(*a.shape[:-1], -1)
    return torch.stack([digitmm.digit_matmul(a[i], b[i]) for i in range(a.shape[0])])


def ring_matmul(a, b, b_limbs: Limbs | None = None, b_digits: "digitmm.Digits | None" = None,
                chunk: int = ringmm.CHUNK):
    """a @ b over Z_2^64, exactly (torch.matmul's broadcasting and 1-D rules); int64 tensors in and out,
    a Shape in cost mode. The kernel is product_strategy's (module doc).

    b_limbs: `split_right(b)` made earlier (b unchanged since) to skip b's split on the limb path;
    b_digits: `split_digits(b)` the same for the digit path. `chunk` is the limb kernel's inner-dimension
    chunk (<= ringmm.CHUNK keeps the result exact; larger values exist for the tests' positive control).
    """
    if getattr(a, "is_meta", False) or getattr(b, "is_meta", False):
        return Shape(_matmul_shape(a, b))
    if a.dtype != torch.int64 or b.dtype != torch.int64:
        raise TypeError(f"ring_matmul takes int64 operands, got {a.dtype} and {b.dtype}")
    if a.dim() == 0 or b.dim() == 0:
        raise ValueError("ring_matmul: both operands need at least one dimension")
    if b_limbs is not None and not b_limbs.matches(b):
        raise ValueError("b_limbs were split from another tensor (or b changed since): split_right(b) again")
    if b_digits is not None and b_digits.source != operand_fingerprint(b):
        raise ValueError("b_digits were made from another tensor (or b changed since): split_digits(b) again")
    vec_a, vec_b = a.dim() == 1, b.dim() == 1
    if vec_a:
        a = a.unsqueeze(0)
    if vec_b:
        b = b.unsqueeze(-1)
        b_limbs = b_digits = None
    fold = None
    if b.dim() == 2 and a.dim() > 2:
        # (*B, m, k) @ (k, n): one GEMM over B*m rows (torch.matmul would expand b otherwise)
        fold = a.shape[:-1]
        a = a.reshape(-1, a.shape[-1])
    k = a.shape[-1]
    if k != b.shape[-2]:
        raise ValueError(f"ring_matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be multiplied")
    strategy = product_strategy(a, b, b_limbs is not None, b_digits is not None, chunk)
    if strategy == "zeros":
        batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        out = torch.zeros((*batch, a.shape[-2], b.shape[-1]), dtype=torch.int64, device=a.device)
    elif strategy == "int64":
        out = torch.matmul(a, b)
    elif strategy == "digits":
        out = _digit_product(a, b, b_digits)
    elif strategy == "int64_numba":
        out = fewrowmm.fewrow_matmul(a, b)
    elif strategy == "one_row":
        out = ringmm.one_row_cpu(a, b)
    else:
        out = ringmm.limb_matmul(a, b, b_limbs, chunk)
    if fold is not None:
        out = out.reshape(*fold, out.shape[-1])
    if vec_a:
        out = out.squeeze(-2)
    if vec_b:
        out = out.squeeze(-1)
    return out


def naive_ring_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Reference: torch's own int64 matmul (exact, wraps). Used by tests."""
    return torch.matmul(a, b)


# ---- pre-split operands -----------------------------------------------------------------------------

def split_right(b) -> "Limbs | None":
    """Limbs of a reused right operand for ring_matmul(a, b, b_limbs=...); None in cost mode."""
    return None if b.is_meta else ringmm.split_right(b)


def split_digits(b) -> "digitmm.Digits | None":
    """Digits of a reused right operand (*B, k, n) for ring_matmul(a, b, b_digits=...) (8 bytes per
    element, the digit kernel's operand); None in cost mode."""
    return None if b.is_meta else digitmm.split_digits(b, operand_fingerprint(b))


def takes_digits(a, b) -> bool:
    """Whether ring_matmul(a, b) takes the digit strategy (rule 4), so that cached digits of b pay off."""
    if a.is_meta or b.is_meta or a.dim() < 2 or b.dim() < 2:
        return False
    if b.dim() == 2 and a.dim() > 2:
        a = a.reshape(-1, a.shape[-1])
    return _digit_rule(a, b, True)
