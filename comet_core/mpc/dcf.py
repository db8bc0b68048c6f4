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
import importlib.util
import logging
import threading
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

NB = 63   # the comparison's DCF domain (mpc/fss.py): the low 63 bits of c; here so the dealer need not import fss
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


_LOCAL = threading.local()


def _encryptor():
    """This thread's ECB encryptor of the fixed key, made once: ECB keeps no state between blocks, so one
    context serves every call (a context per call cost ~30 us, 3,000 times per ReLU 128x3072)."""
    enc = getattr(_LOCAL, "enc", None)
    if enc is None:
        enc = _LOCAL.enc = _cipher().encryptor()
    return enc


def mmo(blocks: np.ndarray) -> np.ndarray:
    """AES_K(x) ^ x for every 128-bit block of `blocks` (..., 2) uint64 (C-contiguous): one ECB call."""
    blocks = np.ascontiguousarray(blocks)
    out = np.empty(blocks.nbytes + 16, dtype=np.uint8)              # update_into wants 15 spare bytes
    _encryptor().update_into(memoryview(blocks.reshape(-1)).cast("B"), out)
    enc = out[:blocks.nbytes].view(np.uint64).reshape(blocks.shape)
    enc ^= blocks
    return enc


def aes_into(blocks: np.ndarray, out: np.ndarray) -> np.ndarray:
    """AES_K of every block of `blocks` (..., 2) uint64 (C-contiguous) into `out` (a uint8 buffer of at
    least blocks.nbytes + 16 bytes), one ECB call; returns out's first blocks.nbytes as `blocks`' shape.
    The numba level steps add the MMO feed-forward (^ x) themselves."""
    _encryptor().update_into(memoryview(blocks.reshape(-1)).cast("B"), out)
    return out[:blocks.nbytes].view(np.uint64).reshape(blocks.shape)


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


def _gen_level_np(g, a, s, t, v_alpha, beta, cw_s, cw_t, cw_v) -> None:
    """Gen's level steps 2-4 (module docstring) on the expansions g (2, n, 2 + w, 2) uint64, alpha's bits
    a (n,) uint8: writes this level's cw_s (n, 2), cw_t (n, 2), cw_v (n, w); updates s, t, v_alpha."""
    w = beta.shape[1]
    sl, tl = _seed_and_bit(g[:, :, 0])
    sr, tr = _seed_and_bit(g[:, :, 1])
    vl, vr = _values(g[:, :, 2:], w)                                          # (2, n, w)
    go_r = a.astype(bool)[None, :, None]                                      # keep R where a = 1
    s_keep, s_lose = np.where(go_r, sr, sl), np.where(go_r, sl, sr)
    v_keep, v_lose = np.where(go_r, vr, vl), np.where(go_r, vl, vr)
    sign1 = (1 - 2 * t[1].astype(np.int64))[:, None]                          # (-1)^t_1
    cw_s[...] = s_lose[0] ^ s_lose[1]
    vcw = v_lose[1] - v_lose[0] - v_alpha
    vcw += beta * a[:, None].astype(np.int64)                                 # Lose = L exactly when a = 1
    vcw *= sign1
    cw_v[...] = vcw
    v_alpha += v_keep[0] - v_keep[1] + sign1 * vcw
    cw_t[:, 0] = tl[0] ^ tl[1] ^ a ^ 1
    cw_t[:, 1] = tr[0] ^ tr[1] ^ a
    t_keep = np.where(go_r[..., 0], tr, tl)                                   # (2, n)
    tcw_keep = np.where(a.astype(bool), cw_t[:, 1], cw_t[:, 0])
    s[...] = s_keep ^ (cw_s[None] * t[:, :, None].astype(np.uint64))
    t[...] = t_keep ^ (t & tcw_keep[None])


