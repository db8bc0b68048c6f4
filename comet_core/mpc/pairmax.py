"""Maximum along the last dim in constant depth: all pairwise comparisons in one tree.

The tournament (compare.max_along) takes ceil(log2 n) levels of a comparison and a selection, 9 rounds
each: 54 rounds for the 33-40 positions of a decode step's attention. Comparing every pair at once
takes 17 rounds for any n, at n (n - 1) / 2 comparisons per row instead of n - 1: worth it where rounds,
not bytes, bound the time (few rows, short rows: a decode step's softmax). `use_pairs` decides from
public shapes only.

Protocol (`max_pairs`, rows of n entries, P = n (n - 1) / 2 pairs i < j):
  1. d_ij = x_i - x_j for every pair (local), b_ij = [d_ij >= 0] (drelu: 8 rounds, all pairs at once).
  2. wins_k = sum_(j > k) b_kj + sum_(i < k) (1 - b_ik) (local: a public incidence matrix, P0 adds the
     public counts): how many entries x_k beats, ties going to the lower index, so exactly one entry
     per row, the first maximum, has wins = n - 1.
  3. w_k = [wins_k - (n - 1) >= 0] (drelu on integers: 8 rounds): the one-hot position of the maximum.
  4. max = sum_k w_k x_k (one Beaver product of an integer with x, no truncation: 1 round; local sum).
Cost: drelu_cost(R P) + drelu_cost(R n) + mul_cost(R n, R n, R n, untruncated): 17 rounds.
The value is the tournament's exactly (the maximum entry itself, no arithmetic on it).
"""

from __future__ import annotations

import torch

from comet_core.comm.ledger import Cost
from comet_core.mpc import arith, compare, ring
from comet_core.mpc.engine import MPC, AShare

PAIRS_BUDGET = 1 << 15   # comparisons of one call (R P) up to which `use_pairs` chooses the pairs
PAIRS_ROUNDS = 17


def use_pairs(rows: int, n: int) -> bool:
    """Whether max_pairs beats the tournament: fewer rounds (n >= 3) within PAIRS_BUDGET comparisons
    (a decode step's scores: SmolLM2-135M 9 x 40 -> 7,020; a 32-token prefill would need 143k)."""
    return n >= 3 and rows * n * (n - 1) // 2 <= PAIRS_BUDGET


def _incidence(n: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs (i, j), i < j, and the public (P, n) matrix A with A[p, i_p] = 1, A[p, j_p] = -1."""
    i, j = torch.triu_indices(n, n, 1)
    a = torch.zeros((i.numel(), n), dtype=torch.int64)
    p = torch.arange(i.numel())
    a[p, i] = 1
    a[p, j] = -1
    return i, j, a.to(device)


def max_pairs(x: AShare) -> AShare:
    """max over the last dim (keepdim) by steps 1-4 of the module docstring."""
    mpc = x.mpc
    n = x.shape[-1]
    if n == 1:
        return x
    with mpc.ledger.protocol("max"):
        dev = x.data.device if not mpc.is_cost else torch.device("cpu")
        i, j, a = _incidence(n, dev)
        d = x.index_select(-1, i) - x.index_select(-1, j)                   # (..., P)
        b = compare.drelu(d)                                                  # integer 0/1
        wins = AShare(ring.ring_matmul(b.data, a), mpc, 0)                    # (..., n): sum b - sum b'
        # + #(i < k) for every k: the (1 - b_ik) terms' ones (public, P0)
        wins = wins.add_public(torch.arange(n, dtype=torch.float64) - (n - 1))
        w = compare.drelu(wins)                                               # one-hot first maximum
        return arith.mul(w, x).sum(-1, keepdim=True)


def max_pairs_cost(mpc: MPC, rows: int, n: int) -> Cost:
    if n == 1:
        return Cost()
    P = n * (n - 1) // 2
    return (compare.drelu_cost(mpc, rows * P) + compare.drelu_cost(mpc, rows * n)
            + arith.mul_cost(mpc, rows * n, rows * n, rows * n, frac_sum=mpc.frac_bits))


def max_last(x: AShare) -> AShare:
    """max over the last dim (keepdim): max_pairs where `use_pairs`, else the tournament."""
    n = x.shape[-1]
    if use_pairs(x.numel() // max(n, 1), n):
        return max_pairs(x)
    return compare.max_along(x, -1, keepdim=True)


def max_last_cost(mpc: MPC, rows: int, n: int) -> Cost:
    return max_pairs_cost(mpc, rows, n) if use_pairs(rows, n) else compare.max_along_cost(mpc, rows, n)
