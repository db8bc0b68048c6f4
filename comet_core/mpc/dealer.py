"""The trusted dealer: all correlated randomness, booked as offline traffic.

The dealer shares a key with each party (dealer-P0, dealer-P1: prg.Keys), so any share that is itself
uniformly random costs nothing to deliver (both ends expand the same AES-CTR stream); only the
correction that makes the shares correlated is sent, always to P1. The dealer's own secrets (the
truncation and comparison masks, daBits) come from its private stream.
  * Beaver triple (a, b, c=a*b or a@b): P1 receives c1 = c - c0 -> numel(c) * 64 bits
  * square pair (a, a^2): numel * 64 bits
  * truncation triple (r, r >> f, r_63): 3 * numel * 64 bits (r itself is random, but P1's share
    of r must match the other two, so all three are corrections)
  * comparison mask r with arithmetic and bitwise (XOR) shares: numel * (64 + 64) bits
  * AND triples (a, b_i, a & b_i) of width w, n right operands: numel * n * w bits
  * daBit (a random bit as XOR and arithmetic share): numel * (64 + 1) bits
Every item is recorded in the ledger (phase `offline`, sender `dealer`, receiver `P1`).

On the CPU, items of up to SMALL elements per share are made in numpy (a decode step's comparisons,
truncations and products are of one to a few thousand elements, where torch's per-call overhead is most
of the time): the same stream reads, values and ledger rows as the torch code below them, bit for bit
(tests/test_bitexact_small.py pins both against the commit before the numpy path).

This class computes both parties' halves of every item. In simulation the engine holds both; a single
party gets only its own half through `parties.DealerView` (the dealer hands each party only its own
correlations).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from comet_core.mpc import ring
from comet_core.mpc.matmul import FEW_ROWS, ring_matmul, takes_digits
from comet_core.mpc.prg import PRG
from comet_core.mpc.weight_masks import StreamMask
from comet_core.mpc.ashare import AShare
from comet_core.mpc.shape import Shape
from comet_core.mpc.xp import NUMPY, TORCH

SMALL = 1 << 14   # items of up to this many elements per share are made in numpy (CPU): per-call overhead


# The ideal functionalities' plaintext functions (name -> f(x, **kwargs)), registered from above by
# mpc/ideal.py (so the dealer does not import the protocols that call it).
IDEAL_FUNCTIONS: dict = {}


def register_ideal_functions(functions: dict) -> None:
    IDEAL_FUNCTIONS.update(functions)


class Dealer:
    def __init__(self, mpc) -> None:   # mpc: the engine it deals for (mpc/engine.py MPC)
        self.mpc = mpc
        self.gen_p0 = mpc._generator("dealer", "P0", "correlations")   # P0's random halves
        self.gen_p1 = mpc._generator("dealer", "P1", "correlations")   # P1's random halves
        self.gen_own = mpc._generator("dealer", "dealer", "secrets")   # the dealer's own secrets
        self._reused: dict = {}  # reuse key -> [b share, b value or None]: weight masks kept for one inference
        self._perms: dict = {}   # permutation handle -> party-stacked (pi0, pi1)
        self._fss: dict = {}     # FSS comparison handle -> the mask r, until its last keys are made

    # -- helpers -------------------------------------------------------------------------------
    def _rand(self, shape, bits: int = 64, gen=None) -> torch.Tensor:
        return ring.random_bits(shape, bits, gen or self.gen_own, self.mpc.device)

    def _rand0(self, shape, bits: int = 64) -> torch.Tensor:
        return ring.random_bits(shape, bits, self.gen_p0, self.mpc.device)

    def _rand1(self, shape, bits: int = 64) -> torch.Tensor:
        return ring.random_bits(shape, bits, self.gen_p1, self.mpc.device)

    def _book(self, elements: int, bits: int, to: str = "P1", sender: str = "dealer") -> None:
        self.mpc.ledger.record("offline", sender, to, elements, bits, -1)

    def _direct(self) -> bool:
        """Whether shares are written straight into party-stacked buffers (CPU exact mode)."""
        return self.mpc.device.type == "cpu"

    def _stream_mask(self, shape_b) -> "StreamMask | None":
        """A kept mask about to be drawn from the streams (call before drawing): its StreamMask, where a
        reused mask need not stay in memory (CPU exact mode and matmul.streams_masks()); None: keep the
        tensor."""
        from comet_core.mpc import matmul

        if not self._direct() or len(shape_b) != 2 or not isinstance(self.gen_p0, PRG) or not matmul.streams_masks():
            return None
        return StreamMask(self, shape_b, 2 * self.gen_p0.block, 2 * self.gen_p1.block)

    def _tiny(self, shape) -> bool:
        """Whether an item of this shape takes the numpy path (CPU exact mode, at most SMALL elements):
        the same stream reads and values as the torch path, at a fraction of its per-call overhead
        (a decode step's comparisons, truncations and products are of one to a few thousand elements)."""
        return self.mpc.device.type == "cpu" and math.prod(shape) <= SMALL

    def _ns(self, *shapes):
        """The namespace (mpc/xp.py) of an item's CPU steps: NUMPY when every shape has at most SMALL
        elements, else TORCH; None off the CPU (CUDA, cost mode: the generic steps below them)."""
        if not self._direct():
            return None
        return NUMPY if all(self._tiny(s) for s in shapes) else TORCH

    @staticmethod
    def _buf(xp, shape) -> tuple[torch.Tensor, object]:
        """An int64 CPU tensor of `shape` and its view in namespace xp (the same memory)."""
        t = torch.empty(tuple(shape), dtype=torch.int64)
        return t, xp.arr(t)

    def _arith(self, value: torch.Tensor, frac: int = 0) -> AShare:
        """Additive shares of a correlated value: P0's from its seed, P1's is the correction."""
        if self._direct() and not value.is_meta:
            out = torch.empty((2, *value.shape), dtype=torch.int64)
            self.gen_p0.fill_(out[0])
            torch.sub(value, out[0], out=out[1])
            return AShare(out, self.mpc, frac)
        s0 = self._rand0(value.shape)
        return AShare(torch.stack([s0, value - s0]), self.mpc, frac)

    def _random_shares(self, shape) -> torch.Tensor:
        """(2, *shape): P0's and P1's halves from their dealer streams (free to deliver)."""
        if self._direct():
            a = torch.empty((2, *tuple(shape)), dtype=torch.int64)
            self.gen_p0.fill_(a[0])
            self.gen_p1.fill_(a[1])
            return a
        return torch.stack([self._rand0(shape), self._rand1(shape)])

    def _random_arith(self, shape, frac: int = 0) -> tuple[AShare, torch.Tensor]:
        """A uniformly random shared value (both shares from seeds: free). Returns (share, value)."""
        a = self._random_shares(shape)
        return AShare(a, self.mpc, frac), a[0] + a[1]

    def _xor_shares(self, value: torch.Tensor, bits: int) -> torch.Tensor:
        if self._direct() and not value.is_meta:
            out = torch.empty((2, *value.shape), dtype=torch.int64)
            self.gen_p0.fill_(out[0])
            if bits < 64:
                out[0].bitwise_and_((1 << bits) - 1)
            torch.bitwise_xor(value, out[0], out=out[1])
            return out
        s0 = self._rand0(value.shape, bits)
        return torch.stack([s0, value ^ s0])

    # -- items ---------------------------------------------------------------------------------
    def mul_triple(self, shape_a, shape_b) -> tuple[AShare, AShare, AShare]:
        xp = self._ns(shape_a, shape_b)
        if xp is not None:   # CPU: one definition, numpy for a few elements (mpc/xp.py)
            at, a = self._buf(xp, (2, *shape_a))
            bt, b = self._buf(xp, (2, *shape_b))
            for gen, out in ((self.gen_p0, a[0]), (self.gen_p1, a[1]), (self.gen_p0, b[0]), (self.gen_p1, b[1])):
                xp.fill(gen, out)
            cv = (a[0] + a[1]) * (b[0] + b[1])              # wraps mod 2^64 (numpy and torch int64 alike)
            ct, c = self._buf(xp, (2, *cv.shape))
            xp.sub_into(cv, xp.fill(self.gen_p0, c[0]), c[1])
            self._book(math.prod(cv.shape), 64)
            return AShare(at, self.mpc, 0), AShare(bt, self.mpc, 0), AShare(ct, self.mpc, 0)
        a, av = self._random_arith(shape_a)
        b, bv = self._random_arith(shape_b)
        c = self._arith(av * bv)
        self._book(c.numel(), 64)
        return a, b, c

    def matmul_triple(self, shape_a, shape_b, reuse_key=None, select=None):
        """(a, b, c = a @ b). With `reuse_key` (a registered weight) the first call draws b and keeps
        it until `forget_reused`; later calls with the same key reuse that b (weight-mask reuse).
        With `select` = (dim, index) the product is with b.index_select(dim, index) (a public slice of
        the weight's mask): returns (a, b_slice, c, b_full).
        c = a @ (b0 + b1) is computed as a @ b0 + a @ b1 from the digits of the stacked shares when the
        product has few rows (matmul.takes_digits): those digits are the ones the parties' e @ b_p use
        (MPC.digits), and no weight-sized b0 + b1 is formed."""
        a, av = self._random_arith(shape_a)
        entry = self._reused.get(reuse_key) if reuse_key is not None else None
        b = None
        if entry is None:
            stream = self._stream_mask(shape_b) if reuse_key is not None and select is None else None
            b = AShare(self._random_shares(shape_b), self.mpc, 0)
            entry = [stream or b, None]                                        # [b, b0 + b1 once needed]
            if reuse_key is not None:
                self._reused[reuse_key] = entry
        streamed = isinstance(entry[0], StreamMask)
        if b is None:
            b = entry[0].share() if streamed else entry[0]
        if streamed:                       # b0 + b1 is not kept either (b is not)
            entry = [b, None]
        if select is not None:
            dim, idx = select
            if entry[1] is None:
                entry[1] = b.data[0] + b.data[1]
            c = self._arith(ring_matmul(av, entry[1].index_select(dim, idx)))
            self._book(c.numel(), 64)
            return a, b.index_select(dim, idx), c, b
        rows = None if av.is_meta or b.dim() != 2 else av.reshape(-1, av.shape[-1])   # a's rows: (R, k)
        digits = rows is not None and takes_digits(rows, b.data)
        # a fresh mask and few rows: a @ b0 + a @ b1 reads the two shares once; forming b0 + b1 first would
        # cost a weight-sized pass and a weight-sized buffer more (the same c, bit for bit)
        few = reuse_key is None and rows is not None and rows.shape[0] <= FEW_ROWS and not b.data.is_cuda
        if digits or few:
            bd = self.mpc.digits(reuse_key, "b", b.data) if digits else None
            both = ring_matmul(rows, b.data, b_digits=bd)                            # (2, R, n)
            c = self._arith(both[0].add_(both[1]).reshape(*av.shape[:-1], b.shape[-1]))
        else:
            if entry[1] is None:
                entry[1] = b.data[0] + b.data[1]
            c = self._arith(ring_matmul(av, entry[1]))
            if reuse_key is None or streamed:
                entry[1] = None
        self._book(c.numel(), 64)
        return a, b, c

    def blocked_matmul_triple(self, shape_a, shape_b, rows: int, reuse_key=None) -> "BlockedTriple":
        """matmul_triple(shape_a, shape_b, reuse_key) of a few-row a and a weight mask b (k, n), with b
        handed out in blocks of `rows` rows (mpc/blocked.py): the same stream reads, values and booking."""
        return BlockedTriple(self, shape_a, shape_b, rows, reuse_key)

    def weight_mask(self, shape_b, reuse_key) -> AShare:
        """A registered weight's mask b (both halves from the dealer's streams with P0 and P1: nothing is
        sent), kept under `reuse_key` for later matmul_triple calls (engine.weight_masks=deployment: drawn
        when its W - b is opened in the deploy stage, mpc/weight_masks.py)."""
        entry = self._reused.get(reuse_key)
        if entry is None:
            entry = self._reused[reuse_key] = [AShare(self._random_shares(shape_b), self.mpc, 0), None]
        return entry[0].share() if isinstance(entry[0], StreamMask) else entry[0]

    def dp_padding(self, epsilon: float, delta: float):
        """system.count_padding=dp: the noise P (sparse/dp_noise.py draw, parameters
        epsilon and delta: plain numbers, as a remote dealer receives them) drawn by the
        dealer from its own secret stream and dealt as additive shares (frac 0; 8 bytes to P1). Returns
        (shares, P if cost mode else None): in cost mode (no streams) P comes from a fixed-seed generator,
        so the padded counts are reproducible but not those of an exact run."""
        from comet_core.sparse import dp_noise

        draw = lambda u: dp_noise.draw(float(epsilon), float(delta), u)  # noqa: E731
        if self.mpc.device.type == "meta":
            if not hasattr(self, "_cost_noise"):
                self._cost_noise = np.random.default_rng(0)
            p = draw(tuple(float(x) for x in 1.0 - self._cost_noise.random(2)))
            self._book(1, 64)
            return AShare(Shape((2, 1)), self.mpc, 0), p
        bits = self._rand((2,), 64)
        u = tuple(float(((int(b) & ((1 << 53) - 1)) + 1) / float(1 << 53)) for b in bits)   # (0, 1]
        p = draw(u)
        self._book(1, 64)
        return self._arith(torch.tensor([p], dtype=torch.int64, device=self.mpc.device)), None

    def forget_reused(self, keep=()) -> None:
        """End of an inference: reused weight masks (but those under `keep`: deployment-lifetime ones) and
        the request's permutations are dropped."""
        keep = set(keep)
        self._reused = {k: v for k, v in self._reused.items() if k in keep}
        self._perms.clear()
        self._fss.clear()

    def square_pair(self, shape) -> tuple[AShare, AShare]:
        xp = self._ns(shape)
        if xp is not None:   # CPU: one definition, numpy for a few elements (mpc/xp.py)
            at, a = self._buf(xp, (2, *shape))
            xp.fill(self.gen_p0, a[0]), xp.fill(self.gen_p1, a[1])
            av = a[0] + a[1]
            ct, c = self._buf(xp, (2, *shape))
            xp.sub_into(av * av, xp.fill(self.gen_p0, c[0]), c[1])
            self._book(math.prod(shape), 64)
            return AShare(at, self.mpc, 0), AShare(ct, self.mpc, 0)
        a, av = self._random_arith(shape)
        c = self._arith(av * av)
        self._book(c.numel(), 64)
        return a, c

    def trunc_triple(self, shape, f: int) -> tuple[AShare, AShare, AShare]:
        """Uniform r with shares of r, of r >> f (logical shift) and of its top bit r_63."""
        xp = self._ns(shape)
        if xp is not None:   # CPU: one definition, numpy for a few elements (mpc/xp.py)
            _, vals = self._buf(xp, (3, *tuple(shape)))                    # [r, r >> f, r_63]
            r = xp.fill(self.gen_own, vals[0])
            vals[1] = (r >> f) & ((1 << (64 - f)) - 1)
            vals[2] = (r >> 63) & 1
            ot, o = self._buf(xp, (2, 3, *tuple(shape)))
            xp.sub_into(vals, xp.fill_pieces(self.gen_p0, o[0]), o[1])
            for _ in range(3):
                self._book(math.prod(shape), 64)
            return tuple(AShare(ot[:, i], self.mpc, 0) for i in range(3))
        r = self._rand(shape)
        if r.is_meta:
            shifted, top = r, r
        else:
            shifted = (r >> f) & ((1 << (64 - f)) - 1)
            top = (r >> 63) & 1
        out = self._arith(r), self._arith(shifted), self._arith(top)
        for _ in out:
            self._book(out[0].numel(), 64)
        return out

    def trunc_square_triple(self, shape, f: int) -> tuple[AShare, ...]:
        """trunc_triple's r, r >> f and r_63, and shares of (r >> f)^2 and r_63 (r >> f): what makes the
        truncation's output squared a local step (arith.truncate_square). Books 5 words per element."""
        r = self._rand(shape)
        if r.is_meta:
            vals = (r,) * 5
        else:
            shifted = (r >> f) & ((1 << (64 - f)) - 1)
            top = (r >> 63) & 1
            vals = (r, shifted, top, shifted * shifted, top * shifted)
        out = tuple(self._arith(v) for v in vals)
        for _ in out:
            self._book(out[0].numel(), 64)
        return out

    def compare_mask(self, shape) -> tuple[AShare, torch.Tensor]:
        """Random r in Z_2^64: arithmetic shares and XOR shares of its 64 bits (one word), the bits in the
        comparison tree's leaf order: the word ring.leaf_order(r) (a fixed bit permutation; the top bit 63
        stays), so that the tree's first levels split whole int32 / int16 / int8 halves."""
        xp = self._ns(shape)
        if xp is not None:   # CPU: one definition, numpy for a few elements (mpc/xp.py)
            _, r = self._buf(xp, shape)
            xp.fill(self.gen_own, r)
            rat, ra = self._buf(xp, (2, *tuple(shape)))
            xp.sub_into(r, xp.fill(self.gen_p0, ra[0]), ra[1])
            rbt, rb = self._buf(xp, (2, *tuple(shape)))
            xp.xor_into(ring.leaf_order(r), xp.fill(self.gen_p0, rb[0]), rb[1])
            self._book(math.prod(shape), 64)
            self._book(math.prod(shape), 64)
            return AShare(rat, self.mpc, 0), rbt
        r = self._rand(shape)
        ra = self._arith(r)
        rb = self._xor_shares(r if r.is_meta else ring.leaf_order(r), 64)
        self._book(ra.numel(), 64)
        self._book(ra.numel(), 64)
        return ra, rb

    def and_triples(self, word_shape, elements: int, bits: int, n_right: int):
        """XOR-shared (a, [b_1..b_k], [a & b_1 .. a & b_k]) as packed words holding `elements`
        fields of `bits` bits; only those bits are booked.
        The stream reads: P0's a_0, then b_i0 and c_i0 for each i; P1's a_1, then b_i1 for each i."""
        xp = self._ns((n_right + 1, *tuple(word_shape)))
        if xp is not None:   # CPU: one definition, numpy for a few elements (mpc/xp.py)
            zt, z = self._buf(xp, (2, 1 + 2 * n_right, *tuple(word_shape)))   # rows a, b_1, c_1, .., b_k, c_k
            xp.fill_pieces(self.gen_p0, z[0])
            xp.fill(self.gen_p1, z[1, 0])
            if n_right:
                bv = z[0, 1::2] ^ xp.fill_pieces(self.gen_p1, z[1, 1::2])
                bv &= z[0, 0] ^ z[1, 0]
                xp.xor_into(bv, z[0, 2::2], z[1, 2::2])                   # c_i1 = (a & b_i) ^ c_i0
            for _ in range(n_right):
                self._book(elements, bits)
            return zt[:, 0], [zt[:, 1 + 2 * i] for i in range(n_right)], [zt[:, 2 + 2 * i] for i in range(n_right)]
        a = self._random_shares(word_shape)
        av = a[0] ^ a[1]
        bs, cs = [], []
        for _ in range(n_right):
            b = self._random_shares(word_shape)
            bs.append(b)
            cs.append(self._xor_shares(av & (b[0] ^ b[1]), 64))
            self._book(elements, bits)
        return a, bs, cs

    def ring_compare_mask(self, shape, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A reduced-ring comparison's mask (mpc/smallring.py): uniform r in Z_2^bits as additive shares mod
        2^bits and XOR shares of its bits, both (2, *shape) words in [0, 2^bits). Books 2 * bits per element
        (P1's corrections; P0's halves come from its stream)."""
        self._book(math.prod(shape), bits)
        self._book(math.prod(shape), bits)
        if self.mpc.is_cost:
            return Shape((2, *tuple(shape))), Shape((2, *tuple(shape)))
        low = (1 << bits) - 1
        r = self._rand(shape, bits)
        ra0, rb0 = self._rand0(shape, bits), self._rand0(shape, bits)
        return torch.stack([ra0, (r - ra0) & low]), torch.stack([rb0, r ^ rb0])

    def ring_fss_mask(self, n: int, bits: int) -> tuple:
        """A reduced-ring FSS sign test's items (mpc/smallring.py, engine.comparison=fss): uniform r in Z_2^bits
        as additive shares mod 2^bits, additive shares of s = r_(bits-1), and DCF keys (mpc/dcf.py) of
        f(y) = (1 - 2 s) [y < r mod 2^(bits-1)] over nb = bits - 1 bits. Party-stacked (ra, sa, seeds, cw_s,
        cw_t, cw_v) (the corrections the same in both slots). Books bits + 64 per element to P1 and
        dcf.key_bytes(bits - 1, 1) per element to each party; the root seeds come from the streams."""
        from comet_core.mpc import dcf

        nb = bits - 1
        self._book(n, bits)
        self._book(n, 64)
        for to in ("P0", "P1"):
            self._book(n, 8 * dcf.key_bytes(nb, 1), to=to)
        if self.mpc.is_cost:
            return (Shape((2, n)), Shape((2, n)), Shape((2, n, 2)), Shape((2, nb, n, 2)),
                    Shape((2, nb, n, 2), torch.uint8), Shape((2, nb + 1, n, 1)))
        low = (1 << bits) - 1
        r = self._rand((n,), bits).cpu()
        ra0 = self._rand0((n,), bits).cpu()
        s = (r >> nb) & 1
        sa = self._arith(s.to(self.mpc.device)).data
        seeds = self._random_shares((n, 2)).cpu()
        beta = (1 - 2 * s).numpy()[:, None].astype(np.int64)
        keys = dcf.gen((r & ((1 << nb) - 1)).numpy().view(np.uint64), beta, seeds.numpy().view(np.uint64), nb)

        def both(a: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(a.view(np.int64) if a.dtype == np.uint64 else a)
            return t.unsqueeze(0).expand(2, *t.shape)

        return (torch.stack([ra0, (r - ra0) & low]), sa, seeds, both(keys.cw_s), both(keys.cw_t), both(keys.cw_v))

    def dabit(self, shape) -> tuple[torch.Tensor, AShare]:
        """A random bit b as XOR shares (1 bit) and as additive shares (integer, frac 0)."""
        xp = self._ns(shape)
        if xp is not None:   # CPU: one definition, numpy for a few elements (mpc/xp.py)
            _, b = self._buf(xp, shape)
            xp.fill(self.gen_own, b)
            b &= 1
            bxt, bx = self._buf(xp, (2, *tuple(shape)))
            s0 = xp.fill(self.gen_p0, bx[0])
            s0 &= 1
            xp.xor_into(b, s0, bx[1])
            bat, ba = self._buf(xp, (2, *tuple(shape)))
            xp.sub_into(b, xp.fill(self.gen_p0, ba[0]), ba[1])
            self._book(math.prod(shape), 64)
            self._book(math.prod(shape), 1)
            return bxt, AShare(bat, self.mpc, 0)
        b = self._rand(shape, 1)
        bx = self._xor_shares(b, 1)
        ba = self._arith(b)
        self._book(ba.numel(), 64)
        self._book(ba.numel(), 1)
        return bx, ba

    # -- function secret sharing (mpc/fss.py: engine.comparison=fss) ------------------------------
    def fss_mask(self, handle: int, n: int, relu: bool) -> tuple[AShare, ...]:
        """An FSS comparison's input mask: uniform r (the dealer's secret, kept under `handle` for the
        keys) with additive shares of r and of s = r_63, and of s * r for ReLU. Books 64 bits per share
        and element (to P1: P0's shares come from its stream)."""
        k = 3 if relu else 2
        for _ in range(k):
            self._book(n, 64)
        if self.mpc.is_cost:
            return tuple(AShare(Shape((2, n)), self.mpc, 0) for _ in range(k))
        r = self._rand((n,))
        self._fss[handle] = r
        s = (r >> 63) & 1
        vals = (r, s, s * r)[:k]
        return tuple(self._arith(v) for v in vals)

    def fss_keys(self, handle: int, start: int, stop: int, relu: bool, last: bool) -> tuple:
        """DCF keys (mpc/dcf.py) for elements [start, stop) of the handle's mask r: f(y) = beta [y < alpha]
        over nb = 63 bits with alpha = r mod 2^63 and beta = 1 - 2 s (ReLU: (1 - 2 s, (1 - 2 s) r)),
        s = r_63. Root seeds from the dealer-party streams (free); the corrections go to both parties:
        dcf.key_bytes(63, w) per element each. Returns party-stacked torch tensors
        (seeds, cw_s, cw_t, cw_v) (the corrections the same in both slots). `last` drops r."""
        from comet_core.mpc import dcf
        from comet_core.mpc.dcf import NB

        c, w = stop - start, 2 if relu else 1
        for to in ("P0", "P1"):
            self._book(c, 8 * dcf.key_bytes(NB, w), to=to)
        if self.mpc.is_cost:
            return (Shape((2, c, 2)), Shape((2, NB, c, 2)), Shape((2, NB, c, 2), torch.uint8),
                    Shape((2, NB + 1, c, w)))
        r = self._fss[handle][start:stop].cpu().numpy()
        if last:
            del self._fss[handle]
        seeds = self._random_shares((c, 2)).cpu()                         # (2, c, 2): the root seeds
        g = 1 - 2 * ((r >> 63) & 1)                                        # 1 - 2 s
        beta = (g[:, None] if not relu else np.stack([g, g * r], axis=1)).astype(np.int64)
        keys = dcf.gen((r & ((1 << 63) - 1)).view(np.uint64), beta, seeds.numpy().view(np.uint64), NB)

        def both(a: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(a.view(np.int64) if a.dtype == np.uint64 else a)
            return t.unsqueeze(0).expand(2, *t.shape)

        return seeds, both(keys.cw_s), both(keys.cw_t), both(keys.cw_v)

    # -- oblivious permutation (mpc/shuffle.py) ------------------------------------------------
    def new_permutation(self, n: int, handle: int) -> torch.Tensor:
        """A permutation pi = pi1 o pi0 of n indices that neither party knows: pi0 from the dealer-P0
        key (P0's), pi1 from the dealer-P1 key (P1's); free to deliver. Returns them party-stacked
        (2, n) as gather indices; the dealer keeps them under `handle` for `permute_masks`."""
        if self.mpc.device.type == "meta":
            perms = Shape((2, n))
        else:
            p0 = torch.argsort(self._rand0((n,)))
            p1 = torch.argsort(self._rand1((n,)))
            perms = torch.stack([p0, p1])
        self._perms[handle] = perms
        return perms

    def permutation(self, handle: int) -> torch.Tensor:
        """The composed gather index pi (v[pi] = pi1(pi0(v))): the dealer's knowledge, for checks only."""
        p = self._perms[handle]
        return p[0][p[1]]

    def permute_masks(self, shape, dim: int, handle: int, sender: str = "dealer"):
        """Masks for permuting a tensor of `shape` along `dim` by the handle's permutation.

        Half 1 (pi0): P1 holds random a, b; P0 gets D = pi0(a) - b (a correction, numel to P0).
        Half 2 (pi1): P0 holds random a', b'; P1 gets D' = pi1(a') - b' (numel to P1).
        Returns party-stacked (a, b, D, a', b', D') with zeros in the slot of the party that does not
        hold the item (a single party receives only its own slot). `sender` names who plays the dealer
        for this correlation in the ledger (the trusted dealer, or the client in a client-aided setting:
        the same bytes, offline either way).
        """
        perms = self._perms[handle]
        if self.mpc.device.type == "meta":
            z = Shape((2, *shape))
            n = z[0].numel()
            self._book(n, 64, to="P0", sender=sender)
            self._book(n, 64, to="P1", sender=sender)
            return z, z, z, z, z, z
        zeros = torch.zeros(tuple(shape), dtype=torch.int64, device=self.mpc.device)
        a, b = self._rand1(shape), self._rand1(shape)
        d = a.index_select(dim, perms[0]) - b
        a2, b2 = self._rand0(shape), self._rand0(shape)
        d2 = a2.index_select(dim, perms[1]) - b2
        self._book(d.numel(), 64, to="P0", sender=sender)
        self._book(d.numel(), 64, to="P1", sender=sender)
        st = torch.stack
        return (st([zeros, a]), st([zeros, b]), st([d, zeros]), st([a2, zeros]), st([b2, zeros]), st([zeros, d2]))

    def fourier_mask(self, shape, period: int, n_terms: int, frac: int, bits: int):
        """SecFormer's mask for a Fourier series: t uniform in [0, 2^bits) (ring units) with additive shares
        of t and of sin(2 pi k t / period), cos(2 pi k t / period) for k = 1..n_terms at scale `frac`
        (shape (*shape, n_terms)); `period` in ring units. Books t: 64 n; sin, cos: 2 * 64 n n_terms."""
        t = self._rand(shape, bits)
        if t.is_meta:
            sin = cos = Shape((*t.shape, n_terms))
        else:
            ang = torch.remainder(t, period).to(torch.float64) * (2 * torch.pi / period)
            kt = ang.unsqueeze(-1) * torch.arange(1, n_terms + 1, dtype=torch.float64, device=t.device)
            sin, cos = ring.encode(torch.sin(kt), frac), ring.encode(torch.cos(kt), frac)
        out = self._arith(t), self._arith(sin, frac), self._arith(cos, frac)
        self._book(out[0].numel(), 64)
        self._book(out[1].numel(), 64)
        self._book(out[2].numel(), 64)
        return out

    def ideal(self, data: torch.Tensor, frac: int, fn: str, out_frac: int, kwargs: dict) -> AShare:
        """An ideal functionality (comet_core/mpc/ideal.py): open both parties' shares `data` (2, ...) at
        scale `frac`, evaluate the plaintext function `fn` (IDEAL_FUNCTIONS: ideal.FUNCTIONS, registered by mpc/ideal.py) in float64, and re-share the
        result at `out_frac` with fresh randomness (P0's half from its dealer stream). Nothing is booked
        here: the functionality's traffic is the modelled cost that ideal.py books (cost_source=model).
        A function marked `on_ring` gets the dealer, the party-stacked ring elements and out_frac, and returns
        the parties' halves itself (e.g. he_linear's lift from Z_t, exact in integers)."""
        if data.is_meta:
            return self._arith(Shape(tuple(data.shape[1:])), out_frac)
        f = IDEAL_FUNCTIONS[fn]
        if getattr(f, "on_ring", False):   # an integer functionality: the shares' ring elements, its own sharing
            return f(self, data, out_frac, **kwargs)
        x = ring.decode(data[0] + data[1], frac)
        y = f(x, **kwargs)
        return self._arith(ring.encode(y, out_frac), out_frac)


class BlockedTriple:
    """A Beaver triple (a, b, c = a @ b) of a few-row a and a weight mask b (k, n), b by blocks of rows.

    1. a (R, k): both halves from the dealer's streams with P0 and P1 (as _random_arith); `av` = a0 + a1.
    2. `blocks()`: b's blocks of rows (2, h, n). A fresh mask: b0 and b1 drawn from those streams in
       order (the same words as one read, blocks being an even number of words). A reused mask
       (`reuse_key`): drawn the same way at its first use in the inference and kept as matmul_triple
       keeps it (a StreamMask on the CPU: later calls read its blocks from the streams again; else the
       kept b, as one block). While a block is in cache the caller
       adds the dealer's a @ b0 + a @ b1 for that block into `acc` (R, n), together with the parties'
       products over the same block (mpc/blockkernel.py).
    3. `c()`: after the last block, c = acc's shares (P0's from its stream, P1's the correction).
    Cost: numel(c) * 64 bits offline, booked when the triple is made (where matmul_triple books it, so
    the ledger's rows keep their order).
    """

    def __init__(self, dealer: Dealer, shape_a, shape_b, rows: int, reuse_key=None) -> None:
        self.dealer, self.rows = dealer, rows
        self.k, self.n = shape_b
        self.a = dealer._random_shares(shape_a)                 # (2, R, k)
        self.av = self.a[0] + self.a[1]                          # (R, k): the dealer's a
        self.acc = torch.zeros((shape_a[0], self.n), dtype=torch.int64)
        self._done = False
        self.kept = dealer._reused.get(reuse_key) if reuse_key is not None else None
        self._keep = None
        if reuse_key is not None and self.kept is None:          # first use: drawn by blocks
            stream = dealer._stream_mask(shape_b)                 # kept as its stream positions, or in memory
            if stream is None:
                self._keep = torch.empty((2, self.k, self.n), dtype=torch.int64)
            dealer._reused[reuse_key] = [stream or AShare(self._keep, dealer.mpc, 0), None]
        dealer._book(shape_a[0] * self.n, 64)

    def blocks(self):
        """Yields (first row, block (2, h, n))."""
        d, n, h = self.dealer, self.n, self.rows
        if self.kept is not None and isinstance(self.kept[0], StreamMask):   # read again, by blocks
            buf = torch.empty((2, h, n), dtype=torch.int64)
            for r0 in range(0, self.k, h):
                hb = min(h, self.k - r0)
                yield r0, self.kept[0].rows(r0, buf if hb == h else torch.empty((2, hb, n), dtype=torch.int64))
        elif self.kept is not None:
            yield 0, self.kept[0].data
        else:
            buf = torch.empty((2, h, n), dtype=torch.int64) if self._keep is None else None
            for r0 in range(0, self.k, h):
                hb = min(h, self.k - r0)
                b = self._keep[:, r0:r0 + hb] if self._keep is not None else \
                    buf if hb == h else torch.empty((2, hb, n), dtype=torch.int64)
                d.gen_p0.fill_(b[0])
                d.gen_p1.fill_(b[1])
                yield r0, b
        self._done = True

    def c(self) -> AShare:
        if not self._done:
            raise RuntimeError("BlockedTriple.c() before every block of b was drawn")
        return self.dealer._arith(self.acc)
