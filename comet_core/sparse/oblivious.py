"""Oblivious indexing without Comet's per-request shuffle (system.indexing=oblivious): a compaction of the
active neurons per layer and step that leaks only their count k.

Per layer and step of T tokens (CometSystem._ffn_oblivious; ops `ffn.predict`, `ffn.reveal`, `ffn.select`):
  1. Predictor on h with the unpermuted W2, b2: [z] (T, F), two Beaver matmuls (Comet's step 2).
  2. [u] = [z > threshold] per neuron (union over the T tokens) as XOR bits (sparse/masks.active_bits, on
     Z_2^predictor_bits), then additive 0/1 by a daBit (compare.b2a_bit: 1 round, 1 bit each way).
  3. Compaction by shuffle-then-reveal: a permutation pi of the F neurons that neither server knows, fresh
     for this layer and step, applied in one `permute` call (mpc/shuffle.py) to every neuron-indexed tensor
     stacked with u, [W_in (d rows; Llama gate and up: 2d); W_out^T (d); b_in (OPT); u] (R x F, R = 2d + 2 for
     OPT, 3d + 1 for Llama): 2 rounds, 2 * 8 R F bytes online (permute_cost(R F)).
  4. Open the low bit of each share of pi(u) (1 round, 1 bit per neuron each way): the public positions S
     of the k active neurons in pi's coordinates. The shares of pi(u) are fresh (the permutation re-randomises
     them) and pi is uniform and independent of everything else, so the opened pi(u) is a uniformly random
     arrangement of k ones: simulatable from k alone, and unlike Comet's per-request pi nothing links two
     steps (no co-activation pattern).
  5. SOMM, activation and SIMM on the k selected columns of this step's permuted weights (Comet's steps 4-6).
Leaks k per layer and step only. Cost per step (ffn_oblivious_step_cost in systems/comet.py):
  predictor + active_bits_cost + b2a (2 * packed(F, 1), 1 round) + permute_cost(R F) + reveal_bits_cost(F)
  + sparse_ffn_cost(k); 2 + 7 + 1 + 2 + 1 + 13 = 26 rounds at T = 1 on 64-bit shares (Comet: 25).

Why this compaction (each leaks k only; F neurons, R payload elements per neuron, one opened element
costs 16 bytes on the wire under per-call masks):
  * one-hot selection (the variant this replaces): Sel (k x F) from prefix sums and (k + 1) F comparisons,
    then [W_in b_in] Sel^T and Sel W_out as Beaver products of the whole weights: 16 (R F + 2 k F) bytes plus
    (k + 1) F comparisons (OPT-1.3B at 90%: 6.7 M comparisons, 0.42 GB) per step;
  * a sorting network on (mask, column) pairs (Batcher's odd-even merge: F log2 F (log2 F + 1) / 4
    compare-exchanges, each a comparison and a Beaver select of its R-element payload): about
    16 R F log2(F)^2 / 4 bytes per step, 42x the shuffle-then-reveal compaction at F = 8192;
  * Waksman routing of the compaction permutation: F log2 F switches of R-element payload, and the switch
    settings need the permutation itself (a secure sort first);
  * shuffle-then-reveal (this module): every payload element moved once, 16 R F bytes in 2 rounds: one
    oblivious pass over the weights per step, the same order as dense's per-call weight openings. Only
    reusing a permutation across steps (Comet's per-request shuffle, leaking the co-activation pattern)
    amortises that pass.
"""

from __future__ import annotations

import torch

from comet_core.mpc.engine import AShare
from comet_core.mpc.shuffle import Permutation, permute
from comet_core.sparse.masks import reveal_bits


def stacked_rows(d: int, llama: bool) -> int:
    """R: the neuron-indexed rows permuted per step (step 3)."""
    return 3 * d + 1 if llama else 2 * d + 2


def compact(lw: dict, u: AShare, source: str = "dealer", count: int | None = None):
    """Steps 3-4 for one layer and step: u (F,) additive 0/1 shares (frac 0) of the active neurons.

    Returns (S, w_in, b_in, w_out): the public active positions S (in this step's pi coordinates) and the
    permuted weights, w_in (d, F) | (d, 2F) [gate | up], b_in (F,) | None, w_out (F, d); slice them with S.
    `count`: cost mode's number of active neurons (no values to open)."""
    mpc = u.mpc
    llama = "w_gate" in lw
    ins = [lw["w_gate"], lw["w_up"]] if llama else [lw["w1"]]
    w_out = lw["w_down"] if llama else lw["w2"]
    fr = w_out.frac
    rows = [*ins, w_out.transpose(0, 1)] + ([] if llama else [lw["b1"].unsqueeze(0)])
    rows.append(AShare(u.data.unsqueeze(1), mpc, fr))   # u's ring values 0/1 as they are (cat would rescale)
    F = u.shape[0]
    stacked = permute(AShare.cat(rows, 0), -1, Permutation(mpc, F, source=source))   # [M]: (R, F)
    low = stacked.data[:, -1] & 1                                        # low bits of the shares of pi(u)
    mask = reveal_bits(mpc, low, count)
    S = torch.nonzero(mask).flatten()
    d = w_out.shape[1]
    k = 2 if llama else 1
    w_in = AShare.cat([stacked[:d], stacked[d:2 * d]], 1) if llama else stacked[:d]
    b_in = None if llama else stacked[2 * d]
    w_out_p = stacked[k * d:(k + 1) * d].transpose(0, 1)                # (F, d)
    return S, w_in, b_in, w_out_p
