"""The blocked decode matmul (comet_core/mpc/blocked.py): the same shares, opened values and ledger as
arith.matmul's unblocked steps, bit for bit; where it applies; a positive control."""

from __future__ import annotations

import pytest
import torch

from comet_core.mpc import arith, blocked, matmul
from comet_core.mpc.engine import MPC, EngineConfig


def _product(monkeypatch, enabled: bool, shape_x, shape_w, block: int | None = None, reuse: bool = False,
             calls: int = 2):
    monkeypatch.setattr(blocked, "ENABLED", enabled)
    if block is not None:
        monkeypatch.setattr(blocked, "BLOCK_ELEMENTS", block)
    m = MPC(EngineConfig(reuse_weight_masks=reuse), seed=11, mode="exact")
    g = torch.Generator().manual_seed(5)
    x = m.share(torch.randn(*shape_x, generator=g))
    w = m.register_weight(m.share(torch.randn(*shape_w, generator=g) * 0.05, owner="model_owner"))
    zs = [arith.matmul(x, w) for _ in range(calls)]   # the second call reads later stream words
    return m, x, w, zs


CASES = [
    ((1, 576), (576, 960), 1 << 14),        # several full blocks and a short last one
    ((3, 77), (77, 3001), 1000),            # odd n: blocks of an even number of words
    ((2, 1, 96), (96, 1536), 4096),         # batch dims, two rows
    ((1, 1, 1, 64), (64, 515), 600),        # odd n, one row under three batch dims
]


@pytest.mark.parametrize("reuse", [False, True])
@pytest.mark.parametrize("shape_x,shape_w,block", CASES)
def test_blocked_equals_unblocked_bit_for_bit(monkeypatch, shape_x, shape_w, block, reuse):
    """Fresh masks, and reused ones (drawn and opened by blocks at the first call, kept for the second)."""
    m0, x, w, ref = _product(monkeypatch, False, shape_x, shape_w, block, reuse=reuse, calls=3)
    m1, x, w, got = _product(monkeypatch, True, shape_x, shape_w, block, reuse=reuse, calls=3)
    for r, z in zip(ref, got):
        assert torch.equal(r.data, z.data), "shares differ"
    assert m0.ledger.frame().equals(m1.ledger.frame())
    # and the value is x @ w within fixed-point tolerance (frac 16: |err| < 2^-10 here)
    plain = m1.secret(x).double() / 2 ** x.frac @ (m1.secret(w).double() / 2 ** w.frac)
    assert (m1.secret(got[0]).double() / 2 ** got[0].frac - plain).abs().max() < 2 ** -10


def _reused_products(monkeypatch, order):
    """One reused mask (a 40 x 77 weight, blocks of 500 elements) through products of `order` rows."""
    monkeypatch.setattr(blocked, "BLOCK_ELEMENTS", 500)
    m = MPC(EngineConfig(reuse_weight_masks=True), seed=4, mode="exact")
    g = torch.Generator().manual_seed(2)
    w = m.register_weight(m.share(torch.randn(40, 77, generator=g) * 0.1, owner="model_owner"))
    return m, [arith.matmul(m.share(torch.randn(r, 40, generator=g)), w).data for r in order]


@pytest.mark.parametrize("order", [(4, 1, 1, 4), (1, 4, 1)])
def test_reused_mask_shared_by_blocked_and_whole_matrix_calls(monkeypatch, order):
    """A prefill (4 rows: the whole-matrix steps) and decode steps (1 row: blocks) share one reused mask,
    whichever drew it: the same shares and ledger as without blocks."""
    out = []
    for enabled in (False, True):
        monkeypatch.setattr(blocked, "ENABLED", enabled)
        m, zs = _reused_products(monkeypatch, order)
        out.append((zs, m.ledger.frame()))
    assert all(torch.equal(a, b) for a, b in zip(out[0][0], out[1][0]))
    assert out[0][1].equals(out[1][1])