def _eval_level_np(g, c, s, t, acc, sign, cw_s, cw_t, cw_v) -> None:
    """Eval's level steps 1-2 on the expansions g (P, n, 1 + vblk, 2) uint64 of the child c (n,) uint8
    (block 0: its seed; then its value blocks, or for w = 1 the block of both values): updates s, t, acc."""
    P, n, w = acc.shape
    s_new, t_new = _seed_and_bit(g[:, :, 0])
    words = g[:, :, 1:].reshape(P, n, -1).view(np.int64)
    v = np.where(c.astype(bool)[None, :, None], words[..., 1:2], words[..., 0:1]) if w == 1 else words
    acc += sign[:, None, None] * (v + t.astype(np.int64)[..., None] * cw_v[None])
    s[...] = s_new ^ (cw_s[None] * t[..., None].astype(np.uint64))
    tcw = np.where(c.astype(bool), cw_t[:, 1], cw_t[:, 0])
    t[...] = t_new ^ (t & tcw[None])


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
    beta = np.ascontiguousarray(beta)
    fused = _kernels()
    if fused is None:
        for i in range(nb):
            a = _bits_msb_first(alpha, nb, i)                                # (n,)
            g = _expand(s.reshape(2 * n, 2), np.arange(2 + w)).reshape(2, n, 2 + w, 2)
            _gen_level_np(g, a, s, t, v_alpha, beta, cw_s[i], cw_t[i], cw_v[i])
    else:   # numba: the MMO inputs s ^ j live in `inp`; each level reads them and writes the next ones
        inp = np.empty((2, n, 2 + w, 2), dtype=np.uint64)
        _inputs_np(s, np.zeros(n, np.uint8), 0, inp)
        buf = np.empty(inp.nbytes + 16, dtype=np.uint8)
        alpha = np.ascontiguousarray(alpha, dtype=np.uint64)
        for i in range(nb):
            fused[0](aes_into(inp, buf), inp, alpha, nb - 1 - i, t, v_alpha, beta, cw_s[i], cw_t[i], cw_v[i])
        s = np.ascontiguousarray(inp[:, :, 0])                               # block 0's input: s ^ 0
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
    sign = 1 - 2 * b.astype(np.int64)                                         # (-1)^b, (P,)
    s = keys.seeds.reshape(P, n, 2).copy()
    s[..., 0] &= _LSB_CLEAR
    t = np.broadcast_to(b[:, None], (P, n)).copy()
    acc = np.zeros((P, n, w), dtype=np.int64)
    vblk = 1 if w == 1 else w // 2
    mode = -1 if w == 1 else vblk                                             # _inputs_np's block choice
    cw_s, cw_t, cw_v = (np.ascontiguousarray(a) for a in (keys.cw_s, keys.cw_t, keys.cw_v))
    inp = np.empty((P, n, 1 + vblk, 2), dtype=np.uint64)
    fused = _kernels()
    if fused is None:
        for i in range(nb):
            c = _bits_msb_first(y, nb, i)                                    # (n,)
            _inputs_np(s, c, mode, inp)                                       # child c's blocks only
            _eval_level_np(mmo(inp), c, s, t, acc, sign, cw_s[i], cw_t[i], cw_v[i])
    else:   # numba: each level reads its MMO inputs and writes the next level's (for y's next bit)
        _inputs_np(s, _bits_msb_first(y, nb, 0), mode, inp)
        buf = np.empty(inp.nbytes + 16, dtype=np.uint8)
        y = np.ascontiguousarray(y, dtype=np.uint64)
        for i in range(nb):
            fused[1](aes_into(inp, buf), inp, y, nb - 1 - i, nb - 2 - i, mode, t, acc, sign,
                     cw_s[i], cw_t[i], cw_v[i])
        s = np.ascontiguousarray(inp[:, :, 0])                               # the next bit is 0: s ^ 0
    conv = _conv(s.reshape(P * n, 2), w).reshape(P, n, w)
    acc += sign[:, None, None] * (conv + t.astype(np.int64)[..., None] * cw_v[nb][None])
    return acc


