"""Beaver matmul of a few rows against a fresh weight mask, in cache-sized blocks of the weight's rows.

A decode step multiplies 1-3 rows by each weight matrix with a fresh mask b (engine.reuse_weight_masks
false, as the published systems do). Written as whole-matrix steps (arith.matmul: the dealer draws b,
forms c = a @ b; the parties open f = y - b, then e @ b_p and (a_p + [p = 0] e) @ f), every step is a
pass over weight-sized tensors in main memory: ~12 ns per weight element here. The same steps run
block by block over h rows of the weight, so that b's halves, f and their sum stay in cache between
the dealer's step and the parties' steps:

    for each block of h rows (b's rows r0 .. r0 + h, drawn from the dealer's streams in order):
      1. Dealer: b0, b1 from its streams with P0 and P1;  c += a[:, block] @ b0 + a[:, block] @ b1.
      2. Opening (both parties' messages y_p - b_p; the round is booked once, for the whole f):
         f = (y0 - b0) + (y1 - b1)  for the block's rows.
      3. P_p: z_p += (a_p + [p = 0] e) @ f + e @ b_p  (e = x - a was opened with f, in the same round).
    4. Dealer: c's shares (P0's from its stream, P1's the correction), as Dealer._arith; z_p += c_p.

Nothing is skipped or merged across parties: every product of the steps is computed, each from its own
party's operands; products over the same matrix are batched into one GEMM (the dealer's a @ b_p with
P_p's e @ b_p: rows [a; e] against b_p, which the dealer and P_p both hold; both parties' left rows
against the public f), since an int64 GEMM of a few rows costs one pass over its matrix whatever the
rows. Only the loop order differs, and ring arithmetic is exact, so
every share, opened value and ledger row is bit for bit that of arith.matmul's unblocked steps (the
streams are read in pieces of an even number of words, which reads the same words as one read;
tests/test_blocked.py). Simulation only (both parties' shares in this process, CPU): a single party
of a two-process run sends and computes as before. Cost: matmul_cost, unchanged.
"""

from __future__ import annotations

import torch

from comet_core.mpc import ring
from comet_core.mpc.engine import AShare

BLOCK_ELEMENTS = 1 << 18   # weight elements per block (2 MiB per int64 buffer: b0, b1, b0 + b1, f in L2/L3)
ENABLED = True             # tests switch it off to compare with the unblocked steps


def applies(x: AShare, y: AShare) -> bool:
    """Whether matmul(x, y) with a fresh mask runs here: a simulated CPU exact run, y a (k, n) matrix and
    x at most dealer.FEW_ROWS rows of k (any batch dims), large enough for blocks to matter."""
    from comet_core.mpc.dealer import FEW_ROWS

    mpc = x.mpc
    if not ENABLED or not mpc.simulated or mpc.is_cost or mpc.device.type != "cpu":
        return False
    if y.dim() != 2 or x.dim() < 2 or x.data.is_meta or y.data.is_meta:
        return False
    k, n = y.shape
    rows = x.numel() // max(k, 1)
    return x.shape[-1] == k and 0 < rows <= FEW_ROWS and k * n > BLOCK_ELEMENTS


def block_rows(k: int, n: int) -> int:
    """Rows per block: about BLOCK_ELEMENTS elements, and an even number of words per block (so that the
    dealer's streams read in blocks give the words of one read)."""
    h = max(1, min(k, BLOCK_ELEMENTS // n))
    if (h * n) % 2 and h < k:
        h += 1
    return h


def fresh_mask_matmul(x: AShare, y: AShare) -> torch.Tensor:
    """The party-stacked shares of x @ y at scale x.frac + y.frac (not yet truncated), steps 1-4 above.
    [x]: (2, *B, R, k), [y]: (2, k, n) over Z_2^64 -> (2, *B, R, n)."""
    mpc = x.mpc
    k, n = y.shape
    rows = x.data.reshape(2, -1, k)                                   # (2, R, k)
    R = rows.shape[1]
    h = block_rows(k, n)
    triple = mpc.dealer.blocked_matmul_triple((R, k), (k, n), h)
    a = triple.a                                                      # (2, R, k), dealer's streams
    mpc.channel.exchange([rows, y.data], 64)                          # one round: e and f
    e = mpc.open_pair(rows, a)                                        # (R, k) public
    ea = mpc.add_p0_(a.clone(), e)                                    # (2, R, k): a_p + [p = 0] e
    z = torch.zeros((2, R, n), dtype=torch.int64)
    f = torch.empty((h, n), dtype=torch.int64)
    for r0, b, eb in triple.blocks(e):                                # b: (2, hb, n); eb: e @ b_p (2, R, n)
        hb = b.shape[1]
        fb = mpc.open_pair(y.data[:, r0:r0 + hb], b, out=f[:hb])       # (hb, n) public
        z.add_(eb).add_(ring.ring_matmul(ea[:, :, r0:r0 + hb], fb))   # (2, R, n)
    z.add_(triple.c().data)
    return z.reshape(2, *x.shape[:-1], n)
