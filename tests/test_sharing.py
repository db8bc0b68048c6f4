"""Blocked input sharing (comet_core/mpc/sharing.py): the same shares, bit for bit, as the unblocked
steps (encode, one draw of r, stack (r, enc - r)) for any block size, shape, layout and destination, and
the stream left where one draw leaves it."""

from __future__ import annotations

import pytest
import torch

from comet_core.errors import CometError
from comet_core.mpc import ring
from comet_core.mpc.prg import PRG
from comet_core.mpc.sharing import share_into

KEY = bytes(range(16))


def _unblocked(x: torch.Tensor, frac: int, gen: PRG) -> torch.Tensor:
    enc = ring.encode(x, frac)
    r = ring.random_ring(enc.shape, gen, "cpu")
    return torch.stack([r, enc - r])


def _x(shape, transposed=False, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape[::-1] if transposed else shape, generator=g, dtype=dtype) * 300
    return x.t() if transposed else x


CASES = [((37, 11), False), ((37, 11), True), ((11, 37), True), ((7,), False), ((1, 1), True), ((),  False),
         ((3, 5, 7), False), ((64, 33), True), ((2, 3, 5), "permuted")]


@pytest.mark.parametrize("shape,layout", CASES)
@pytest.mark.parametrize("block", [2, 4, 6, 16, 36, 1 << 18])
def test_blocked_equals_unblocked(shape, layout, block):
    if layout == "permuted":
        x = _x((5, 3, 2)).permute(2, 1, 0)
    else:
        x = _x(shape, transposed=bool(layout))
    x0 = x.clone()
    a, b = PRG(KEY), PRG(KEY)
    got = share_into(x, 16, a, block=block)
    assert torch.equal(got, _unblocked(x, 16, b)) and got.is_contiguous() and torch.equal(x, x0)
    assert a.block == b.block and torch.equal(a.ring((3,)), b.ring((3,)))   # the stream advanced as far


def test_rows_wider_than_a_block_and_odd_rows():
    """Rows of odd width wider than the block (blocks of two rows keep every block an even word count)."""
    x = _x((9, 13), transposed=True)
    a, b = PRG(KEY), PRG(KEY)
    assert torch.equal(share_into(x, 16, a, block=4), _unblocked(x, 16, b))


def test_into_a_column_slice_of_a_larger_buffer():
    """`out` a strided view (the columns of a fused weight): r goes through a scratch block; the other
    columns stay untouched."""
    xs = [_x((10, 7), transposed=True, seed=s) for s in range(3)]
    buf = torch.full((2, 10, 21), 123, dtype=torch.int64)
    a, b = PRG(KEY), PRG(KEY)
    share_into(xs[0], 16, a, out=buf[:, :, 0:7], block=6)
    share_into(xs[1], 16, a, out=buf[:, :, 7:14], block=1 << 18)
    want = [_unblocked(x, 16, b) for x in xs[:2]]
    assert torch.equal(buf[:, :, 0:7], want[0]) and torch.equal(buf[:, :, 7:14], want[1])
    assert bool((buf[:, :, 14:] == 123).all())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtypes_and_rounding_ties(dtype):
    x = _x((5, 9), dtype=torch.float64).to(dtype)
    if dtype == torch.float64:
        x[0, 0], x[0, 1] = 0.5 + 2.0 ** -17, 0.5 + 3 * 2.0 ** -17   # ties at frac_bits 16: round to even
    a, b = PRG(KEY), PRG(KEY)
    assert torch.equal(share_into(x, 16, a, block=8), _unblocked(x, 16, b))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1e30])
def test_a_value_in_a_later_block_is_refused_with_encodes_message(bad):
    x = torch.zeros(4, 10)
    x[3, 7] = bad
    with pytest.raises(CometError) as blocked:
        share_into(x, 16, PRG(KEY), block=4)
    with pytest.raises(CometError) as plain:
        ring.encode(x, 16)
    assert str(blocked.value) == str(plain.value) and "element 37" in str(blocked.value)


