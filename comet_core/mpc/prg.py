"""Keys and pseudo-random generators: one key per pair of parties, AES-128-CTR streams.

Every piece of shared randomness belongs to a pair of parties that both hold its key and nobody else
does: the dealer with P0 and with P1 (correlated randomness), the client and the model owner with P0
(the zero-cost half of each input sharing) and with P1, and P0 with P1. A stream is AES-128 in
counter mode under a key derived from the pair's key and a stream label (HKDF-style, SHA-256), so
streams are independent and a party can never predict a stream whose key it does not hold (unlike
the previous splitmix64, which is invertible: P0 could recover its own state and predict P1's share).

Keys come from the OS (`os.urandom`) unless a reproducibility seed is given: then every party derives
every key from the seed, which is a declared **insecure** mode for tests, benchmarks and
reproducible ledgers (whoever knows the seed knows every share). Runs record which it was.
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
import torch

PAIRS = (
    ("dealer", "P0"), ("dealer", "P1"),
    ("client", "P0"), ("client", "P1"),
    ("model_owner", "P0"), ("model_owner", "P1"),
    ("P0", "P1"),
)
# each party's own secret randomness (the dealer's masks, say) is the "pair" (party, party)
PRIVATE = tuple((p, p) for p in ("dealer", "client", "model_owner", "P0", "P1"))
_ZEROS = bytes(1 << 20)
SMALL_READ = 1 << 14    # reads up to this many bytes come from keystream made ahead (PRG._small)
AHEAD = 1 << 17         # bytes of keystream made ahead at once (one AES context)


class PRG:
    """AES-128-CTR keystream as uniform ring elements (int64), read in order like a stream.

    `ring(shape)` returns the next numel * 8 bytes of keystream as int64 words; the counter advances
    by whole 16-byte blocks, so a stream read in pieces equals the same stream read at once only when
    every piece is an even number of words (odd pieces skip the rest of their last block).
    """

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        if len(key) != 16:
            raise ValueError("PRG key must be 16 bytes")
        self._cipher = lambda counter: Cipher(algorithms.AES(key), modes.CTR(counter.to_bytes(16, "big")))
        self.block = 0  # next unused 16-byte counter block
        # keystream of blocks [_ahead_block, _ahead_block + _ahead_blocks), made ahead for small reads:
        # its bytes (uint8) and the same memory as int64 words (two per block)
        self._ahead = np.zeros(0, dtype=np.uint8)
        self._words = self._ahead.view(np.int64)
        self._ahead_block = 0
        self._ahead_blocks = 0

    def _ahead_at(self, nb: int) -> int:
        """Advance the counter by nb blocks (16 * nb <= SMALL_READ) and return the word offset of those
        blocks in the keystream made ahead in AHEAD-byte pieces: one AES context per AHEAD bytes instead
        of one per read (the keystream is a function of the block index only)."""
        off = self.block - self._ahead_block
        if off < 0 or off + nb > self._ahead_blocks:
            buf = np.empty(AHEAD + 16, dtype=np.uint8)           # update_into wants 15 spare bytes
            self._cipher(self.block).encryptor().update_into(_ZEROS[:AHEAD], buf)
            self._ahead = buf[:AHEAD]
            self._words = self._ahead.view(np.int64)
            self._ahead_block, self._ahead_blocks, off = self.block, AHEAD // 16, 0
        self.block += nb
        return 2 * off

    def _small(self, n: int) -> memoryview | None:
        """The next n bytes (n <= SMALL_READ) from the keystream made ahead: the same bytes and counter
        advance as `bytes(n)`. None for larger reads."""
        if n > SMALL_READ:
            return None
        w = self._ahead_at(-(-n // 16))
        return memoryview(self._ahead)[8 * w:8 * w + n]

    def fill_np_(self, out: np.ndarray) -> np.ndarray:
        """`fill_` for a C-contiguous int64 numpy array (a view of a CPU tensor's memory, say): the same
        words and counter advance, without the torch-side checks and views (the small protocols' reads)."""
        nw = out.size
        if 8 * nw > SMALL_READ:
            self.fill_(torch.from_numpy(out))
        elif nw:
            w = self._ahead_at((nw + 1) >> 1)
            out.reshape(-1)[:] = self._words[w:w + nw]
        return out

    def fill_pieces_np_(self, out: np.ndarray) -> np.ndarray:
        """out[0], out[1], ... filled in turn (each as `fill_np_(out[i])`: every piece starts at a block
        boundary) with one read of the keystream made ahead when they fit in SMALL_READ bytes together.
        `out` is an int64 numpy array (pieces, ...) whose pieces out[i] are C-contiguous."""
        k = out.shape[0]
        nw = out.size // k if k else 0
        stride = 2 * ((nw + 1) >> 1)          # words per piece, rounded up to whole blocks
        if not nw:
            return out
        if 8 * stride * k > SMALL_READ:
            for i in range(k):
                self.fill_np_(out[i])
            return out
        w = self._ahead_at(k * stride >> 1)
        src = self._words[w:w + k * stride]
        out[...] = src.reshape(k, stride)[:, :nw].reshape(out.shape)   # a strided `out` (rows of a buffer) too
        return out

    def bytes(self, n: int) -> bytearray:
        small = self._small(n)
        if small is not None:
            out = bytearray(n + 15)
            out[:n] = small
            return out
        enc = self._cipher(self.block).encryptor()
        self.block += -(-n // 16)
        out = bytearray(n + 15)  # update_into wants 15 spare bytes
        done = 0
        while done < n:
            k = min(len(_ZEROS), n - done)
            enc.update_into(_ZEROS[:k] if k < len(_ZEROS) else _ZEROS, memoryview(out)[done:])
            done += k
        return out

    def fill_(self, out: torch.Tensor) -> torch.Tensor:
        """Write the next out.numel() words of the stream into `out` (contiguous int64 on the CPU), in
        place: the same words and counter advance as `ring(out.shape)`, without the intermediate buffer."""
        n = 8 * out.numel()
        if n == 0:
            return out
        if out.device.type != "cpu" or not out.is_contiguous() or out.dtype != torch.int64:
            raise ValueError("PRG.fill_ needs a contiguous int64 CPU tensor")
        if n <= SMALL_READ:
            w = self._ahead_at(-(-n // 16))
            out.view(-1).numpy()[:] = self._words[w:w + n // 8]
            return out
        view = memoryview(out.view(-1).numpy()).cast("B")
        enc = self._cipher(self.block).encryptor()
        self.block += -(-n // 16)
        body = n - 16                        # update_into wants 15 spare bytes after each piece: all but
        done = 0                             # the last 16 bytes straight into `out` (CTR is a stream)
        while done < body:
            k = min(len(_ZEROS), body - done)
            enc.update_into(_ZEROS[:k] if k < len(_ZEROS) else _ZEROS, view[done:])
            done += k
        tail = bytearray(n - done + 15)      # the last <= 16 bytes through a small buffer
        enc.update_into(_ZEROS[:n - done], tail)
        view[done:] = memoryview(tail)[:n - done]
        return out

    def fill_at_(self, word: int, out: torch.Tensor) -> torch.Tensor:
        """The stream's words from word index `word` on (counted from the stream's start) into `out`
        (contiguous int64 CPU), the stream's own position unchanged: a kept mask read again where it was
        drawn (the keystream is a function of the block index only)."""
        saved = self.block
        head = word & 1                                    # a word in the middle of a 16-byte block
        try:
            self.block = word >> 1
            if not head:
                return self.fill_(out)
            tmp = torch.empty(out.numel() + 1, dtype=torch.int64)
            self.fill_(tmp)
            out.view(-1).copy_(tmp[1:])
            return out
        finally:
            self.block = saved

    def ring(self, shape, device="cpu") -> torch.Tensor:
        n = math.prod(shape)
        words = torch.empty(tuple(shape), dtype=torch.int64)
        if n == 0:
            return words.to(device)
        self.fill_(words)   # the same words and counter advance as bytes(8 n), written in place
        return words if torch.device(device).type == "cpu" else words.to(device)


def _kdf(*parts: bytes) -> bytes:
    return hashlib.sha256(b"comet/v1\0" + b"\0".join(parts)).digest()[:16]


class Keys:
    """The pairwise keys of one deployment. `source` is 'os' (secure) or 'seed' (reproducible, insecure)."""

    def __init__(self, keys: dict[tuple[str, str], bytes], source: str) -> None:
        self._keys = keys
        self.source = source

    @classmethod
    def from_os(cls) -> "Keys":
        return cls({p: os.urandom(16) for p in PAIRS + PRIVATE}, "os")

    @classmethod
    def from_seed(cls, seed: int) -> "Keys":
        s = str(int(seed)).encode()
        return cls({p: _kdf(b"seed", s, p[0].encode(), p[1].encode()) for p in PAIRS + PRIVATE}, "seed")

    def key(self, a: str, b: str) -> bytes:
        pair = (a, b) if (a, b) in self._keys else (b, a)
        if pair not in self._keys:
            raise KeyError(f"no key for the pair {a}-{b}; pairs: {', '.join('-'.join(p) for p in PAIRS)}")
        return self._keys[pair]

    def adopt(self, a: str, b: str, key: bytes) -> None:
        """Use `key` for the pair (a, b): the key the two agreed on (e.g. P0 and P1 over their TLS link)."""
        pair = (a, b) if (a, b) in self._keys else (b, a)
        if pair not in self._keys or not isinstance(key, bytes) or len(key) != 16:
            raise KeyError(f"cannot adopt a key for the pair {a}-{b} (16 bytes, a known pair)")
        self._keys[pair] = key

    def prg(self, a: str, b: str, stream: str) -> PRG:
        """A fresh generator of one named stream under the key of the pair (a, b)."""
        return PRG(_kdf(b"stream", self.key(a, b), stream.encode()))
