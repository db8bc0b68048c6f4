"""Distributed comparison functions (DCF): dealer-made keys for f(y) = beta * [y < alpha], batched.

The construction is Boyle, Chandran, Gilboa, Gupta, Ishai, Kumar, Rathee, "Function Secret Sharing for
Mixed-Mode and Fixed-Point Secure Computation" (Eurocrypt 2021), Fig. 1, the DCF that SIGMA (PETS 2024)
and Orca (S&P 2024) build their comparisons on; written here for many independent keys at once (one key
per element: its own alpha, beta and seeds), with the output group G = (Z_2^64)^w.

Keys (per element, `nb`-bit domain, the bits of y read most significant first):
  * party b's root seed s_b (128 bits, the lowest bit cleared; its control bit is t_b = b);
  * per level i: a seed correction s_cw (128 bits), two control-bit corrections t_cw^L, t_cw^R, and a
    value correction V_cw in G (w words); one more correction in G for the leaf.
  The corrections are the same in both keys. Root seeds are uniform and independent of alpha and beta,
  so they come free from the dealer-party streams; only the corrections are sent, to both parties:
  KEY_BYTES(nb, w) = ceil((nb * (128 + 2 + 64 w) + 64 w) / 8) per element and party.

Gen (the dealer, both parties' seeds at once), level i with alpha's bit a:
  1. Expand both seeds: G(s_b) = s^L || t^L || s^R || t^R || v^L || v^R.
  2. Keep = L if a = 0 else R (the path of alpha), Lose the other child.
  3. s_cw = s_0^Lose ^ s_1^Lose; V_cw = (-1)^t_1 [v_1^Lose - v_0^Lose - V_alpha + beta [Lose = L]];
     t_cw^L = t_0^L ^ t_1^L ^ a ^ 1, t_cw^R = t_0^R ^ t_1^R ^ a.
  4. V_alpha += v_0^Keep - v_1^Keep + (-1)^t_1 V_cw; s_b = s_b^Keep ^ t_b s_cw; t_b = t_b^Keep ^ t_b t_cw^Keep.
  Leaf: CW = (-1)^t_1 [conv(s_1) - conv(s_0) - V_alpha].
Eval (party b, public y), level i with y's bit c:
  1. Expand: the child c's seed and control bit, and its value v^c (only the blocks that child needs);
     corrected by t: s ^= t s_cw, t ^= t t_cw^c.
  2. V += (-1)^b [v^c + t V_cw].
  Leaf: V += (-1)^b [conv(s) + t CW]. Then V_0 + V_1 = beta [y < alpha] in G.
Off alpha's path both parties hold the same seed and control bit, so their terms cancel; the level where
y leaves the path adds beta exactly when y goes left where alpha goes right (y < alpha).

The PRG: fixed-key AES-128 in the Matyas-Meyer-Oseas mode, G_j(s) = AES_K(s ^ j) ^ s ^ j for block j
(a public key K; correlation robust for the known offsets j under a secret uniform s: Guo, Katz, Wang,
Yu, "Efficient and Secure Multiparty Computation from Fixed-Key Block Ciphers", S&P 2020, as SIGMA and
libraries such as Google's distributed_point_functions use it). A fixed key means one AES context for
every seed: each tree level is one ECB call over all elements (and both parties' seeds, in the dealer
and in the simulation), through the `cryptography` library that the engine's streams already use
(comet_core/mpc/prg.py): AES-NI at a few GB/s, against a numba AES that would be a table-based
re-implementation of the cipher, slower and side-channel prone. Blocks: 0 the left child's seed, 1 the
right child's, then w blocks of values (w = 1: v^L, v^R are the two words of block 2; even w: v^L in
blocks 2 .. 2 + w/2, v^R after). Eval needs 1 + ceil(w / 2) blocks per element and level, Gen 2 + w
per seed.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

FIXED_KEY = hashlib.sha256(b"comet/dcf/mmo-fixed-key/v1").digest()[:16]   # public (MMO mode)
_LSB_CLEAR = np.uint64(~np.uint64(1))


def key_bits(nb: int, w: int) -> int:
    """Bits of one element's corrections (what the dealer sends each party): nb levels of
    s_cw (128) + t_cw^L, t_cw^R (2) + V_cw (64 w), and the leaf's 64 w."""
    return nb * (128 + 2 + 64 * w) + 64 * w


def key_bytes(nb: int, w: int) -> int:
    """One element's key as sent: whole bytes."""
    return (key_bits(nb, w) + 7) // 8


def _cipher():
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    return Cipher(algorithms.AES(FIXED_KEY), modes.ECB())


_CIPHER = None


