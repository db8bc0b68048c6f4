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
`argmax_last` (the secure argmax of the next token) runs tournament levels until the survivors fit the
budget, then the same tree on them, carrying the index with the value.
"""

from __future__ import annotations

import functools

import torch

from comet_core.comm.ledger import Cost
from comet_core.mpc import arith, compare
from comet_core.mpc.matmul import ring_matmul
from comet_core.mpc.engine import MPC, AShare

PAIRS_BUDGET = 1 << 15   # comparisons of one call (R P) up to which `use_pairs` chooses the pairs
PAIRS_ROUNDS = 17


def use_pairs(rows: int, n: int, method: str = "auto") -> bool:
    """Whether to take max_pairs (engine.max_method): "tree" never (the tournament of every earlier
    release and of the papers' systems), "pairs" for every row of n >= 3, "auto" where it saves rounds
    (n >= 3) within PAIRS_BUDGET comparisons (a decode step's scores: SmolLM2-135M 9 x 40 -> 7,020; a
    32-token prefill would need 143k)."""
    if method == "tree" or n < 3:
        return False
    return method == "pairs" or rows * n * (n - 1) // 2 <= PAIRS_BUDGET


@functools.lru_cache(maxsize=64)
def _incidence(n: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs (i, j), i < j, and the public (P, n) matrix A with A[p, i_p] = 1, A[p, j_p] = -1.
    Cached per (n, device) (a decode step asks for the same n in every layer); read-only."""
    i, j = torch.triu_indices(n, n, 1)
    a = torch.zeros((i.numel(), n), dtype=torch.int64)
    p = torch.arange(i.numel())
    a[p, i] = 1
    a[p, j] = -1
    return i, j, a.to(device)


def _first_max_onehot(x: AShare) -> AShare:
    """Steps 1-3: w (..., n) integer 0/1 shares, 1 exactly at the first maximum of each row."""
    mpc = x.mpc
    n = x.shape[-1]
    dev = x.data.device if not mpc.is_cost else torch.device("cpu")
    i, j, a = _incidence(n, dev)
    d = x.index_select(-1, i) - x.index_select(-1, j)                       # (..., P)
    b = compare.drelu(d)                                                      # integer 0/1
    wins = AShare(ring_matmul(b.data, a), mpc, 0)                        # (..., n): sum b - sum b'
    mpc.ledger.work.add(arith.public_mac_kind(b.data.shape), b.data.numel() * n)   # both shares (comm/work.py)
    # + #(i < k) for every k: the (1 - b_ik) terms' ones (public, P0)
    wins = wins.add_public(torch.arange(n, dtype=torch.float64) - (n - 1))
    return compare.drelu(wins)


def max_pairs(x: AShare) -> AShare:
    """max over the last dim (keepdim) by steps 1-4 of the module docstring."""
    mpc = x.mpc
    if x.shape[-1] == 1:
        return x
    with mpc.ledger.protocol("max"):
        return arith.mul(_first_max_onehot(x), x).sum(-1, keepdim=True)


def max_pairs_cost(mpc: MPC, rows: int, n: int) -> Cost:
    if n == 1:
        return Cost()
    P = n * (n - 1) // 2
    return (compare.drelu_cost(mpc, rows * P) + compare.drelu_cost(mpc, rows * n)
            + arith.mul_cost(mpc, rows * n, rows * n, rows * n, frac_sum=mpc.frac_bits))


def max_last(x: AShare) -> AShare:
    """max over the last dim (keepdim): max_pairs where `use_pairs`, else the tournament."""
    n = x.shape[-1]
    if use_pairs(x.numel() // max(n, 1), n, x.mpc.config.max_method):
        return max_pairs(x)
    return compare.max_along(x, -1, keepdim=True)


def max_last_cost(mpc: MPC, rows: int, n: int) -> Cost:
    return max_pairs_cost(mpc, rows, n) if use_pairs(rows, n, mpc.config.max_method) \
        else compare.max_along_cost(mpc, rows, n)


def argmax_last(x: AShare) -> AShare:
    """Index of the largest entry along the last dim (the first on ties, as torch.argmax), as a share
    at x's scale (the index i held as i 2^frac): compare.argmax's tournament until the survivors fit
    `use_pairs`, then all pairs in one tree.

    1. State (x_i, i) per position (public indices: P0 holds them).
    2. While use_pairs(rows, n) is false: one tournament level over adjacent pairs (2j, 2j + 1),
       b = [x_2j >= x_2j+1] (drelu, 8 rounds), (value, index) = right + b (left - right) (1 round,
       no truncation); adjacent pairing keeps the survivors in index order.
    3. The n survivors: w = _first_max_onehot(values) (16 rounds), (value, index) = sum w (value,
       index) (1 round, no truncation).
    Cost: argmax_last_cost. SmolLM2-135M's vocabulary (49,152): 8 levels + pairs over 192, 89 rounds
    (the tournament: 144); a byte vocabulary (256): pairs at once, 17 rounds (72).
    """
    from comet_core.mpc.shape import Shape

    mpc = x.mpc
    with mpc.ledger.protocol("argmax"):
        n = x.shape[-1]
        rows = x.numel() // n
        if mpc.is_cost:
            idx = AShare(Shape((len(mpc.parties), *x.shape)), mpc, 0)
        else:
            pos = torch.arange(n, dtype=torch.int64, device=mpc.device)
            idx = AShare(mpc.public_share(pos.expand(x.shape).contiguous()), mpc, 0)
        s = AShare.stack([x, idx], -1)                                        # (..., n, 2) at x's scale
        while n > 1 and not use_pairs(rows, n, mpc.config.max_method):
            h = n // 2
            left, right = s[..., 0:2 * h:2, :], s[..., 1:2 * h:2, :]
            b = compare.drelu(left[..., 0] - right[..., 0])
            win = right + arith.mul(b.unsqueeze(-1), left - right, out_frac=s.frac)
            s = AShare.cat([win, s[..., 2 * h:, :]], -2) if n % 2 else win
            n = n - h
        if n > 1:
            w = _first_max_onehot(s[..., 0])                                  # (..., n)
            s = arith.mul(w.unsqueeze(-1), s, out_frac=s.frac).sum(-2, keepdim=True)
        return s[..., 0, 1]


def argmax_last_cost(mpc: MPC, rows: int, n: int) -> Cost:
    total = Cost()
    while n > 1 and not use_pairs(rows, n, mpc.config.max_method):
        p = rows * (n // 2)
        total = total + compare.drelu_cost(mpc, p) + arith.mul_cost(mpc, p, 2 * p, 2 * p, frac_sum=0)
        n = n - n // 2
    if n > 1:
        m = rows * n
        total = total + compare.drelu_cost(mpc, rows * (n * (n - 1) // 2)) + compare.drelu_cost(mpc, m)
        total = total + arith.mul_cost(mpc, m, 2 * m, 2 * m, frac_sum=0)
    return total
