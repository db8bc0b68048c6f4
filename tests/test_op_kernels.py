"""The per-op kernels' local work (issue 15): the comparison tree's leaf order and half splits, fused
openings, in-place Beaver steps, blocked range checks and the PRG's direct writes.

Each change keeps the protocol's messages, dealer items and stream reads; these tests pin what the
faster code must still do (exact results at awkward sizes, words dense from bit 0 as the wire packs
them, the same keystream, range errors still raised) with a plain reference beside each.
"""

from __future__ import annotations

import pytest
import torch

from comet_core.comm.channel import QueuePipe
from comet_core.comm.wire import decode, encode
from comet_core.errors import RangeError
from comet_core.mpc import arith, compare, ring
from comet_core.mpc.engine import MPC, EngineConfig
from comet_core.mpc.parties import run_pair
from comet_core.mpc.prg import PRG, SMALL_READ

SIZES = (1, 2, 3, 7, 63, 64, 65, 129, 1000)


def _bits(x: torch.Tensor) -> torch.Tensor:
    return (x.unsqueeze(-1) >> torch.arange(64)) & 1


def _rev3(p: int) -> int:
    return ((p & 1) << 2) | (p & 2) | (p >> 2)


def test_leaf_order_is_the_documented_bit_permutation():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-2 ** 63, 2 ** 63 - 1, (500,), generator=g, dtype=torch.int64)
    y = ring.leaf_order(x)
    src = torch.tensor([8 * (q % 8) + [_rev3(t) for t in range(8)].index(q // 8) for q in range(64)])
    assert sorted(src.tolist()) == list(range(64)) and int(src[63]) == 63   # a bijection; bit 63 fixed
    assert torch.equal(_bits(y), _bits(x)[:, src])       # bit 8B + p of x is bit 8 rev3(p) + B of y
    z = torch.randint(-2 ** 63, 2 ** 63 - 1, (500,), generator=g, dtype=torch.int64)
    assert torch.equal(ring.leaf_order(x ^ z), y ^ ring.leaf_order(z))   # linear over XOR: share-wise


@pytest.mark.parametrize("w", [32, 16, 8])
def test_and_of_strided_halves_gives_dense_words(w):
    """The tree's byte-aligned levels hand the AND gate strided int32/int16/int8 halves; its result is
    their AND packed densely, element after element, in int64 words (what the next level and the wire read)."""
    dt = compare._HALF_DTYPES[w]
    g = torch.Generator().manual_seed(w)
    mpc = MPC(EngineConfig(), seed=w, mode="exact")
    words = 3
    full = [torch.randint(-2 ** 63, 2 ** 63 - 1, (2, 2 * words), generator=g, dtype=torch.int64) for _ in range(2)]
    left, right = (f.view(dt)[:, 1::2] for f in full)            # every other unit: strided, (2, 64/w * words)
    (out,) = compare._and_shared_left(mpc, left, [right], left.shape[-1], w)
    want = ((left[0] ^ left[1]) & (right[0] ^ right[1])).contiguous().view(torch.int64)
    assert out.shape == (2, words) and torch.equal(out[0] ^ out[1], want)


def _values(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64) * 100
    edge = torch.tensor([0.0, -2.0 ** -16, 2.0 ** -16, -1.0, 2.0 ** 40, -2.0 ** 40, -(2.0 ** 45)], dtype=torch.float64)
    x[:min(n, len(edge))] = edge[:n]
    return x


@pytest.mark.parametrize("n", SIZES)
def test_ltz_exact_at_awkward_sizes(n):
    mpc = MPC(EngineConfig(frac_bits=16), seed=n, mode="exact")
    x = _values(n, n)
    got = mpc.reveal(compare.ltz(mpc.share(x)))
    assert torch.equal(got, (x < 0).to(got.dtype))


class _PackingPipe(QueuePipe):
    """An in-memory pipe that sends what a TCP link sends: every message through wire.encode/decode, packed
    words cut to their ledger width (the receiver zero-fills the rest)."""

    packs = True

    def send(self, obj, bits=None, packed=None) -> int:
        if isinstance(obj, BaseException):
            self.send_q.put(obj)
            return 0
        enc = encode(obj, bits=bits, packed=packed)
        self.send_q.put(decode(enc.body)[0])
        return enc.payload

    @staticmethod
    def pair(timeout_s: float = 120.0):
        import queue

        a, b = queue.Queue(), queue.Queue()
        return _PackingPipe(a, b, timeout_s), _PackingPipe(b, a, timeout_s)


@pytest.mark.parametrize("n", [1, 3, 65, 130])
def test_ltz_over_packed_words_as_the_wire_sends_them(n, monkeypatch):
    """Every tree level's AND operands are dense from bit 0 (packed=n fields of w bits): cut to their ledger
    width on the way, the results stay exact."""
    monkeypatch.setattr(QueuePipe, "pair", staticmethod(_PackingPipe.pair))
    x = _values(n, 100 + n)

    def fn(mpc):
        return mpc.reveal(compare.relu(mpc.share(x)))

    r0, _, mpcs = run_pair(fn, EngineConfig(frac_bits=16), seed=5)
    assert isinstance(mpcs[0].channel.pipe, _PackingPipe)
    assert torch.allclose(r0, x.clamp_min(0), atol=2 ** -15)


def test_open_masked_equals_open_of_the_difference_and_books_the_same():
    g = torch.Generator().manual_seed(1)
    a = MPC(EngineConfig(), seed=1, mode="exact")
    b = MPC(EngineConfig(), seed=1, mode="exact")
    x, m = (torch.randint(-2 ** 63, 2 ** 63 - 1, (2, 5, 7), generator=g, dtype=torch.int64) for _ in range(2))
    u, v = (torch.randint(0, 2 ** 20, (2, 9), generator=g, dtype=torch.int64) for _ in range(2))
    (got,) = a.open_masked((x, m))
    (want,) = b.open_raw([x - m])
    assert torch.equal(got, want)
    (got,) = a.open_masked((u, v), bits=3, xor=True, packed=40)
    (want,) = b.open_raw([u ^ v], 3, xor=True, packed=40)
    assert torch.equal(got, want)
    assert a.ledger.rows == b.ledger.rows


def test_range_checks_in_blocks_still_name_the_offending_value(monkeypatch):
    monkeypatch.setattr(arith, "_ABS_BLOCK", 5)   # several blocks, a short last one
    mpc = MPC(EngineConfig(frac_bits=16, truncation="dealer"), seed=2, mode="exact")
    x = torch.zeros(23, dtype=torch.float64)
    x[17] = 3.0e13                                  # |x| 2^16 > 2^62 / 2^16 ... beyond the product range
    s = mpc.share(x)
    assert arith._secret_abs_max(s.data) == round(3.0e13 * 2 ** 16)
    lo, hi = arith._secret_minmax(mpc.share(-x).data)
    assert (lo, hi) == (-round(3.0e13 * 2 ** 16), 0)
    with pytest.raises(RangeError):
        arith.mul(s, s)
    big = torch.zeros(23, dtype=torch.float64)
    big[19] = -2.0 ** 45                           # 2^45 * 2^16 is inside the ring but beyond truncation's 2^62?
    arith.check_ring_range(mpc.share(big))          # 2^61: inside, no error
    with pytest.raises(RangeError):
        arith.check_ring_range(mpc.share(big).mul_int(4))   # 2^63 wraps: caught


def test_abs_max_is_remembered_only_while_the_tensor_is_unchanged():
    mpc = MPC(EngineConfig(frac_bits=16), seed=3, mode="exact")
    w = mpc.share(torch.full((300, 300), 2.0, dtype=torch.float64))
    assert arith._abs_max(mpc, w) == 2.0
    w.data[0, 0, 0] += 5 << 16                      # in place: the version counter moves
    assert arith._abs_max(mpc, w) == 7.0


@pytest.mark.parametrize("words", [1, 2, 3, SMALL_READ // 8, SMALL_READ // 8 + 1, 131071, 131073, 300001])
def test_prg_direct_writes_give_the_stream_read_at_once(words):
    key = bytes(range(16))
    whole = PRG(key).bytes(8 * (words + 5))
    p = PRG(key)
    first = p.fill_(torch.empty(words, dtype=torch.int64))
    second = p.ring((5,))
    assert first.numpy().tobytes() == bytes(whole[:8 * words])
    blocks = -(-8 * words // 16)   # the counter advances by whole blocks
    assert p.block == blocks + 3
    assert second.numpy().tobytes() == bytes(PRG(key).bytes(16 * blocks + 40)[16 * blocks:16 * blocks + 40])