# -- the level steps in numba (the same values as the numpy steps above, fused per element) ----------

USE_NUMBA = importlib.util.find_spec("numba") is not None   # False: the numpy steps (tests, no numba)
_compiled = None


def _kernels():
    """numba's fused level steps (gen, eval), compiled once and cached on disk next to this module, or None
    (numba missing or failing to compile: numpy's steps, the same keys and shares, with a log line)."""
    global _compiled, USE_NUMBA
    if not USE_NUMBA:
        return None
    if _compiled is None:
        try:
            import numba

            jit = numba.njit(cache=True, nogil=True)   # one thread: on two busy cores threads only contend
            _compiled = (jit(_gen_level_loop), jit(_eval_level_loop))
            _probe(_compiled)
        except Exception as e:  # noqa: BLE001 - any compile failure: the numpy steps give the same keys
            log.warning("dcf: numba kernels unavailable (%s); using numpy's level steps", e)
            USE_NUMBA = False
            return None
    return _compiled


def _inputs_np(s, c, vblk, out) -> None:
    """MMO inputs s ^ j (P, n, k, 2). vblk = 0: every block j = 0 .. k - 1 of every seed (Gen). Eval:
    child c's seed block (j = c), then its value blocks: vblk = -1 (w = 1) block 2, which holds both
    children's values; vblk > 0 (even w) the vblk blocks from 2 + c vblk."""
    k = out.shape[2]
    if vblk == 0:
        j = np.broadcast_to(np.arange(k, dtype=np.uint64), (len(c), k))
    else:
        j = np.empty((len(c), k), dtype=np.uint64)
        j[:, 0] = c
        j[:, 1:] = 2 + np.arange(k - 1, dtype=np.uint64)
        if vblk > 0:
            j[:, 1:] += c[:, None].astype(np.uint64) * np.uint64(vblk)
    out[..., 0] = s[:, :, None, 0] ^ j[None]
    out[..., 1] = s[:, :, None, 1]


def _probe(kernels) -> None:
    """Compile both kernels on a one-element level (raises here, before any key is made, if they fail)."""
    z = np.zeros
    kernels[0](z((2, 1, 4, 2), np.uint64), z((2, 1, 4, 2), np.uint64), z(1, np.uint64), 0, z((2, 1), np.uint8),
               z((1, 2), np.int64), z((1, 2), np.int64), z((1, 2), np.uint64), z((1, 2), np.uint8), z((1, 2), np.int64))
    kernels[1](z((2, 1, 2, 2), np.uint64), z((2, 1, 2, 2), np.uint64), z(1, np.uint64), 1, 0, 1, z((2, 1), np.uint8),
               z((2, 1, 2), np.int64), np.ones(2, np.int64), z((1, 2), np.uint64), z((1, 2), np.uint8),
               z((1, 2), np.int64))