def _plain_layers(family: str, n: int = 2, d: int = 6, F: int = 10, seed: int = 4):
    from comet_core.models.weights import PlainWeights

    g = torch.Generator().manual_seed(seed)
    r = lambda *s: (torch.randn(*s, generator=g) * 0.3).t() if len(s) == 2 else torch.randn(*s, generator=g)  # noqa: E731
    layers = []
    for _ in range(n):   # (in, out) weights as transposed views of (out, in), like extract()
        lw = dict(ln1_w=r(d), wq=r(d, d), wk=r(3, d), wv=r(3, d), wo=r(d, d))   # wk, wv: (d, 3), GQA-like
        if family == "opt":
            lw.update(bq=r(d), bk=r(3), bv=r(3), w1=r(F, d), b1=r(F), w2=r(d, F), b2=r(d))
        else:
            lw.update(w_gate=r(F, d), w_up=r(F, d), w_down=r(d, F))
        layers.append(lw)
    return PlainWeights(family, layers, dict(embed=torch.randn(11, d, generator=g)), {})


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_grouped_sharing_is_sharing_alone_then_a_view_join(family):
    """share_weights with the fused groups: the same shares, ledger rows, weight ids and stream as sharing
    every tensor alone; prepare's join is then a view of the shared buffer (no copy) equal to the cat."""
    from comet_core.models.weights import share_weights
    from comet_core.mpc.engine import MPC
    from comet_core.systems import fused

    pw = _plain_layers(family)
    a, b = MPC(seed=7), MPC(seed=7)
    wa, wb = share_weights(a, pw, groups=fused.LAYER_GROUPS), share_weights(b, pw)
    assert a.ledger.rows == b.ledger.rows
    for la, lb in zip(wa.layers + [wa.globals], wb.layers + [wb.globals]):
        assert la.keys() == lb.keys()
        for k in la:
            assert torch.equal(la[k].data, lb[k].data) and la[k].uid == lb[k].uid and la[k].frac == lb[k].frac
    ptr = {k: v.data.data_ptr() for k, v in wa.layers[0].items()}
    for la, lb in zip(wa.layers, wb.layers):
        fused.fuse_layer(a, la)
        fused.fuse_layer(b, lb)
        names = [n for n, parts in fused.LAYER_GROUPS if parts[0] in la]
        assert names == (["wqkv", "bqkv"] if family == "opt" else ["wqkv", "w_gate_up"])
        for n in names:
            assert torch.equal(la[n].data, lb[n].data) and la[n].uid == lb[n].uid and la[n].data.is_contiguous()
    for n, parts in fused.LAYER_GROUPS:   # a view of the buffer the parts were shared into: no copy
        if parts[0] in ptr:
            assert wa.layers[0][n].data.data_ptr() == ptr[parts[0]]
    assert torch.equal(a._input_gens["model_owner"].ring((4,)), b._input_gens["model_owner"].ring((4,)))


def test_adjacent_columns_refuses_what_is_not_one_buffer():
    from comet_core.systems.fused import adjacent_columns

    buf = torch.arange(2 * 3 * 7).reshape(2, 3, 7)
    a, b, c = buf[..., 0:2], buf[..., 2:5], buf[..., 5:7]
    assert torch.equal(adjacent_columns([a, b, c]), buf) and torch.equal(adjacent_columns([a, b]), buf[..., :5])
    assert adjacent_columns([b, a]) is None                       # out of order
    assert adjacent_columns([a, c]) is None                       # a gap
    assert adjacent_columns([a, buf.clone()[..., 2:5]]) is None   # another storage
    assert adjacent_columns([buf[:, :2, 0:2], buf[:, :2, 2:4]]) is not None
    assert adjacent_columns([a, buf[:, :2, 2:5]]) is None         # other leading shape
