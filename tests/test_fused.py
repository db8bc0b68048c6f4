"""Fewer, larger operations (comet_core/systems/fused.py): fused [W_q | W_k | W_v] and [W_gate | W_up]
matmuls, RoPE and 1/sqrt(hd) in one truncation, the scores shift. The dense layer's cost formulas are
pinned against the ledger (exact and cost mode), the rounds per operator are counted, the outputs equal
the float64 reference, and the fused weights share the originals' storage."""

from __future__ import annotations

import pytest
import torch

from comet_core.models.reference import PlainCache, PlainDecoder
from comet_core.models.secure import KVCache
from comet_core.models.weights import PlainWeights
from comet_core.mpc.engine import MPC, EngineConfig
from comet_core.mpc.shape import Shape
from comet_core.systems import fused
from comet_core.systems.dense import DenseSystem, dense_attention_cost, dense_ffn_cost


class _Dec:
    def __init__(self, meta, family):
        self.meta, self.family = meta, family


def _layer(family: str, d: int, H: int, Hkv: int, hd: int, F: int, seed: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64) * 0.3  # noqa: E731
    lw = dict(wq=r(d, H * hd), wk=r(d, Hkv * hd), wv=r(d, Hkv * hd), wo=r(H * hd, d))
    if family == "opt":
        lw.update(bq=r(H * hd), bk=r(Hkv * hd), bv=r(Hkv * hd), bo=r(d), w1=r(d, F), b1=r(F), w2=r(F, d), b2=r(d))
    else:
        lw.update(w_gate=r(d, F), w_up=r(d, F), w_down=r(F, d))
    return lw


def _share(m: MPC, lw: dict) -> dict:
    if m.is_cost:
        return {k: m.register_weight(m.share(Shape(tuple(v.shape), torch.float32))) for k, v in lw.items()}
    return {k: m.register_weight(m.share(v)) for k, v in lw.items()}


@pytest.mark.parametrize("mode", ["exact", "cost"])
@pytest.mark.parametrize("family, H, Hkv, hd, relu_bits", [("opt", 4, 4, 4, 64), ("opt", 2, 2, 8, 12),
                                                           ("llama", 4, 2, 4, 64), ("llama", 2, 1, 8, 64)])
def test_dense_layer_costs_pinned_and_outputs_equal_reference(family, H, Hkv, hd, relu_bits, mode):
    """Per step (prefill of 3, then 2 decode tokens, masks reused): the attention and the FFN cost
    exactly dense_attention_cost / dense_ffn_cost; q, k, v take one matmul (2 rounds), RoPE and the
    scaling one round (none for OPT with a power-of-four hd), gate and up one matmul; the outputs
    equal the float64 reference (and the ledgers of both modes agree, as the formulas are shared); one OPT
    case with the ReLU's sign test on Z_2^12 (engine.relu_bits)."""
    d, F = 16, 24
    act = "relu" if family == "opt" else "silu"
    m = MPC(EngineConfig(reuse_weight_masks=True, relu_bits=relu_bits), seed=5, mode=mode)
    plain = _layer(family, d, H, Hkv, hd, F)
    lw = _share(m, plain)
    meta = dict(num_heads=H, num_kv_heads=Hkv, head_dim=hd, rope_theta=10000.0, act=act, eps=1e-5)
    sysm, dec = DenseSystem(), _Dec(meta, family)
    ref = PlainDecoder(PlainWeights(family, [plain], {}, meta), sysm)
    cache, pcache = KVCache(1), PlainCache(1)
    g = torch.Generator().manual_seed(9)
    start = 0
    with m.inference():
        for step, T in enumerate((3, 1, 1)):
            xp = torch.randn(T, d, generator=g, dtype=torch.float64)
            x = m.share(Shape((T, d), torch.float32) if m.is_cost else xp)
            mark = m.ledger.mark()
            out = sysm.attention(dec, x, lw, 0, cache, start)
            att = m.ledger.cost_since(mark)
            rows = m.ledger.rows[mark[0]:]
            ops = {r[3] for r in rows}
            assert not ops & {"attn.q", "attn.k", "attn.v"}
            rounds = {op: len({r[10] for r in rows if r[3] == op and r[0] == "online"}) for op in ops}
            assert rounds["attn.qkv"] == 2
            assert rounds.get("attn.rope", 0) == (1 if family == "llama" else 0)
            assert rounds.get("attn.scale", 0) == (1 if family == "opt" and hd == 8 else 0)
            expect = dense_attention_cost(m, T, start + T, d, H, Hkv, hd, family == "llama", reused=step > 0)
            assert att == expect, (step, att, expect)
            mark = m.ledger.mark()
            y = sysm.ffn(x, lw, meta, 0)
            assert m.ledger.cost_since(mark) == dense_ffn_cost(m, T, d, F, act, reused=step > 0)
            ffn_ops = {r[3] for r in m.ledger.rows[mark[0]:]}
            assert ("ffn.gate_up" in ffn_ops) == (family == "llama") and not ffn_ops & {"ffn.gate", "ffn.up"}
            if not m.is_cost:
                want = ref.attention(xp, plain, 0, pcache, start)
                assert torch.allclose(m.peek(out), want, atol=2e-2), (m.peek(out) - want).abs().max()
                assert torch.allclose(m.peek(y), sysm.plain_ffn(xp, plain, meta, 0), atol=2e-2)
            cache.positions += T
            start += T


