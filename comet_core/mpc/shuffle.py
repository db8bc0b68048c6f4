"""Oblivious permutation of shared tensors by a permutation that neither server knows.

The dealer samples pi = pi1 o pi0: P0 knows only pi0, P1 only pi1 (dealer.new_permutation). Permuting
a shared tensor along one dim reshares the secret twice, each time under one party's half of pi, with
dealer-made masks so that each party only ever sees uniformly masked values (comet-protocol-sketch 1).
Then both parties relabel the result by sigma, a permutation they both know and the dealer does not
(MPC.relabel: the P0-P1 key), locally: the permutation in force is sigma o pi, which no single process
knows. The dealer made pi, so without sigma the public indices the parties later ask it about (a reused
weight mask's selected rows, issue 22 D1) would name the real neurons; with sigma they are a uniformly
random set of the same size to it (docs/threat-model.md: "What the online dealer sees").
"""

from __future__ import annotations

import torch

from comet_core.comm.ledger import Cost
from comet_core.mpc import ring
from comet_core.mpc.engine import MPC, AShare

W = ring.BYTES_PER_ELEMENT


class Permutation:
    """One request's secret permutation of n indices: the party-stacked halves this process holds."""

    def __init__(self, mpc: MPC, n: int, source: str = "dealer") -> None:
        self.mpc, self.n, self.source = mpc, n, source   # source: who makes its correlations (ledger sender)
        self.handle = mpc.next_handle()   # the same in both parties (SPMD: same call order)
        self.halves = mpc.dealer.new_permutation(n, self.handle)   # (P, n): pi0 for P0, pi1 for P1
        self.sigma = mpc.relabel(n)   # (n,): both parties' local relabelling, unknown to the dealer (None: cost)

    def composed(self) -> torch.Tensor:
        """sigma o pi as a gather index (simulation only, for checks): v[composed] = sigma(pi1(pi0(v)))."""
        assert self.mpc.simulated, "only the simulation knows both halves of pi and sigma"
        pi = self.halves[0][self.halves[1]]
        return pi if self.sigma is None else pi[self.sigma]


def permute(x: AShare, dim: int, perm: Permutation) -> AShare:
    """[pi(x)] along `dim` (pi acting on the indices of that dim; every other index moves along).

    1. Dealer: for pi0, P1 holds random a, b and P0 gets D = pi0(a) - b; for pi1, P0 holds a', b'
       and P1 gets D' = pi1(a') - b' (dealer.permute_masks).
    2. P1 sends z = x1 - a to P0 (1 round, one way).
    3. P0: u0 = pi0(x0 + z) + D = pi0(x) - b;  P1: u1 = b.    Now [u] = [pi0(x)].
    4. P0 sends z' = u0 - a' to P1 (1 round, one way).
    5. P1: w1 = pi1(u1 + z') + D';  P0: w0 = b'.              Now [w] = [pi1(pi0(x))] = [pi(x)].
    6. Both: w_p = sigma(w_p) locally (sigma known to both parties, not the dealer): [sigma(pi(x))].
    Each party sees only values masked by the other's uniform a or a'.
    Cost: online 2 * 8n bytes (n each way, one direction per round), 2 rounds; offline 2 * 8n
    (D to P0, D' to P1); n = numel(x).
    """
    mpc = x.mpc
    d = dim if dim >= 0 else x.dim() + dim
    shape = tuple(x.shape)
    mpc.ledger.work.add("shuffle_elem", x.numel())   # comm/work.py: the same count in both modes
    with mpc.ledger.protocol("permute"):
        a, b, dd, a2, b2, dd2 = mpc.dealer.permute_masks(shape, d, perm.handle, sender=perm.source)
        if x.data.is_meta:
            mpc.send_one_way(1, x.data)
            mpc.send_one_way(0, x.data)
            return x._wrap(x.data)
        pi = perm.halves
        z = mpc.send_one_way(1, x.data - a)   # P1 -> P0
        u = mpc.for_parties(lambda p, i: (x.data[i] + z).index_select(d, pi[i]) + dd[i] if p == 0 else b[i])
        z2 = mpc.send_one_way(0, u - a2)       # P0 -> P1
        w = mpc.for_parties(lambda p, i: b2[i] if p == 0 else (u[i] + z2).index_select(d, pi[i]) + dd2[i])
        return x._wrap(w.index_select(d + 1, perm.sigma))   # [w]: (P, *shape), dim d + 1 past the party dim


def permute_cost(mpc: MPC, n: int) -> Cost:
    return Cost(2 * W * n, 2 * W * n, 2)
