"""Input sharing on the CPU in cache-sized blocks: the owner's two shares of a plaintext tensor written
straight into one party-stacked buffer.

`share_into(x, frac, gen)` computes what `MPC.share` defines (encode, draw r, stack (r, enc - r)),
block by block:

1. r: the next words of the owner's stream (the key it shares with P0) into slot 0 of the block,
2. enc = round(x * 2^frac) in a reused float64 scratch block, range-checked (|enc| <= 2^62, no NaN),
3. slot 1 of the block = enc - r (float64 -> int64 as `ring.encode`'s `.to(torch.int64)`).

The same shares bit for bit as the unblocked steps: the keystream is a function of the counter block
only, and every block but the last holds an even number of 64-bit words (whole 16-byte AES blocks), so
the stream read in blocks is the stream read at once (prg.PRG). Cost: no messages here (the caller books
numel * 64 bits from the owner to P1); memory: the (2, *shape) result plus a float64 scratch block
(4 MiB at the default block; an int64 one more for a strided destination) instead of a weight-sized
float64 temporary, so the passes run in cache (model weights: 163 M elements for SmolLM2-135M). Larger
blocks than L2 on purpose: each block's operations are parallel regions of torch's thread pool, and
fewer of them keep the per-region overhead small (it is large on a loaded 2-core machine: 64 Ki blocks
took 2x the time of 1 Mi blocks there).
"""

from __future__ import annotations

import torch

from comet_core.mpc import ring
from comet_core.mpc.prg import PRG

BLOCK = 1 << 19   # elements per block (4 MiB of float64 scratch; in L3): even, so a block is whole AES blocks


def share_into(x: torch.Tensor, frac: int, gen: PRG, out: torch.Tensor | None = None,
               block: int = BLOCK) -> torch.Tensor:
    """The shares (2, *x.shape) int64 of x (float, any strides) at scale 2^frac, r drawn from `gen`.

    `out`: where to write them (int64, shape (2, *x.shape), any strides whose last dim is contiguous,
    e.g. a column slice of a larger buffer); a fresh contiguous buffer when None. A value fixed point
    cannot hold raises `ring.encode`'s one-line CometError (naming the element); x is never modified.
    """
    assert block >= 2 and block % 2 == 0, "block must be an even number of words"
    if out is None:
        out = torch.empty((2, *x.shape), dtype=torch.int64)
    assert out.dtype == torch.int64 and tuple(out.shape) == (2, *x.shape), "out must be int64 (2, *x.shape)"
    n = x.numel()
    if n == 0:
        return out
    scale = float(1 << frac)
    if x.is_contiguous() and out[0].is_contiguous() and out[1].is_contiguous():
        # flat blocks of `block` words: x, r and enc - r are contiguous runs
        xs, r0, r1 = x.reshape(-1), out[0].view(-1), out[1].view(-1)
        spans = [(o, min(o + block, n)) for o in range(0, n, block)]
    else:
        # row blocks of a (rows, cols) view (a transposed weight, a column slice of a fused buffer)
        cols = x.shape[-1] if x.dim() else 1
        rows = n // cols
        xs = x.reshape(rows, cols)                # a view for 2-D x; N-D non-contiguous x may copy (rare)
        r0, r1 = out[0].view(rows, cols), out[1].view(rows, cols)
        rb = max(1, block // cols)
        rb += (rb * cols) % 2                     # an even number of words per block (all but the last)
        spans = [(i, min(i + rb, rows)) for i in range(0, rows, rb)]
    width = spans[0][1] - spans[0][0]
    f64 = torch.empty((width, *xs.shape[1:]), dtype=torch.float64)          # enc of one block
    # r straight into slot 0 when its rows are contiguous, else through a scratch block (gen.fill_ wants one)
    words = None if r0.is_contiguous() else torch.empty(f64.shape, dtype=torch.int64)
    for a, b in spans:
        enc = f64[: b - a]
        r = r0[a:b] if words is None else words[: b - a]
        gen.fill_(r)                              # [r]: (block) uniform words of Z_2^64
        enc.copy_(xs[a:b])                        # float -> float64
        enc.mul_(scale).round_()
        lo, hi = torch.aminmax(enc)
        if not (-ring.ENCODE_LIMIT <= float(lo) and float(hi) <= ring.ENCODE_LIMIT):   # NaN fails too
            ring.encode(x, frac)                  # raises the one-line error naming the value
        if words is not None:
            r0[a:b].copy_(r)
        y = r1[a:b]
        y.copy_(enc)                              # float64 -> int64, as ring.encode's .to(torch.int64)
        y.sub_(r)                                 # enc - r (mod 2^64)
    return out