def test_blocked_path_taken_and_cost_formula(monkeypatch):
    calls = []
    real = blocked.few_rows_matmul
    monkeypatch.setattr(blocked, "few_rows_matmul", lambda x, y, key, **k: calls.append(1) or real(x, y, key, **k))
    m, x, w, _ = _product(monkeypatch, True, (1, 64), (64, 515), 600, calls=1)
    assert calls == [1]
    want = arith.matmul_cost(m, x.numel(), w.numel(), 515)
    assert m.ledger.cost_since() == want


@pytest.mark.parametrize("shape_x,shape_w,reuse,block", [
    ((4, 96), (96, 1536), False, 100),     # more than FEW_ROWS rows: the whole-matrix steps
    ((1, 8), (8, 16), False, 128),         # no larger than one block: the whole-matrix steps
])
def test_blocked_applies_only_to_few_row_products(monkeypatch, shape_x, shape_w, reuse, block):
    monkeypatch.setattr(blocked, "BLOCK_ELEMENTS", block)
    m = MPC(EngineConfig(reuse_weight_masks=reuse), seed=1, mode="exact")
    x, w = m.share(torch.randn(*shape_x)), m.register_weight(m.share(torch.randn(*shape_w)))
    called = []
    monkeypatch.setattr(blocked, "few_rows_matmul", lambda *a, **k: called.append(1))
    arith.matmul(x, w)
    assert not called
    cost = MPC(EngineConfig(), seed=1, mode="cost")
    assert matmul.beaver_strategy(cost.share(torch.empty(1, 96, device="meta")),
                                  cost.share(torch.empty(96, 1536, device="meta"))) == "whole"


def test_block_rows_even_words():
    for k, n in [(77, 3001), (576, 960), (5, 7), (1, 3)]:
        h = blocked.block_rows(k, n)
        assert 1 <= h <= k and (h == k or (h * n) % 2 == 0)


def test_odd_word_blocks_would_change_the_shares(monkeypatch):
    """Positive control: blocks of an odd number of words read other stream words (each read skips the
    rest of its last 16-byte AES block), so the bit-for-bit test above can fail."""
    _, _, _, ref = _product(monkeypatch, False, (1, 64), (64, 515), 600)
    monkeypatch.setattr(blocked, "block_rows", lambda k, n: 1)   # 515 words per block: odd
    _, _, _, got = _product(monkeypatch, True, (1, 64), (64, 515), 600)
    assert not torch.equal(ref[0].data, got[0].data)


def test_c_before_the_blocks_is_refused():
    m = MPC(EngineConfig(), seed=1, mode="exact")
    t = m.dealer.blocked_matmul_triple((1, 4), (4, 6), 2)
    with pytest.raises(RuntimeError, match="before every block"):
        t.c()


@pytest.mark.parametrize("R,h,n", [(1, 7, 1029), (3, 5, 512), (2, 1, 3)])
@pytest.mark.parametrize("mode", ["open", "open_keep", "kept_f"])
def test_block_kernels_agree_bit_for_bit(monkeypatch, R, h, n, mode):
    """The numba kernel and the torch one: the same c and z over full-range ring words (wrap-around)."""
    from comet_core.mpc import blockkernel

    if not blockkernel.available():
        pytest.skip("numba is not installed")
    g = torch.Generator().manual_seed(R * 100 + h)
    w = lambda *s: torch.randint(-2 ** 63, 2 ** 63 - 1, s, generator=g, dtype=torch.int64)  # noqa: E731
    b, av, e, ea, y, f = w(2, h, n), w(R, h), w(R, h), w(2, R, h), w(2, h, n), w(h, n)
    c0, z0 = w(R, n), w(2, R, n)   # accumulators start from arbitrary words
    outs = []
    for kernel in ("numba", "torch"):
        if kernel == "torch":
            monkeypatch.setattr(blockkernel, "USE_NUMBA", False)
        c, z = c0.clone(), z0.clone()
        f_out = torch.zeros(h, n, dtype=torch.int64) if mode == "open_keep" else None
        blockkernel.block_products(b, av, e, ea, c, z, y=None if mode == "kept_f" else y,
                                   f=f if mode == "kept_f" else None, f_out=f_out)
        outs.append((c, z, f_out))
    (c1, z1, fo1), (c2, z2, fo2) = outs
    assert torch.equal(c1, c2) and torch.equal(z1, z2)
    assert not torch.equal(c1, c0) and not torch.equal(z1, z0)
    fv = f if mode == "kept_f" else (y[0] - b[0]) + (y[1] - b[1])
    assert torch.equal(z1 - z0, torch.stack([e @ b[p] + ea[p] @ fv for p in range(2)]))   # the formula
    if mode == "open_keep":
        assert torch.equal(fo1, fv) and torch.equal(fo2, fv)