def test_fused_weights_are_views_registered_once():
    """The fused weight holds the parts side by side; the parts become views of its storage (no extra
    memory) and a second call returns the same registered weight."""
    m = MPC(seed=1)
    plain = _layer("opt", 8, 2, 2, 4, 12)
    lw = _share(m, plain)
    w = fused.fused_weight(m, lw, "wqkv", ("wq", "wk", "wv"))
    b = fused.fused_bias(m, lw, "bqkv", ("bq", "bk", "bv"))
    assert w.uid is not None and tuple(w.shape) == (8, 24) and tuple(b.shape) == (24,)
    assert fused.fused_weight(m, lw, "wqkv", ("wq", "wk", "wv")) is w
    for k, o in (("wq", 0), ("wk", 8), ("wv", 16)):
        assert lw[k].data.untyped_storage().data_ptr() == w.data.untyped_storage().data_ptr()
        assert torch.allclose(m.peek(lw[k]), plain[k], atol=1e-4)
        assert torch.equal(m.peek(w)[:, o:o + 8], m.peek(lw[k]))
    assert fused.fused_bias(m, {"bq": lw["bq"]}, "bqkv", ("bq", "bk", "bv")) is None


def test_score_shift_and_rope_scale_match_plaintext():
    assert [fused.score_shift(h) for h in (1, 4, 8, 16, 32, 64, 128, 256)] == [0, 1, None, 2, None, 3, None, 4]
    from comet_core.models.reference import _rotate_half
    from comet_core.models.secure import rope_tables

    m = MPC(seed=2)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(3, 5, 8, generator=g, dtype=torch.float64), torch.randn(2, 4, 8, generator=g, dtype=torch.float64)
    pq, pk = torch.arange(2, 7), torch.tensor([0, 1, 5, 6])
    mark = m.ledger.mark()
    sq, sk, empty = fused.rope_scale([(m.share(q), pq, 0.25), (m.share(k), pk, 1.0),
                                      (m.share(torch.zeros(0, 4, 8)), pk, 1.0)], 8, 10000.0)
    rows = m.ledger.rows[mark[0]:]
    assert len({r[10] for r in rows if r[0] == "online"}) == 1 and tuple(empty.shape) == (0, 4, 8)
    for t, pos, fac, s in ((q, pq, 0.25, sq), (k, pk, 1.0, sk)):
        cos, sin = rope_tables(pos, 8, 10000.0)
        assert torch.allclose(m.peek(s), (t * cos + _rotate_half(t) * sin) * fac, atol=1e-4)


@pytest.mark.parametrize("mode", ["exact", "cost"])
@pytest.mark.parametrize("n", [2, 3, 5, 40])
def test_max_pairs_equals_max_in_17_rounds(n, mode):
    """All pairs in one tree: the row maxima exactly (ties included: the first maximum is selected
    once), cost pinned, 17 rounds for any n (the tournament: 9 ceil(log2 n))."""
    from comet_core.mpc import compare, pairmax

    m = MPC(seed=3, mode=mode)
    g = torch.Generator().manual_seed(n)
    x = torch.round(torch.randn(2, 3, n, generator=g, dtype=torch.float64) * 4) / 4   # ties likely
    x[0, 0, :] = 1.5                                                                     # all equal
    mark = m.ledger.mark()
    out = pairmax.max_pairs(m.share(Shape((2, 3, n), torch.float32) if m.is_cost else x))
    cost = m.ledger.cost_since(mark)
    assert cost == pairmax.max_pairs_cost(m, 6, n) and cost.rounds == 17
    assert compare.max_along_cost(m, 6, 40).rounds == 54
    assert tuple(out.shape) == (2, 3, 1)
    if not m.is_cost:
        assert torch.allclose(m.peek(out), x.max(-1, keepdim=True).values, atol=2 ** -15)