def _gen_level_loop(enc, inp, alpha, shift, t, v_alpha, beta, cw_s, cw_t, cw_v):
    """_gen_level_np per element (numba), fused: G(s) = enc ^ inp (MMO's feed-forward), alpha's bit
    (alpha >> shift) & 1, and the next level's inputs s' ^ j written over inp."""
    n, w = beta.shape
    nblk = inp.shape[2]
    one = np.uint64(1)
    clear = ~one
    for k in range(n):
        a = (alpha[k] >> np.uint64(shift)) & one
        keep = np.int64(a)                        # child kept: 0 = L, 1 = R
        lose = 1 - keep
        sign1 = 1 - 2 * np.int64(t[1, k])
        g0l0 = enc[0, k, lose, 0] ^ inp[0, k, lose, 0]
        g1l0 = enc[1, k, lose, 0] ^ inp[1, k, lose, 0]
        cw_s[k, 0] = (g0l0 ^ g1l0) & clear
        cw_s[k, 1] = enc[0, k, lose, 1] ^ inp[0, k, lose, 1] ^ enc[1, k, lose, 1] ^ inp[1, k, lose, 1]
        tl = (enc[0, k, 0, 0] ^ inp[0, k, 0, 0] ^ enc[1, k, 0, 0] ^ inp[1, k, 0, 0]) & one
        tr = (enc[0, k, 1, 0] ^ inp[0, k, 1, 0] ^ enc[1, k, 1, 0] ^ inp[1, k, 1, 0]) & one
        ctl = tl ^ a ^ one
        ctr = tr ^ a
        cw_t[k, 0] = np.uint8(ctl)
        cw_t[k, 1] = np.uint8(ctr)
        for j in range(w):
            jl = lose * w + j
            jk = keep * w + j
            bl, hl = 2 + jl // 2, jl % 2
            bk, hk = 2 + jk // 2, jk % 2
            vl0 = np.int64(enc[0, k, bl, hl] ^ inp[0, k, bl, hl])
            vl1 = np.int64(enc[1, k, bl, hl] ^ inp[1, k, bl, hl])
            vk0 = np.int64(enc[0, k, bk, hk] ^ inp[0, k, bk, hk])
            vk1 = np.int64(enc[1, k, bk, hk] ^ inp[1, k, bk, hk])
            vcw = vl1 - vl0 - v_alpha[k, j]
            if keep == 1:
                vcw += beta[k, j]
            vcw *= sign1
            cw_v[k, j] = vcw
            v_alpha[k, j] += vk0 - vk1 + sign1 * vcw
        tcw = ctr if keep == 1 else ctl
        for p in range(2):
            tp = np.uint64(t[p, k])
            lo = enc[p, k, keep, 0] ^ inp[p, k, keep, 0]
            hi = enc[p, k, keep, 1] ^ inp[p, k, keep, 1]
            t[p, k] = np.uint8((lo & one) ^ (tp & tcw))
            lo &= clear
            if tp:
                lo ^= cw_s[k, 0]
                hi ^= cw_s[k, 1]
            for j in range(nblk):
                inp[p, k, j, 0] = lo ^ np.uint64(j)
                inp[p, k, j, 1] = hi


def _eval_level_loop(enc, inp, y, shift, next_shift, mode, t, acc, sign, cw_s, cw_t, cw_v):
    """_eval_level_np per element (numba), fused: G = enc ^ inp, y's bit (y >> shift) & 1, and the next
    level's inputs for the next bit (none after the last level: next_shift < 0 writes s ^ 0)."""
    P, n, w = acc.shape
    nblk = inp.shape[2]
    one = np.uint64(1)
    clear = ~one
    for k in range(n):
        ck = np.int64((y[k] >> np.uint64(shift)) & one)
        cn = np.int64((y[k] >> np.uint64(next_shift)) & one) if next_shift >= 0 else 0
        for p in range(P):
            tp = t[p, k]
            lo = enc[p, k, 0, 0] ^ inp[p, k, 0, 0]
            hi = enc[p, k, 0, 1] ^ inp[p, k, 0, 1]
            tn = np.uint8(lo & one)
            lo &= clear
            if tp:
                lo ^= cw_s[k, 0]
                hi ^= cw_s[k, 1]
                tn ^= cw_t[k, ck]
            for j in range(w):
                if w == 1:
                    v = np.int64(enc[p, k, 1, ck] ^ inp[p, k, 1, ck])
                else:
                    v = np.int64(enc[p, k, 1 + j // 2, j % 2] ^ inp[p, k, 1 + j // 2, j % 2])
                if tp:
                    v += cw_v[k, j]
                acc[p, k, j] += sign[p] * v
            t[p, k] = tn
            for j in range(nblk):
                if j == 0:
                    b = cn
                else:
                    b = 2 + (j - 1) + (cn * mode if mode > 0 else 0)
                inp[p, k, j, 0] = lo ^ np.uint64(b)
                inp[p, k, j, 1] = hi
