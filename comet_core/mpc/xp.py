"""One definition of each small-protocol step, run over numpy or torch (`ops_for` picks the namespace).

A decode step's products, truncations and comparisons are of one to a few thousand elements, where
torch's per-call overhead is most of the time; numpy's is a fraction of it. Rather than a numpy twin of
each protocol step beside its torch code (two paths to keep in step), a step is written once as a
function of arrays and an `Ops` object:
  * Python's operators, which numpy and torch int64 arrays share bit for bit (+ - * wrap mod 2^64,
    >> is arithmetic, << & | ^ are the same words; data-free Shapes in cost mode accept them too);
  * the few calls that differ, as methods of Ops: the opening of party-stacked arrays (plain, or XOR-masked),
    P0's addition or XOR, in-place multiply-add, a keyed stream's fill, subtraction / XOR / AND into a buffer.
`ops_for(*tensors)` gives NUMPY when every tensor is a small int64 CPU tensor (ashare.SMALL_NP words;
numpy views of the tensors' memory, so results are the same torch tensors), else TORCH. The bit-for-bit
pins of tests/test_bitexact_small.py run both.
"""

from __future__ import annotations

import numpy as np
import torch

from comet_core.mpc.ashare import _small_cpu


class TorchOps:
    """The torch namespace (any device; data-free Shapes in cost mode)."""

    name = "torch"

    @staticmethod
    def arr(t: torch.Tensor):
        return t

    @staticmethod
    def tensor(a) -> torch.Tensor:
        return a

    @staticmethod
    def open(mpc, arrays, bits: int = 64, xor: bool = False, packed: int | None = None) -> list:
        return mpc.open_raw(arrays, bits, xor=xor, packed=packed)

    @staticmethod
    def open_xor_masked(mpc, pairs, bits: int, packed: int | None = None) -> list:
        """Open x ^ m for party-stacked (x, m) pairs in one round. x may be strided int32 / int16 / int8
        halves (m is int64 words of x's dense packing): their masked XOR is packed into dense int64 words."""
        if pairs[0][0].dtype == torch.int64:
            return mpc.open_masked(*pairs, bits=bits, xor=True, packed=packed)
        return mpc.open_raw([torch.bitwise_xor(x, m.view(x.dtype)).contiguous().view(torch.int64) for x, m in pairs],
                            bits, xor=True, packed=packed)

    @staticmethod
    def add_p0(mpc, z, value):
        return mpc.add_p0_(z, value)

    @staticmethod
    def xor_p0(mpc, z, value):
        return mpc.xor_p0_(z, value)

    @staticmethod
    def addmul_(z, x, y, scale: int = 1):
        """z += scale * x * y in z's buffer (a Shape gives a Shape)."""
        if z.is_meta:
            return z + scale * x * y if scale != 1 else z + x * y
        return z.addcmul_(x, y, value=scale) if scale != 1 else z.addcmul_(x, y)

    @staticmethod
    def fill(gen, out):
        return gen.fill_(out)

    @staticmethod
    def fill_pieces(gen, out):
        """out[0], out[1], ... filled in turn from the stream (each piece starts at a block boundary)."""
        for piece in out:
            gen.fill_(piece)
        return out

    @staticmethod
    def sub_into(x, y, out):
        return torch.sub(x, y, out=out)

    @staticmethod
    def xor_into(x, y, out):
        return torch.bitwise_xor(x, y, out=out)

    @staticmethod
    def and_into(x, y, out=None):
        return torch.bitwise_and(x, y, out=out)


class NumpyOps:
    """The numpy namespace: int64 views of small CPU tensors (the simulation's small protocols)."""

    name = "numpy"

    @staticmethod
    def arr(t: torch.Tensor) -> np.ndarray:
        return t.numpy()

    @staticmethod
    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a)

    @staticmethod
    def open(mpc, arrays, bits: int = 64, xor: bool = False, packed: int | None = None) -> list:
        return mpc.open_np(arrays, bits, xor=xor, packed=packed)

    @staticmethod
    def open_xor_masked(mpc, pairs, bits: int, packed: int | None = None) -> list:
        """TorchOps.open_xor_masked of numpy arrays (the XOR writes dense words)."""
        return mpc.open_np([(x ^ m.view(x.dtype)).view(np.int64) for x, m in pairs], bits, xor=True, packed=packed)

    @staticmethod
    def add_p0(mpc, z, value):
        if 0 in mpc.parties:
            z[0] += value
        return z

    @staticmethod
    def xor_p0(mpc, z, value):
        if 0 in mpc.parties:
            z[0] ^= value
        return z

    @staticmethod
    def addmul_(z, x, y, scale: int = 1):
        z += scale * x * y if scale != 1 else x * y
        return z

    @staticmethod
    def fill(gen, out):
        return gen.fill_np_(out)

    @staticmethod
    def fill_pieces(gen, out):
        return gen.fill_pieces_np_(out)

    @staticmethod
    def sub_into(x, y, out):
        return np.subtract(x, y, out=out)

    @staticmethod
    def xor_into(x, y, out):
        return np.bitwise_xor(x, y, out=out)

    @staticmethod
    def and_into(x, y, out=None):
        return np.bitwise_and(x, y, out=out)


TORCH, NUMPY = TorchOps(), NumpyOps()


def ops_for(*tensors: torch.Tensor):
    """NUMPY when every tensor is a small int64 CPU tensor (ashare._small_cpu), else TORCH."""
    return NUMPY if all(_small_cpu(t) for t in tensors) else TORCH
