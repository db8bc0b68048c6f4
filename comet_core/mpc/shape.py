"""`Shape`: a data-free stand-in for a torch tensor, for cost mode.

Torch's `meta` tensors carry shapes too, but many of their kernels are Python decompositions that
take ~1 ms per call; a 7B model's prefill and decode make millions of such calls. `Shape` keeps just
the shape and dtype and implements the tensor operations the protocols use (elementwise arithmetic
and bit operations with broadcasting, indexing, reshaping, stack/cat, matmul) in microseconds.
Torch functions called on it (torch.stack, torch.cat, ...) reach it through `__torch_function__`.
"""

from __future__ import annotations

import functools
import math

import torch

META = torch.device("meta")


def _shape_of(x) -> tuple:
    if isinstance(x, Shape):
        return x.shape
    if isinstance(x, torch.Tensor):
        return tuple(x.shape)
    return ()  # a Python scalar


@functools.lru_cache(maxsize=65536)
def broadcast(a: tuple, b: tuple) -> tuple:
    """numpy/torch broadcasting of two shapes (cached: the same shapes recur in every layer)."""
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x != y and x != 1 and y != 1:
            raise RuntimeError(f"shapes {a} and {b} do not broadcast")
        out.append(y if x == 1 else x)
    return tuple(out)


def _norm_dim(d: int, nd: int) -> int:
    return d + nd if d < 0 else d


