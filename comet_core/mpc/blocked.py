"""Beaver matmul of a few rows against a weight's mask, in cache-sized blocks of the weight's rows.

A decode step multiplies 1-3 rows by each weight matrix. Written as whole-matrix steps (arith.matmul:
the dealer draws b, forms c = a @ b; the parties open f = y - b, then e @ b_p and (a_p + [p = 0] e) @ f),
every step with a fresh mask (engine.reuse_weight_masks false, as the published systems do) is a pass
over weight-sized tensors in main memory (the `whole` rows of results/decode_matmul/smollm2-135m.csv). The same steps run block by
block over h rows of the weight, so that b's halves and f stay in cache between the dealer's step and
the parties' steps:

    for each block of h rows (b's rows r0 .. r0 + h, drawn from the dealer's streams in order):
      1. Dealer: b0, b1 from its streams with P0 and P1;  c += a[:, block] @ b0 + a[:, block] @ b1.
      2. Opening (both parties' messages y_p - b_p; the round is booked once, for the whole f):
         f = (y0 - b0) + (y1 - b1)  for the block's rows.
      3. P_p: z_p += (a_p + [p = 0] e) @ f + e @ b_p  (e = x - a was opened with f, in the same round).
    4. Dealer: c's shares (P0's from its stream, P1's the correction), as Dealer._arith; z_p += c_p.
A reused mask (the embedding table and LM head; every weight with engine.weight_masks=request) is
drawn and opened by these blocks at its first use in an inference and kept; later calls open only e and
run steps 1 and 3 on it. On the CPU the dealer keeps b as its streams' positions (weight_masks.StreamMask) and
reads its blocks again, and the parties' f is kept as its operands (weight_masks.Reopened: the kernel
computes f from y and b block by block, as at the first use); with weight_masks.KEEP_MASKS_IN_MEMORY, b and f
are kept as tensors and used as one block. The same words either way.

Nothing is skipped or merged across parties: every product of the steps is computed, each from its own
party's operands. A block's products run in one pass over it (mpc/blockkernel.py: a numba kernel, or
torch's GEMMs with the products over the same matrix batched: the dealer's a @ b_p with P_p's e @ b_p,
rows [a; e] against b_p, which the dealer and P_p both hold, and both parties' rows against the public
f; torch's int64 GEMM of up to ~16 rows costs one pass over its matrix whatever the rows). Only the loop order
differs, and ring arithmetic is exact, so every share, opened value and ledger row is bit for bit that
of arith.matmul's unblocked steps (the streams are read in pieces of an even number of words, which
reads the same words as one read; tests/test_blocked.py). Simulation only (both parties' shares in
this process, CPU): a single party of a two-process run sends and computes as before.
Cost: matmul_cost, unchanged.
"""

from __future__ import annotations

import torch

from comet_core.mpc import blockkernel, weight_masks
from comet_core.mpc.ashare import AShare

BLOCK_ELEMENTS = 1 << 18   # weight elements per block (2 MiB per int64 buffer: b0, b1, b0 + b1, f in L2/L3)
ENABLED = True             # tests switch it off to compare with the unblocked steps (matmul.beaver_strategy)


def block_rows(k: int, n: int) -> int:
    """Rows per block: k split into equal blocks of at most about BLOCK_ELEMENTS elements (no short last
    block: a GEMM over few rows of b runs slower per element), each an even number of words (so that
    the dealer's streams read in blocks give the words of one read)."""
    blocks = max(1, -(-k * n // BLOCK_ELEMENTS))
    h = -(-k // blocks)
    if (h * n) % 2 and h < k:
        h += 1
    return h


def few_rows_matmul(x: AShare, y: AShare, key=None, product=None) -> torch.Tensor:
    """The party-stacked shares of x @ y at scale x.frac + y.frac (not yet truncated), steps 1-4 above:
    mpc/matmul.py's "blocked" Beaver strategy (its beaver_strategy says when; call matmul.beaver_blocked).
    `key`: y's id when its mask is reused (engine.reuse_weight_masks): drawn and opened by blocks at its
    first use in the inference and kept (the dealer's b, the parties' f), later calls open only e.
    `product`: the ring product of the torch fallback (matmul.ring_matmul, passed down: no import circle).
    [x]: (2, *B, R, k), [y]: (2, k, n) over Z_2^64 -> (2, *B, R, n)."""
    mpc = x.mpc
    k, n = y.shape
    rows = x.data.reshape(2, -1, k)                                   # (2, R, k)
    R = rows.shape[1]
    h = block_rows(k, n)
    triple = mpc.dealer.blocked_matmul_triple((R, k), (k, n), h, reuse_key=key)
    a = triple.a                                                      # (2, R, k), dealer's streams
    kept = mpc.weight_masks.get(key) if key is not None else None      # f of a reused mask
    mpc.channel.exchange([rows] if kept is not None else [rows, y.data], 64)   # one round: e (and f)
    e = mpc.open_pair(rows, a)                                        # (R, k) public
    ea = mpc.add_p0_(a.clone(), e)                                    # (2, R, k): a_p + [p = 0] e
    z = torch.zeros((2, R, n), dtype=torch.int64)
    first = key is not None and kept is None
    reopened = isinstance(kept, weight_masks.Reopened)                 # f computed again from y and b
    if reopened:
        kept.check()
    keep = weight_masks.keep_opening(mpc, key, y.data, None) if first else None
    # f is opened block by block; a reused mask's first use keeps it whole (or, streamed, as its operands)
    f = torch.empty((k, n), dtype=torch.int64) if first and keep is None else None
    have_f = kept is not None and not reopened                          # a kept f as a tensor
    ybuf = None   # y's rows gathered where y is a transposed view (a tied embedding: the LM head's shares)
    for r0, b in triple.blocks():                                     # b: (2, hb, n), the mask's rows
        hb = b.shape[1]
        cols = slice(r0, r0 + hb)
        yb = None if have_f else y.data[:, cols]
        if yb is not None and not yb.is_contiguous():
            ybuf = torch.empty_like(b) if ybuf is None or ybuf.shape != b.shape else ybuf
            yb = ybuf.copy_(yb)
        blockkernel.block_products(
            b, triple.av[:, cols].contiguous(), e[:, cols].contiguous(), ea[:, :, cols].contiguous(),
            triple.acc, z, y=yb,
            f=kept[cols] if have_f else None,
            f_out=f[cols] if f is not None else None, product=product)
    if first:
        mpc.weight_masks[key] = keep if keep is not None else f
    z.add_(triple.c().data)
    return z.reshape(2, *x.shape[:-1], n)
