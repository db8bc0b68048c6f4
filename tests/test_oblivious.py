"""The oblivious-indexing baseline's compaction (sparse/oblivious.py): the compacted weights are the active
neurons' own, the opened mask has the count k at positions that a fresh permutation moves every step (so two
steps cannot be linked by position; positive control: one permutation reused links them), ledger == cost."""

from __future__ import annotations

import torch

from comet_core.mpc import compare
from comet_core.mpc.engine import MPC, EngineConfig
from comet_core.mpc.shuffle import permute_cost
from comet_core.sparse import oblivious as O
from comet_core.sparse.masks import reveal_bits_cost

D, F = 4, 64


def _setup(seed: int = 3):
    m = MPC(EngineConfig(), seed=seed)
    g = torch.Generator().manual_seed(seed)
    w1, b1, w2 = (torch.randn(D, F, generator=g, dtype=torch.float64), torch.randn(F, generator=g, dtype=torch.float64),
                  torch.randn(F, D, generator=g, dtype=torch.float64))
    lw = dict(w1=m.share(w1), b1=m.share(b1), w2=m.share(w2))
    active = torch.zeros(F, dtype=torch.bool)
    active[torch.randperm(F, generator=g)[:10]] = True
    bits = m.public_share(active.long())                    # XOR shares of the mask (P0 holds it)
    u = compare.b2a_bit(m, bits)
    return m, lw, u, active, (w1, b1, w2)


def test_compaction_selects_the_active_neurons_and_costs_its_formula():
    m, lw, u, active, (w1, b1, w2) = _setup()
    mark = m.ledger.mark()
    S, w_in, b_in, w_out = O.compact(lw, u)
    c = m.ledger.cost_since(mark)
    assert c == permute_cost(m, O.stacked_rows(D, False) * F) + reveal_bits_cost(F)
    assert S.numel() == int(active.sum())
    got = m.reveal(w_in.index_select(1, S)).T                # (k, D) the selected columns, in pi's order
    want = w1.T[active]                                      # (k, D) the active neurons' columns
    key = lambda t: sorted(map(tuple, torch.round(t * 2 ** 10).long().tolist()))   # noqa: E731 (order-free)
    assert key(got) == key(want)
    assert key(m.reveal(w_out.index_select(0, S))) == key(w2[active])
    assert sorted(torch.round(m.reveal(b_in.index_select(0, S)) * 2 ** 10).long().tolist()) == \
        sorted(torch.round(b1[active] * 2 ** 10).long().tolist())


def test_each_step_reveals_fresh_positions_with_positive_control(monkeypatch):
    m, lw, u, active, _ = _setup()
    steps = [O.compact(lw, u)[0] for _ in range(4)]          # the same real mask, four steps
    assert all(s.numel() == int(active.sum()) for s in steps)
    assert len({tuple(s.tolist()) for s in steps}) == 4       # fresh pi: no position repeats as a set
    fixed = O.Permutation(m, F)                              # positive control: one permutation for all steps
    monkeypatch.setattr(O, "Permutation", lambda mpc, n, source="dealer": fixed)
    linked = [O.compact(lw, u)[0] for _ in range(2)]
    assert torch.equal(linked[0], linked[1])                 # the check would catch a reused permutation
