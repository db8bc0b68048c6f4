"""The engine context and additive shares.

An `AShare` holds both parties' additive shares of a tensor over Z_2^64 along dim 0:
`data[0]` is P0's, `data[1]` is P1's, and the secret is data[0] + data[1] (mod 2^64).
`frac` is its fixed-point scale: the secret encodes value * 2^frac (0 for integers and bits).

`MPC` ties together the ring settings, the ledger, the channel, the dealer and the generators.
In `cost` mode every tensor is a data-free `Shape` (device `meta`): the same protocol code runs on shapes
only and writes the same ledger as `exact` mode would.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field

import torch

from comet_core.comm.channel import InProcessChannel
from comet_core.comm.ledger import Ledger
from comet_core.errors import require
from comet_core.mpc import ring
from comet_core.mpc.shape import Shape

_uid = itertools.count()


@dataclass
class FunctionConfig:
    """Iteration counts and input ranges of the function approximations."""

    exp_iterations: int = 8                    # CrypTen's default
    exp_clamp: bool = True                     # relu(1 + x/2^n) so that x < -2^n gives 0 (not in CrypTen)
    reciprocal_nr_iters: int = 4               # from a guess within 2^0.5: error 0.41 -> 8e-7 in 4 steps
    reciprocal_range: tuple = (-8, 24)         # 2^-8 <= x < 2^25 (softmax sums lie in [1, context])
    inv_sqrt_nr_iters: int = 3                 # from a guess within 2^0.25: error 0.19 -> 3e-5 in 3 steps
    inv_sqrt_range: tuple = (-16, 31)          # 2^-16 (one LSB at f=16) <= x < 2^32 (variances)
    # reciprocal and inv_sqrt return their result at scale frac_bits + 12 (nonlinear.hi_frac)
    sigmoid_nr_iters: int = 3                  # CrypTen's default (denominator in (1, 2])


@dataclass
class EngineConfig:
    frac_bits: int = 16
    truncation: str = "dealer"  # dealer (exact, 1 round) | local (CrypTen's, 0 rounds, rare failures)
    reuse_weight_masks: bool = False
    functions: FunctionConfig = field(default_factory=FunctionConfig)

    def __post_init__(self) -> None:
        require(isinstance(self.frac_bits, int) and 8 <= self.frac_bits <= 24,
                f"engine.frac_bits must be an integer in 8..24 (products need 2*frac_bits well below 63), "
                f"got {self.frac_bits}")
        require(self.truncation in ("local", "dealer"),
                f"engine.truncation must be one of local, dealer; got {self.truncation!r}")
        require(self.truncation == "dealer" or self.frac_bits <= 20,
                f"engine.frac_bits={self.frac_bits} with truncation=local fails often (probability "
                f"~|x y| 2^(2f-63) per product); use frac_bits <= 20 or truncation=dealer")


class MPC:
    """The 2PC engine: two parties P0 and P1, a dealer, one channel and one ledger."""

    def __init__(self, config: EngineConfig | None = None, seed: int = 0, device: str = "cpu",
                 mode: str = "exact", ledger: Ledger | None = None) -> None:
        require(mode in ("exact", "cost"), f"mode must be one of exact, cost; got {mode!r}")
        if device == "cuda":
            require(torch.cuda.is_available(), "device=cuda but no CUDA device is available; use device=cpu")
        self.config = config or EngineConfig()
        self.mode = mode
        self.device = torch.device("meta") if mode == "cost" else torch.device(device)
        self.seed = int(seed)
        self.ledger = ledger or Ledger()
        self.channel = InProcessChannel(self.ledger)
        from comet_core.mpc.dealer import Dealer  # dealer imports engine types

        self.dealer = Dealer(self)
        # generators derived from the one seed: input owners' masks
        self.input_gen = self._generator(1)
        self.weight_masks: dict[int, tuple] = {}  # share uid -> (mask share, opened masked value)

    @property
    def frac_bits(self) -> int:
        return self.config.frac_bits

    @property
    def fn(self) -> FunctionConfig:
        return self.config.functions

    @property
    def is_cost(self) -> bool:
        return self.mode == "cost"

    def _generator(self, stream: int) -> "ring.PRG | None":
        """The PRG of one stream (1: input owners, 2: dealer), derived from the one seed."""
        if self.device.type == "meta":
            return None
        return ring.PRG(self.seed * 1_000_003 + stream * 7919)

    # -- labels --------------------------------------------------------------------------------
    def label(self, **labels):
        return self.ledger.label(**labels)

    # -- sharing and revealing -----------------------------------------------------------------
    def share(self, x: torch.Tensor, owner: str = "client", frac: int | None = None,
              phase: str = "input") -> "AShare":
        """Secret-share a plaintext tensor held by `owner` (client or model_owner).

        1. The owner draws r from a seed it shares with P0 (P0's share, nothing sent).
        2. The owner sends x - r to P1.
        Cost: numel * 64 bits from the owner to P1 (phase `input`; `setup` for model weights,
        shared once per deployment), 0 online rounds. Integer tensors are shared as integers.
        """
        frac = self.frac_bits if frac is None else frac
        if not x.is_floating_point():
            frac = 0
        if self.is_cost:
            enc = Shape(x.shape)
        else:
            x = x.to(self.device)
            enc = ring.encode(x, frac) if x.is_floating_point() else x.to(torch.int64)
        r = ring.random_ring(enc.shape, self.input_gen, self.device)
        data = torch.stack([r, enc - r])
        self.ledger.record(phase, owner, "P1", enc.numel(), 64, -1)
        return AShare(data, self, frac)

    def reveal(self, x: "AShare", to: str = "client") -> torch.Tensor:
        """Open `x` to the client: both parties send their share (phase `output`). Returns floats."""
        n = x.numel()
        self.ledger.record("output", "P0", to, n, 64, -1)
        self.ledger.record("output", "P1", to, n, 64, -1)
        if self.is_cost:
            return Shape(x.shape, torch.float64)
        return ring.decode(x.data[0] + x.data[1], x.frac)

    def open(self, *xs: "AShare") -> list[torch.Tensor]:
        """Open masked values to both parties in one round (each sends its share of each)."""
        self.channel.exchange([x.data for x in xs], 64)
        return [x.data[0] + x.data[1] for x in xs]

    @contextlib.contextmanager
    def inference(self):
        """One inference request: cached weight masks (reuse_weight_masks) live only inside it."""
        try:
            yield self
        finally:
            self.weight_masks.clear()


def _lift(data: torch.Tensor, nd: int) -> torch.Tensor:
    """Party-stacked data (2, *s) viewed with rank nd + 1 so it broadcasts like a tensor of shape s."""
    extra = nd - (data.dim() - 1)
    return data if extra <= 0 else data.reshape(2, *([1] * extra), *data.shape[1:])


class AShare:
    """Additive shares of one tensor: data (2, *shape) int64, scale 2^frac."""

    __slots__ = ("data", "mpc", "frac", "uid")

    def __init__(self, data: torch.Tensor, mpc: MPC, frac: int) -> None:
        self.data = data
        self.mpc = mpc
        self.frac = frac
        self.uid = next(_uid)

    # -- shape ---------------------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return self.data.shape[1:]

    def numel(self) -> int:
        return self.data[0].numel()

    def dim(self) -> int:
        return self.data.dim() - 1

    def _wrap(self, data: torch.Tensor, frac: int | None = None) -> "AShare":
        return AShare(data, self.mpc, self.frac if frac is None else frac)

    def _d(self, d: int) -> int:
        return d + 1 if d >= 0 else d

    def reshape(self, *shape) -> "AShare":
        return self._wrap(self.data.reshape(2, *shape))

    view = reshape

    def transpose(self, a: int, b: int) -> "AShare":
        return self._wrap(self.data.transpose(self._d(a), self._d(b)))

    def permute(self, *dims) -> "AShare":
        return self._wrap(self.data.permute(0, *[self._d(d) for d in dims]))

    def unsqueeze(self, d: int) -> "AShare":
        return self._wrap(self.data.unsqueeze(self._d(d)))

    def expand(self, *shape) -> "AShare":
        return self._wrap(self.data.expand(2, *shape))

    def contiguous(self) -> "AShare":
        return self._wrap(self.data.contiguous())

    def __getitem__(self, idx) -> "AShare":
        if not isinstance(idx, tuple):
            idx = (idx,)
        return self._wrap(self.data[(slice(None), *idx)])

    def sum(self, dim: int, keepdim: bool = False) -> "AShare":
        return self._wrap(self.data.sum(self._d(dim), keepdim=keepdim))

    def index_select(self, dim: int, index: torch.Tensor) -> "AShare":
        return self._wrap(self.data.index_select(self._d(dim), index.to(self.data.device)))

    @staticmethod
    def _join(fn, xs: list["AShare"], dim: int) -> "AShare":
        """torch.cat / torch.stack of shares along a share dim (the party dim stays first)."""
        fr = max(x.frac for x in xs)
        d = dim + 1 if dim >= 0 else dim
        return AShare(fn([x.rescale(fr).data for x in xs], dim=d), xs[0].mpc, fr)

    @staticmethod
    def cat(xs: list["AShare"], dim: int) -> "AShare":
        return AShare._join(torch.cat, xs, dim)

    @staticmethod
    def stack(xs: list["AShare"], dim: int) -> "AShare":
        return AShare._join(torch.stack, xs, dim)

    # -- local linear operations (no communication) --------------------------------------------
    def rescale(self, frac: int) -> "AShare":
        """Raise the scale to `frac` (exact, local): multiply both shares by 2^(frac - self.frac)."""
        assert frac >= self.frac
        return self if frac == self.frac else self._wrap(self.data * (1 << (frac - self.frac)), frac)

    def _align(self, other: "AShare") -> tuple["AShare", "AShare"]:
        f = max(self.frac, other.frac)
        return self.rescale(f), other.rescale(f)

    def __add__(self, other) -> "AShare":
        if isinstance(other, AShare):
            a, b = self._align(other)
            nd = max(a.dim(), b.dim())
            return a._wrap(_lift(a.data, nd) + _lift(b.data, nd))
        return self.add_public(other)

    __radd__ = __add__

    def __neg__(self) -> "AShare":
        return self._wrap(-self.data)

    def __sub__(self, other) -> "AShare":
        if isinstance(other, AShare):
            return self + (-other)
        return self.add_public(-other if not isinstance(other, torch.Tensor) else -other)

    def __rsub__(self, other) -> "AShare":
        return (-self).add_public(other)

    def add_public(self, t) -> "AShare":
        """x + t for a public scalar or tensor: P0 adds the encoding of t."""
        t = torch.as_tensor(t, dtype=torch.float64)
        enc = ring.encode(t.to(self.data.device), self.frac)
        out = self.data.clone() if enc.shape == self.shape else \
            _lift(self.data, enc.dim()).expand(2, *torch.broadcast_shapes(self.shape, enc.shape)).clone()
        out[0] = out[0] + enc
        return self._wrap(out)

    def mul_int(self, k) -> "AShare":
        """x * k for a public integer scalar or int tensor: local, no truncation."""
        if isinstance(k, torch.Tensor):
            k = k.to(self.data.device, torch.int64)
        return self._wrap(self.data * k)

    def __repr__(self) -> str:
        return f"AShare(shape={tuple(self.shape)}, frac={self.frac}, device={self.data.device})"
