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
