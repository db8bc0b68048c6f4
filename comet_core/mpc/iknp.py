"""IKNP OT extension (Ishai, Kilian, Nissim, Petrank, CRYPTO 2003), semi-honest, for measuring its CPU work.

m chosen-message 1-of-2 OTs of 128-bit messages from kappa = 128 base OTs, in batches of `batch` OTs:
  1. Base OTs (simulated: the seeds are handed over in the clear, the one part not run for real): the
     extension receiver R holds kappa seed pairs (k_i^0, k_i^1), the sender S its choice bits s and k_i^{s_i}.
  2. R: t_i = G(k_i^0), u_i = t_i ^ G(k_i^1) ^ r (G: AES-128-CTR keyed by the seed, as mpc/prg.py);
     sends u (kappa bits per OT, R -> S).
  3. S: q_i = G(k_i^{s_i}) ^ (s_i u_i) = t_i ^ (s_i r). Both transpose their kappa x m bit matrix: row j
     of the transpose is q_j = t_j ^ (r_j s).
  4. S: y_j^b = x_j^b ^ H(j, q_j ^ b s) for b = 0, 1, sends both (256 bits per OT, S -> R); R: x_j^{r_j} =
     y_j^{r_j} ^ H(j, t_j). H: the tweakable correlation-robust hash of fixed-key AES,
     H(j, x) = AES_fk(x ^ j) ^ (x ^ j) (Guo, Katz, Wang, Yu, S&P 2020, MMO construction).
Cost: kappa + 2 * 128 bits per OT, 2 messages; per OT the work is 2 kappa / 128 AES blocks of PRG (R),
kappa / 128 (S), two kappa x batch bit transposes and 3 AES blocks of hashing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KAPPA = 128
_ZERO_IV = bytes(16)


def _stream(key: bytes):
    return Cipher(algorithms.AES(key), modes.CTR(_ZERO_IV)).encryptor()


@dataclass
class Timer:
    """Seconds spent per kind of work (perf_counter), summed over both parties."""
    seconds: dict = field(default_factory=lambda: {"prg": 0.0, "transpose": 0.0, "hash": 0.0, "xor": 0.0})

    def add(self, kind: str, t0: float) -> float:
        t1 = time.perf_counter()
        self.seconds[kind] += t1 - t0
        return t1


_MASKS = ((np.uint64(7), np.uint64(0x00AA00AA00AA00AA)), (np.uint64(14), np.uint64(0x0000CCCC0000CCCC)),
          (np.uint64(28), np.uint64(0x00000000F0F0F0F0)))


def transpose_bits(mat: np.ndarray) -> np.ndarray:
    """(kappa, batch / 8) bytes, one bit column per OT -> (batch, kappa / 8) bytes, one row per OT.

    By 8 x 8 bit tiles: 8 rows of one byte column form a uint64 (bit 8a + k = row a, OT k), transposed in
    place by three masked shift-swaps (Hacker's Delight, transpose8), then the tiles are laid out by OT."""
    K, B = mat.shape
    x = np.ascontiguousarray(mat.reshape(K // 8, 8, B).transpose(0, 2, 1)).view(np.uint64)[..., 0]   # (K/8, B)
    for shift, mask in _MASKS:
        t = (x ^ (x >> shift)) & mask
        x = x ^ t ^ (t << shift)
    return np.ascontiguousarray(x[..., None].view(np.uint8).transpose(1, 2, 0)).reshape(B * 8, K // 8)


class Hash:
    """H(j, x) = AES_fk(x ^ j) ^ (x ^ j) over rows of 16 bytes, j the OT's index (fixed public key)."""

    def __init__(self, key: bytes = bytes(range(16))) -> None:
        self._enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()

    def __call__(self, rows: np.ndarray, start: int) -> np.ndarray:
        tweak = np.zeros((rows.shape[0], 2), dtype=np.uint64)
        tweak[:, 0] = np.arange(start, start + rows.shape[0], dtype=np.uint64)
        x = rows ^ tweak.view(np.uint8).reshape(-1, 16)
        return np.frombuffer(self._enc.update(x.tobytes()), dtype=np.uint8).reshape(-1, 16) ^ x


def extend(x0: np.ndarray, x1: np.ndarray, r: np.ndarray, batch: int = 1 << 15, timer: Timer | None = None):
    """Run steps 1-4 on m = len(r) OTs: x0, x1 (m, 16) uint8 messages, r (m,) choice bits.
    Returns (R's outputs (m, 16), bytes R -> S, bytes S -> R)."""
    m = len(r)
    if m % 8 or batch % 8:
        raise ValueError("the OT count and batch must be multiples of 8")
    timer = timer or Timer()
    # step 1: base OTs, simulated
    seeds = [(os.urandom(16), os.urandom(16)) for _ in range(KAPPA)]
    s = np.frombuffer(os.urandom(KAPPA // 8), dtype=np.uint8)
    s_bits = np.unpackbits(s, bitorder="little")
    r_streams = [(_stream(k0), _stream(k1)) for k0, k1 in seeds]
    s_streams = [_stream(seeds[i][s_bits[i]]) for i in range(KAPPA)]
    H = Hash()
    out = np.empty((m, 16), dtype=np.uint8)
    sent_r = sent_s = 0
    for start in range(0, m, batch):
        b = min(batch, m - start)
        zeros = bytes(b // 8)
        rb = np.packbits(r[start:start + b].astype(np.uint8), bitorder="little")        # (b / 8,)
        # step 2 (R)
        t0 = time.perf_counter()
        t_mat = np.empty((KAPPA, b // 8), dtype=np.uint8)
        u = np.empty_like(t_mat)
        for i, (g0, g1) in enumerate(r_streams):
            t_mat[i] = np.frombuffer(g0.update(zeros), dtype=np.uint8)
            u[i] = np.frombuffer(g1.update(zeros), dtype=np.uint8)
        t0 = timer.add("prg", t0)
        u ^= t_mat
        u ^= rb
        sent_r += u.nbytes
        # step 3 (S)
        t0 = timer.add("xor", t0)
        q_mat = np.empty_like(t_mat)
        for i, g in enumerate(s_streams):
            q_mat[i] = np.frombuffer(g.update(zeros), dtype=np.uint8)
        t0 = timer.add("prg", t0)
        q_mat[s_bits.astype(bool)] ^= u[s_bits.astype(bool)]
        t0 = timer.add("xor", t0)
        q = transpose_bits(q_mat)                                                       # (b, 16)
        t = transpose_bits(t_mat)
        t0 = timer.add("transpose", t0)
        # step 4
        h0, h1 = H(q, start), H(q ^ s, start)
        t0 = timer.add("hash", t0)
        y0, y1 = x0[start:start + b] ^ h0, x1[start:start + b] ^ h1
        sent_s += y0.nbytes + y1.nbytes
        t0 = timer.add("xor", t0)
        ht = H(t, start)
        t0 = timer.add("hash", t0)
        rc = r[start:start + b].astype(bool)
        out[start:start + b] = np.where(rc[:, None], y1, y0) ^ ht
        timer.add("xor", t0)
    return out, sent_r, sent_s