def mmo(blocks: np.ndarray) -> np.ndarray:
    """AES_K(x) ^ x for every 128-bit block of `blocks` (..., 2) uint64 (C-contiguous): one ECB call."""
    global _CIPHER
    if _CIPHER is None:
        _CIPHER = _cipher()
    blocks = np.ascontiguousarray(blocks)
    out = np.empty(blocks.nbytes + 16, dtype=np.uint8)              # update_into wants 15 spare bytes
    _CIPHER.encryptor().update_into(memoryview(blocks.reshape(-1)).cast("B"), out)
    enc = out[:blocks.nbytes].view(np.uint64).reshape(blocks.shape)
    enc ^= blocks
    return enc


def _tweak(j) -> np.ndarray:
    """The offset of block j as a 128-bit (lo, hi) pair: j in the low word (seeds have bit 0 clear, j < 2^62)."""
    j = np.asarray(j, dtype=np.uint64)
    return np.stack([j, np.zeros_like(j)], axis=-1)


def _expand(seeds: np.ndarray, which: np.ndarray) -> np.ndarray:
    """G's blocks `which` of every seed: seeds (M, 2), which (M, k) or (k,) block indices -> (M, k, 2)."""
    inp = seeds[:, None, :] ^ _tweak(which)
    return mmo(inp)