class Shape:
    """A tensor without data: shape, dtype; every operation returns a new Shape."""

    __slots__ = ("shape", "dtype")
    is_meta = True
    device = META

    def __init__(self, shape, dtype=torch.int64) -> None:
        self.shape = shape if type(shape) is tuple else tuple(int(s) for s in shape)
        self.dtype = dtype

    # -- basic properties -------------------------------------------------------------------------
    def numel(self) -> int:
        return math.prod(self.shape)

    def dim(self) -> int:
        return len(self.shape)

    def size(self, d=None):
        return self.shape if d is None else self.shape[d]

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"Shape({tuple(self.shape)}, {self.dtype})"

    # -- elementwise -----------------------------------------------------------------------------
    def _bin(self, other) -> "Shape":
        return Shape(broadcast(self.shape, _shape_of(other)), self.dtype)

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _bin
    __and__ = __rand__ = __or__ = __ror__ = __xor__ = __rxor__ = _bin
    __rshift__ = __lshift__ = __truediv__ = __floordiv__ = _bin
    __iadd__ = __isub__ = __imul__ = __iand__ = __ixor__ = __ior__ = _bin
    __le__ = __lt__ = __ge__ = __gt__ = _bin

    def _same(self, *_, **__) -> "Shape":
        return Shape(self.shape, self.dtype)

    __neg__ = __invert__ = clone = contiguous = _same

    def to(self, *args, **kwargs) -> "Shape":
        dtype = kwargs.get("dtype")
        for a in args:
            if isinstance(a, torch.dtype):
                dtype = a
        return Shape(self.shape, dtype or self.dtype)

    def double(self) -> "Shape":
        return Shape(self.shape, torch.float64)

    def float(self) -> "Shape":
        return Shape(self.shape, torch.float32)

    # -- indexing --------------------------------------------------------------------------------
    def __getitem__(self, idx) -> "Shape":
        if type(idx) is int:  # x[0]: one party's share, the hot case
            return Shape(self.shape[1:], self.dtype)
        if not isinstance(idx, tuple):
            idx = (idx,)
        if any(i is Ellipsis for i in idx):
            k = idx.index(Ellipsis)
            fill = len(self.shape) - (len(idx) - 1 - sum(i is None for i in idx))
            idx = idx[:k] + (slice(None),) * fill + idx[k + 1:]
        out, d = [], 0
        for i in idx:
            if i is None:
                out.append(1)
                continue
            n = self.shape[d]
            if isinstance(i, slice):
                out.append(len(range(*i.indices(n))))
            elif isinstance(i, int):
                pass
            elif isinstance(i, torch.Tensor) and i.dtype == torch.bool:
                out.append(int(i.sum()))
            else:
                out.extend(_shape_of(i) if not isinstance(i, (list, range)) else (len(i),))
            d += 1
        out.extend(self.shape[d:])
        return Shape(out, self.dtype)

    def __setitem__(self, idx, value) -> None:
        return None

    # -- shape ops -------------------------------------------------------------------------------
    def reshape(self, *shape) -> "Shape":
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
            shape = tuple(shape[0])
        shape = list(shape)
        if -1 in shape:
            k = shape.index(-1)
            rest = math.prod(s for i, s in enumerate(shape) if i != k)
            shape[k] = self.numel() // rest if rest else 0
        return Shape(shape, self.dtype)

    view = reshape

    def transpose(self, a: int, b: int) -> "Shape":
        s = list(self.shape)
        a, b = _norm_dim(a, len(s)), _norm_dim(b, len(s))
        s[a], s[b] = s[b], s[a]
        return Shape(s, self.dtype)

    def t(self) -> "Shape":
        return self.transpose(0, 1)

    def permute(self, *dims) -> "Shape":
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = dims[0]
        return Shape([self.shape[d] for d in dims], self.dtype)

    def unsqueeze(self, d: int) -> "Shape":
        s = list(self.shape)
        s.insert(_norm_dim(d, len(s) + 1), 1)
        return Shape(s, self.dtype)

    def squeeze(self, d: int) -> "Shape":
        s = list(self.shape)
        d = _norm_dim(d, len(s))
        if s[d] == 1:
            s.pop(d)
        return Shape(s, self.dtype)

    def expand(self, *shape) -> "Shape":
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
            shape = tuple(shape[0])
        return Shape(broadcast(self.shape, tuple(s if s != -1 else 1 for s in shape)), self.dtype)

    def sum(self, dim: int, keepdim: bool = False) -> "Shape":
        s = list(self.shape)
        d = _norm_dim(dim, len(s))
        if keepdim:
            s[d] = 1
        else:
            s.pop(d)
        return Shape(s, self.dtype)

    def index_select(self, dim: int, index) -> "Shape":
        s = list(self.shape)
        s[_norm_dim(dim, len(s))] = len(index)
        return Shape(s, self.dtype)

    # -- torch functions -------------------------------------------------------------------------
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.stack, torch.cat):
            xs = list(args[0])
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            base = list(_shape_of(xs[0]))
            dtype = next((x.dtype for x in xs if hasattr(x, "dtype")), torch.int64)
            if func is torch.stack:
                base.insert(_norm_dim(dim, len(base) + 1), len(xs))
            else:
                d = _norm_dim(dim, len(base))
                base[d] = sum(_shape_of(x)[d] for x in xs)
            return Shape(base, dtype)
        if func in (torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like):
            return Shape(args[0].shape, kwargs.get("dtype") or args[0].dtype)
        if func is torch.where:
            return Shape(functools.reduce(broadcast, (_shape_of(a) for a in args)), args[1].dtype)
        if func is torch.matmul:
            a, b = args
            shape = torch.matmul(torch.empty(_shape_of(a), device=META), torch.empty(_shape_of(b), device=META)).shape
            return Shape(shape, torch.int64)
        name = getattr(func, "__name__", "")
        method = getattr(cls, name, None)
        if method is not None and isinstance(args[0], Shape):
            return method(*args, **kwargs)
        if name.startswith("__r") and isinstance(args[1], Shape):  # reflected operators
            return args[1]._bin(args[0])
        if isinstance(args[0], torch.Tensor) and len(args) > 1 and isinstance(args[1], Shape):
            return args[1]._bin(args[0])
        raise NotImplementedError(f"Shape does not implement {func}")


def empty(shape, dtype=torch.int64) -> Shape:
    return Shape(shape, dtype)