def test_blocked_equals_unblocked_with_the_torch_kernel(monkeypatch):
    """Without numba (the fallback), the same shares and ledger too."""
    from comet_core.mpc import blockkernel

    monkeypatch.setattr(blockkernel, "USE_NUMBA", False)
    m0, x, w, ref = _product(monkeypatch, False, (2, 96), (96, 1536), 4096, reuse=True, calls=3)
    m1, x, w, got = _product(monkeypatch, True, (2, 96), (96, 1536), 4096, reuse=True, calls=3)
    assert all(torch.equal(r.data, z.data) for r, z in zip(ref, got))
    assert m0.ledger.frame().equals(m1.ledger.frame())


def test_a_kernel_that_does_not_compile_falls_back_to_torch(monkeypatch, caplog):
    from comet_core.mpc import blockkernel

    if not blockkernel.available():
        pytest.skip("numba is not installed")

    import numba

    blockkernel._numba_kernel()   # numba imported, as after a first block

    def broken(*a):
        raise numba.core.errors.TypingError("no implementation here")

    monkeypatch.setattr(blockkernel, "_block_numba_call", broken)
    monkeypatch.setattr(blockkernel, "_broken", False)
    m0, x, w, ref = _product(monkeypatch, False, (1, 64), (64, 515), 600)
    with caplog.at_level("WARNING", logger="comet_core.mpc.blockkernel"):
        m1, x, w, got = _product(monkeypatch, True, (1, 64), (64, 515), 600)
    assert all(torch.equal(r.data, z.data) for r, z in zip(ref, got))
    assert "did not compile" in caplog.text and blockkernel._broken


@pytest.mark.parametrize("order", [(4, 1, 1, 4), (1, 4, 1), (1, 1, 1)])
def test_streamed_masks_equal_masks_kept_in_memory(monkeypatch, order):
    """Kept masks read again from the dealer's streams at each use (dealer.StreamMask, the default on the
    CPU) give the same shares and ledger as masks kept as tensors, through whole-matrix (4 rows) and blocked
    (1 row) calls, whichever drew them; the dealer then holds no mask tensor (positive control:
    KEEP_MASKS_IN_MEMORY keeps one)."""
    from comet_core.mpc import weight_masks as D

    out = []
    for keep in (True, False):
        monkeypatch.setattr(D, "KEEP_MASKS_IN_MEMORY", keep)
        m, zs = _reused_products(monkeypatch, order)
        held = [type(e[0]).__name__ for e in m.dealer._reused.values()]
        opened = [type(v).__name__ for v in m.weight_masks.values()]
        out.append((zs, m.ledger.frame(), held, [e[1] for e in m.dealer._reused.values()], opened))
    assert all(torch.equal(a, b) for a, b in zip(out[0][0], out[1][0]))
    assert out[0][1].equals(out[1][1])
    assert out[0][2] == ["AShare"] and out[1][2] == ["StreamMask"] and out[1][3] == [None]
    assert out[0][4] == ["Tensor"] and out[1][4] == ["Reopened"]          # the parties' f: kept, or computed again


def test_a_weight_changed_after_its_opening_is_refused(monkeypatch):
    """A streamed opening is f of the weight as opened: a weight changed in place since is refused, not
    multiplied with a wrong f (positive control: the unchanged weight's second product runs)."""
    from comet_core.mpc import weight_masks as D

    monkeypatch.setattr(D, "KEEP_MASKS_IN_MEMORY", False)
    m = MPC(EngineConfig(reuse_weight_masks=True), seed=4, mode="exact")
    g = torch.Generator().manual_seed(2)
    w = m.register_weight(m.share(torch.randn(40, 77, generator=g) * 0.1, owner="model_owner"))
    for _ in range(2):
        arith.matmul(m.share(torch.randn(1, 40, generator=g)), w)
    w.data[0, 0, 0] += 1
    with pytest.raises(RuntimeError, match="changed in place"):
        arith.matmul(m.share(torch.randn(1, 40, generator=g)), w)