def _seed_and_bit(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A child's seed (bit 0 cleared) and control bit (that bit) from its block (..., 2)."""
    t = (block[..., 0] & np.uint64(1)).astype(np.uint8)
    s = block.copy()
    s[..., 0] &= _LSB_CLEAR
    return s, t


def _values(blocks: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """v^L, v^R (..., w) int64 from the value blocks (..., w, 2) of a full expansion."""
    words = blocks.reshape(*blocks.shape[:-2], 2 * w).view(np.int64)
    return words[..., :w], words[..., w:]


def _check_w(w: int) -> None:
    if w != 1 and w % 2:
        raise ValueError(f"DCF payload width must be 1 or even, got {w}")


def _conv(seeds: np.ndarray, w: int) -> np.ndarray:
    """conv(s) in G: the first w value words of G(s) (a fresh expansion of the leaf seed), (M, w) int64."""
    nblk = 1 if w == 1 else w // 2
    blocks = _expand(seeds, np.arange(2, 2 + nblk))                   # (M, nblk, 2)
    return blocks.reshape(seeds.shape[0], 2 * nblk).view(np.int64)[:, :w].copy()


@dataclass
class Keys:
    """DCF keys of n elements: the parties' root seeds and the common corrections (numpy arrays).

    seeds (P, n, 2) uint64 (P = the parties held); cw_s (nb, n, 2) uint64; cw_t (nb, n, 2) uint8
    (t_cw^L, t_cw^R); cw_v (nb + 1, n, w) int64 (the last row: the leaf's correction)."""

    seeds: np.ndarray
    cw_s: np.ndarray
    cw_t: np.ndarray
    cw_v: np.ndarray


def _bits_msb_first(v: np.ndarray, nb: int, i: int) -> np.ndarray:
    return ((v >> np.uint64(nb - 1 - i)) & np.uint64(1)).astype(np.uint8)


def gen(alpha: np.ndarray, beta: np.ndarray, seeds: np.ndarray, nb: int) -> Keys:
    """Keys for f_k(y) = beta_k [y < alpha_k] of every element k (steps in the module docstring).

    alpha (n,) uint64 in [0, 2^nb); beta (n, w) int64; seeds (2, n, 2) uint64: both parties' root seeds
    (uniform; bit 0 is cleared here). Cost: nb + 1 ECB calls over 2 n (2 + w) blocks (the leaf: 2 n)."""
    n, w = beta.shape
    _check_w(w)
    s = seeds.copy()
    s[..., 0] &= _LSB_CLEAR
    t = np.zeros((2, n), dtype=np.uint8)
    t[1] = 1
    v_alpha = np.zeros((n, w), dtype=np.int64)
    cw_s = np.empty((nb, n, 2), dtype=np.uint64)
    cw_t = np.empty((nb, n, 2), dtype=np.uint8)
    cw_v = np.empty((nb + 1, n, w), dtype=np.int64)
    all_blocks = np.arange(2 + w)
    for i in range(nb):
        a = _bits_msb_first(alpha, nb, i)                                    # (n,)
        g = _expand(s.reshape(2 * n, 2), all_blocks).reshape(2, n, 2 + w, 2)
        sl, tl = _seed_and_bit(g[:, :, 0])
        sr, tr = _seed_and_bit(g[:, :, 1])
        vl, vr = _values(g[:, :, 2:], w)                                      # (2, n, w)
        go_r = a.astype(bool)                                                 # keep R where a = 1
        s_keep = np.where(go_r[None, :, None], sr, sl)
        s_lose = np.where(go_r[None, :, None], sl, sr)
        v_keep = np.where(go_r[None, :, None], vr, vl)
        v_lose = np.where(go_r[None, :, None], vl, vr)
        sign1 = 1 - 2 * t[1].astype(np.int64)                                # (-1)^t_1, (n,)
        cw_s[i] = s_lose[0] ^ s_lose[1]
        vcw = v_lose[1] - v_lose[0] - v_alpha
        vcw += beta * a[:, None].astype(np.int64)                             # Lose = L exactly when a = 1
        vcw *= sign1[:, None]
        cw_v[i] = vcw
        v_alpha += v_keep[0] - v_keep[1] + sign1[:, None] * vcw
        cw_t[i, :, 0] = tl[0] ^ tl[1] ^ a ^ 1
        cw_t[i, :, 1] = tr[0] ^ tr[1] ^ a
        t_keep = np.where(go_r[None], tr, tl)                                 # (2, n)
        tcw_keep = np.where(go_r, cw_t[i, :, 1], cw_t[i, :, 0])
        s = s_keep ^ (cw_s[i][None] * t[:, :, None].astype(np.uint64))
        t = t_keep ^ (t & tcw_keep[None])
    conv = _conv(s.reshape(2 * n, 2), w).reshape(2, n, w)
    cw_v[nb] = (1 - 2 * t[1].astype(np.int64))[:, None] * (conv[1] - conv[0] - v_alpha)
    return Keys(seeds, cw_s, cw_t, cw_v)


def eval_(parties, y: np.ndarray, keys: Keys) -> np.ndarray:
    """Each held party's share of beta [y < alpha]: (P, n, w) int64 (P = len(parties), in that order).

    y (n,) uint64 in [0, 2^nb), public; keys.seeds (P, n, 2) the held parties' root seeds.
    Cost: nb + 1 ECB calls over P n (1 + ceil(w / 2)) blocks (the leaf: P n ceil(w / 2))."""
    nb, n, w = keys.cw_s.shape[0], keys.cw_s.shape[1], keys.cw_v.shape[2]
    P = len(parties)
    b = np.asarray(parties, dtype=np.uint8)
    sign = (1 - 2 * b.astype(np.int64))[:, None, None]                         # (-1)^b, (P, 1, 1)
    s = keys.seeds.reshape(P, n, 2).copy()
    s[..., 0] &= _LSB_CLEAR
    t = np.broadcast_to(b[:, None], (P, n)).copy()
    acc = np.zeros((P, n, w), dtype=np.int64)
    vblk = 1 if w == 1 else w // 2
    for i in range(nb):
        c = _bits_msb_first(y, nb, i)                                        # (n,)
        which = np.empty((n, 1 + vblk), dtype=np.uint64)
        which[:, 0] = c
        if w == 1:
            which[:, 1] = 2
        else:
            which[:, 1:] = 2 + c[:, None].astype(np.uint64) * vblk + np.arange(vblk, dtype=np.uint64)
        g = _expand(s.reshape(P * n, 2), np.broadcast_to(which, (P, n, 1 + vblk)).reshape(P * n, 1 + vblk))
        g = g.reshape(P, n, 1 + vblk, 2)
        s_new, t_new = _seed_and_bit(g[:, :, 0])
        words = g[:, :, 1:].reshape(P, n, 2 * vblk).view(np.int64)
        if w == 1:
            v = np.where(c.astype(bool)[None, :, None], words[..., 1:2], words[..., 0:1])
        else:
            v = words
        tm = t.astype(np.int64)[..., None]                                   # (P, n, 1)
        acc += sign * (v + tm * keys.cw_v[i][None])
        s = s_new ^ (keys.cw_s[i][None] * t[..., None].astype(np.uint64))
        tcw = np.where(c.astype(bool), keys.cw_t[i, :, 1], keys.cw_t[i, :, 0])
        t = t_new ^ (t & tcw[None])
    conv = _conv(s.reshape(P * n, 2), w).reshape(P, n, w)
    acc += sign * (conv + t.astype(np.int64)[..., None] * keys.cw_v[nb][None])
    return acc


def evaluations(nb: int, w: int, n: int, parties: int) -> dict:
    """Work of one Gen and one Eval of n keys (AES blocks), for benchmarks and docstrings."""
    vblk = 1 if w == 1 else w // 2
    return {"gen_blocks": 2 * n * (nb * (2 + w) + vblk), "eval_blocks": parties * n * (nb * (1 + vblk) + vblk),
            "key_bytes": 2 * n * key_bytes(nb, w), "levels": nb, "log2_n": math.log2(max(n, 1))}
