"""Additive shares.

An `AShare` holds the additive shares of a tensor over Z_2^64 that this process holds, along dim 0:
in simulation both (`data[0]` is P0's, `data[1]` P1's; the secret is data[0] + data[1] mod 2^64),
as a single party only its own (dim 0 of size 1). Protocol code is the same for both.
`frac` is its fixed-point scale: the secret encodes value * 2^frac (0 for integers and bits).
Its operations call the engine it belongs to (`self.mpc`, mpc/engine.py's MPC), which it does not import:
the dealer builds shares without importing the engine.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from comet_core.comm.wire import register_share_type
from comet_core.mpc import ring


SMALL_NP = 1 << 14   # party-stacked CPU tensors of up to this many words are opened in numpy (simulation)


def _small_cpu(t: torch.Tensor) -> bool:
    """Whether t is a small int64 CPU tensor that numpy can view (the small protocols' fast path)."""
    return not t.is_meta and t.is_cpu and t.dtype == torch.int64 and t.numel() <= SMALL_NP and not t.requires_grad


def _np_open(a: np.ndarray, xor: bool) -> np.ndarray:
    """The opened value of party-stacked shares (2, ...) in the simulation: a0 ^ a1 or a0 + a1 (mod 2^64)."""
    return a[0] ^ a[1] if xor else a[0] + a[1]


def _lift(data: torch.Tensor, nd: int) -> torch.Tensor:
    """Party-stacked data (P, *s) viewed with rank nd + 1 so it broadcasts like a tensor of shape s."""
    extra = nd - (data.dim() - 1)
    return data if extra <= 0 else data.reshape(data.shape[0], *([1] * extra), *data.shape[1:])


class AShare:
    """Additive shares of one tensor: data (P, *shape) int64 (P = the parties held here), scale 2^frac."""

    __slots__ = ("data", "mpc", "frac", "uid")

    def __init__(self, data: torch.Tensor, mpc, frac: int) -> None:   # mpc: its engine (MPC)
        self.data = data
        self.mpc = mpc
        self.frac = frac
        self.uid = None  # set by MPC.register_weight for model weights (mask reuse)

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
        return self._wrap(self.data.reshape(self.data.shape[0], *shape))

    view = reshape

    def transpose(self, a: int, b: int) -> "AShare":
        return self._wrap(self.data.transpose(self._d(a), self._d(b)))

    def permute(self, *dims) -> "AShare":
        return self._wrap(self.data.permute(0, *[self._d(d) for d in dims]))

    def unsqueeze(self, d: int) -> "AShare":
        return self._wrap(self.data.unsqueeze(self._d(d)))

    def expand(self, *shape) -> "AShare":
        return self._wrap(self.data.expand(self.data.shape[0], *shape))

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
        if type(t) in (float, int) and not self.data.is_meta:   # a Python number: ring.encode's value
            v = float(t) * (1 << self.frac)                      # (float64 product, round half to even)
            if math.isfinite(v) and abs(round(v)) <= ring.ENCODE_LIMIT:
                return self._wrap(self.mpc.add_p0_(self.data.clone(), round(v)))
        t = torch.as_tensor(t, dtype=torch.float64)
        enc = ring.encode(t.to(self.data.device), self.frac)
        out = self.data.clone() if enc.shape == self.shape else _lift(self.data, enc.dim()).expand(
            self.data.shape[0], *torch.broadcast_shapes(self.shape, enc.shape)).clone()
        return self._wrap(self.mpc.add_p0_(out, enc))

    def mul_int(self, k) -> "AShare":
        """x * k for a public integer scalar or int tensor: local, no truncation."""
        if isinstance(k, torch.Tensor):
            k = k.to(self.data.device, torch.int64)
        return self._wrap(self.data * k)

    def __repr__(self) -> str:
        return f"AShare(shape={tuple(self.shape)}, frac={self.frac}, device={self.data.device})"


def _rebuild(data: torch.Tensor, frac: int, mpc) -> AShare:
    return AShare(data, mpc, frac)


register_share_type(AShare, _rebuild)   # how comm/wire.py sends and rebuilds a share