def test_softmax_chooses_pairs_for_short_rows_only():
    """The engine's softmax (every system's exact softmax): pairs for a decode step's rows (SmolLM2-135M:
    9 heads x 40 positions), the tournament for a prefill's (288 rows of 32) or one long row; equal to the
    float softmax; cost pinned either way."""
    from comet_core.mpc import compare, nonlinear as nl, pairmax
    from comet_core.mpc import ideal

    assert pairmax.use_pairs(9, 40) and not pairmax.use_pairs(288, 32) and not pairmax.use_pairs(1, 512)
    assert not pairmax.use_pairs(9, 2)
    m = MPC(seed=4)
    g = torch.Generator().manual_seed(1)
    for shape, mask in (((9, 1, 40), None), ((2, 3, 6), (torch.arange(6)[None, :] <= torch.arange(3, 6)[:, None]).long())):
        x = torch.randn(*shape, generator=g, dtype=torch.float64) * 3
        rows = x.numel() // shape[-1]
        mark = m.ledger.mark()
        y = nl.softmax(m.share(x), -1, mask)
        assert m.ledger.cost_since(mark) == nl.softmax_cost(m, rows, shape[-1])
        assert torch.allclose(m.peek(y), ideal.plain_softmax(x, mask), atol=1e-2)
    tree = MPC(EngineConfig(max_method="tree"), seed=4)
    assert nl.softmax_cost(m, 9, 40).rounds == nl.softmax_cost(tree, 9, 40).rounds - 54 + 17
    assert nl.softmax_cost(m, 288, 32) == nl.softmax_cost(tree, 288, 32)
    assert compare.max_along_cost(tree, 9, 40).rounds == 54


@pytest.mark.parametrize("mode", ["exact", "cost"])
@pytest.mark.parametrize("rows, n", [(1, 256), (1, 3000), (3, 7), (2, 2)])
def test_argmax_last_equals_torch_argmax(rows, n, mode):
    """Tournament levels, then all pairs: the first maximum's index (ties included), cost pinned; fewer
    rounds than compare.argmax (a byte vocabulary: 17 instead of 72)."""
    from comet_core.mpc import compare, pairmax

    m = MPC(seed=7, mode=mode)
    g = torch.Generator().manual_seed(n)
    x = torch.round(torch.randn(rows, n, generator=g, dtype=torch.float64) * 2) / 2       # many ties
    mark = m.ledger.mark()
    out = pairmax.argmax_last(m.share(Shape((rows, n), torch.float32) if m.is_cost else x))
    cost = m.ledger.cost_since(mark)
    assert cost == pairmax.argmax_last_cost(m, rows, n)
    assert cost.rounds <= compare.argmax_cost(m, rows, n).rounds
    if (rows, n) == (1, 256):
        assert cost.rounds == 17 and compare.argmax_cost(m, rows, n).rounds == 72
    if not m.is_cost:
        assert m.reveal(out).tolist() == x.argmax(-1).to(torch.float64).tolist()


def test_secure_argmax_rounds_smollm2_vocabulary():
    """SmolLM2-135M's 49,152 logits: 8 tournament levels, then pairs over the 192 survivors."""
    from comet_core.mpc import compare, pairmax

    m = MPC(seed=0, mode="cost")
    assert pairmax.argmax_last_cost(m, 1, 49152).rounds == 8 * 9 + 17
    assert compare.argmax_cost(m, 1, 49152).rounds == 16 * 9


@pytest.mark.parametrize("method", ["tree", "pairs", "auto"])
def test_engine_max_method_selects_the_max_protocol(method):
    """engine.max_method: tree = the tournament everywhere (the earlier ledger), pairs = all pairs even
    past the budget, auto = pairs within it; the softmax and argmax follow it; exact either way."""
    from comet_core.mpc import compare, nonlinear as nl, pairmax

    m = MPC(EngineConfig(max_method=method), seed=2)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 1, 40, generator=g, dtype=torch.float64) * 3       # a decode step's scores
    mark = m.ledger.mark()
    y = pairmax.max_last(m.share(x))
    cost = m.ledger.cost_since(mark)
    tree, pairs = compare.max_along_cost(m, 9, 40), pairmax.max_pairs_cost(m, 9, 40)
    assert cost == (tree if method == "tree" else pairs)
    assert cost == pairmax.max_last_cost(m, 9, 40)
    assert torch.equal(m.peek(y), m.peek(m.share(x.max(-1, keepdim=True).values)))
    big = pairmax.max_last_cost(m, 288, 32)                                   # a prefill: over the budget
    assert big == (pairmax.max_pairs_cost(m, 288, 32) if method == "pairs" else compare.max_along_cost(m, 288, 32))
    arg = pairmax.argmax_last_cost(m, 1, 256)
    assert arg.rounds == (compare.argmax_cost(m, 1, 256).rounds if method == "tree" else 17)
    from comet_core.mpc import arith   # the softmax takes the same maximum
    assert nl.softmax_cost(m, 9, 40) == cost + nl.exp_cost(m, 360) + nl.reciprocal_cost(m, 9) \
        + arith.mul_cost(m, 360, 9, 360)


def test_engine_max_method_rejects_unknown_names():
    from comet_core.errors import ConfigError

    with pytest.raises(ConfigError, match="max_method must be one of auto, tree, pairs"):
        EngineConfig(max_method="bitonic")