def test_generation_with_streamed_masks_equals_kept_masks(monkeypatch):
    """A tiny-llama generation (the embedding and LM head reuse their masks within the request): the same
    tokens, logits and ledger whether the dealer keeps those masks as tensors or reads them again."""
    from hydra import compose, initialize_config_dir

    from comet_core.mpc import weight_masks as D
    from experiments.run import execute

    conf = str(__import__("pathlib").Path(__file__).resolve().parent.parent / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny-llama", "gen_tokens=3", "prompt=To be", "seed=2",
                                           "save_ledger=false"])
    got = []
    for keep in (True, False):
        monkeypatch.setattr(D, "KEEP_MASKS_IN_MEMORY", keep)
        o = execute(cfg)
        got.append((o.gen.tokens, [t.clone() for t in o.gen.logits], o.ledger))
    assert got[0][0] == got[1][0] and all(torch.equal(a, b) for a, b in zip(got[0][1], got[1][1]))
    assert got[0][2].equals(got[1][2])


def test_a_streamed_reused_mask_takes_the_blocks_for_more_rows(monkeypatch):
    """A reused mask that the dealer streams takes the blocks for a product of more than FEW_ROWS rows too (a
    prefill's embedding: b, b0 + b1 and f never whole), a fresh or kept-in-memory one does not (controls)."""
    from comet_core.mpc import weight_masks as D

    monkeypatch.setattr(blocked, "BLOCK_ELEMENTS", 500)
    for keep, reuse, want in ((False, True, "blocked"), (True, True, "whole"), (False, False, "whole")):
        monkeypatch.setattr(D, "KEEP_MASKS_IN_MEMORY", keep)
        m = MPC(EngineConfig(reuse_weight_masks=reuse), seed=1, mode="exact")
        x, w = m.share(torch.randn(8, 40)), m.register_weight(m.share(torch.randn(40, 77)))
        assert matmul.beaver_strategy(x, w, reuse=reuse) == want, (keep, reuse)


@pytest.mark.parametrize("reuse", [False, True])
def test_a_transposed_weight_view_equals_its_contiguous_copy(monkeypatch, reuse):
    """A tied embedding is the LM head's shares seen transposed (models/weights.py): the blocks gather its
    rows, giving the same shares and ledger as the same weight stored contiguously (fresh and reused
    masks, the second product of a reused one from its streamed opening); controls: the view is not
    contiguous and the blocked path ran."""
    monkeypatch.setattr(blocked, "BLOCK_ELEMENTS", 500)
    out = []
    for transposed in (False, True):
        m = MPC(EngineConfig(reuse_weight_masks=reuse), seed=6, mode="exact")
        g = torch.Generator().manual_seed(3)
        head = m.share(torch.randn(40, 77, generator=g) * 0.1, owner="model_owner")    # (d, V)
        w = head.transpose(0, 1) if transposed else type(head)(head.data.transpose(1, 2).contiguous(), m, head.frac)
        w = m.register_weight(w)                                                          # (V, d)
        assert w.data.is_contiguous() != transposed
        xs = [m.share(torch.randn(1, 77, generator=g)) for _ in range(3)]
        assert matmul.beaver_strategy(xs[0], w, reuse=reuse) == "blocked"
        zs = [arith.matmul(x, w) for x in xs]
        out.append(([z.data for z in zs], m.ledger.frame(), m, xs, w, zs[-1]))
    assert all(torch.equal(a, b) for a, b in zip(out[0][0], out[1][0]))
    assert out[0][1].equals(out[1][1])
    _, _, m, xs, w, z = out[1]
    plain = m.secret(xs[2]).double() / 2 ** xs[2].frac @ (m.secret(w).double() / 2 ** w.frac)
    assert (m.secret(z).double() / 2 ** z.frac - plain).abs().max() < 2 ** -10
