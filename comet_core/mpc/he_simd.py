"""BOLT's HE matrix product, for real: BFV slot (SIMD) packing of the input by columns, the weights by
generalised diagonals, baby-step giant-step rotations (Pang et al., S&P 2024, sec. 4: compact packing,
BSGS; SEAL through TenSEAL's sealapi, as BOLT's code uses SEAL).

Layout. BFV batching with N = 8192 gives a 2 x S matrix of slots, S = N / 2 = 4096, rotations cyclic
within each row of S. Rows of the input are padded to T_b = min(2^ceil(log2 T), S) (row blocks of T_b
tokens if T > S), columns grouped in segments of L = min(S / T_b, 2^ceil(log2 max(k, n))); a segment
occupies one period of L T_b slots, column-major (slot c T_b + t holds X[t, a L + c], BOLT's column
packing), repeated S / (L T_b) times so that a row rotation by d T_b moves column c + d to column c.
A ciphertext carries two segments (one per row):
    in_cts  = ceil(T / T_b) ceil(ceil(k / L) / 2),   out_cts = ceil(T / T_b) ceil(ceil(n / L) / 2)
which is BOLT's ceil(T k / N), ceil(T n / N) whenever T is a power of two (bert.cpp at 128 tokens:
12 and 48 for 768 -> 3072). The protocol, for shares x0 (P0), x1 (P1) of x and P0's W, b:

  1. ss_to_he: P1 encrypts its packed share, in_cts ciphertexts P1 -> P0; P0 adds its packed share
     (BOLT's ss_to_he_server: add_plain of its share, no message of its own).
  2. P0 evaluates Y = X W + b: for every input ciphertext, itself and its row swap (rotate_columns:
     segment 2c + 1 reaching output row 0), the B - 1 baby-step rotations by beta T_b; for every output
     ciphertext and giant step g, the sum of those times the diagonals pre-rotated by -g B T_b (in the
     clear), rotated by g B T_b; B = ceil(sqrt D), G = ceil(D / B), D = L diagonals, or D =
     2^ceil(log2 k) when the input fits one segment (its columns then repeat with period D inside it, so
     a wide W needs only D diagonals). Diagonal d of block (a, b): W[a L + (j + d) mod D, b L + j] at
     column j.
  3. he_to_ss: P0 adds b - R for a uniformly random R (every slot) and keeps R as its share (BOLT's
     he_to_ss_server: ct - out, out uniform mod p); out_cts ciphertexts P0 -> P1, which decrypts.
Plaintext modulus: a batching prime p of plain_bits(frac) bits (he_bfv.plain_bits_for: x W + b at scale
2f with 20 bits of integer range); the shares enter Z_p by their signed value (the caller's ideal
conversion, what BOLT's ss_to_he_server does locally: neg_mod(signed_val(share), plain_mod)) and leave it
by the caller's lift (BOLT's gt_p_sub, priced). Rotation (Galois) keys: one SEAL object per Galois element,
made by P1 and sent once, with its first ciphertexts of a product that rotates by it (the caller books them).
The steps run per party: encrypt_input (P1), evaluate (P0), decrypt_output (P1); he_matmul runs all three.
"""

from __future__ import annotations

import functools
import math
import os
import sys

import numpy as np

from comet_core.mpc import he_bfv

N = he_bfv.POLY_DEGREE
S = N // 2                                  # slots per row; row rotations are cyclic in S


def _pow2(v: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, v))))


@functools.lru_cache(maxsize=None)
def layout(T: int, k: int, n: int) -> dict:
    """The packing of one (T, k) @ (k, n) product (module docstring)."""
    tb = min(_pow2(T), S)
    L = min(S // tb, _pow2(max(k, n)))
    seg_in, seg_out = -(-k // L), -(-n // L)
    blocks = -(-T // tb)
    D = _pow2(k) if seg_in == 1 else L          # one input segment: its columns tile with period D
    B = math.isqrt(D - 1) + 1 if D > 1 else 1
    G = -(-D // B)
    return dict(tb=tb, L=L, D=D, seg_in=seg_in, seg_out=seg_out, blocks=blocks, B=B, G=G,
                in_cts=blocks * -(-seg_in // 2), out_cts=blocks * -(-seg_out // 2))


def op_counts(T: int, k: int, n: int) -> dict[str, int]:
    """The HE operations of he_matmul on a (T, k) @ (k, n) product (work kinds, comet_core/mpc/he_linear.py),
    per row block: each input ciphertext encrypted, its row swap and 2 (B - 1) baby-step rotations; per output
    ciphertext D products per input ciphertext and variant (itself, its swap) that meets a weight segment
    (he_matmul skips the others; a diagonal of zero weights is still counted), G - 1 giant-step rotations and
    one decryption; he_ntt: each baby step taken to NTT form once (the products are pointwise there, the
    diagonals taken to NTT form with them), each giant step's sum back before its rotation."""
    lay = layout(T, k, n)
    si, so = lay["seg_in"], lay["seg_out"]
    n_in, n_out = -(-si // 2), -(-so // 2)
    B, G, D, blocks = lay["B"], lay["G"], lay["D"], lay["blocks"]
    pairs = sum(1 for o in range(n_out) for c in range(n_in) for var in (0, 1)
                if any(2 * c + (r ^ var) < si and 2 * o + r < so for r in (0, 1)))
    groups = sum(1 for o in range(n_out) if any(2 * c + (r ^ var) < si and 2 * o + r < so
                                                 for c in range(n_in) for var in (0, 1) for r in (0, 1)))
    return {"he_encrypt": blocks * n_in, "he_mul_plain": blocks * pairs * D,
            "he_rotate": blocks * (n_in * (1 + 2 * (B - 1)) + n_out * (G - 1)), "he_decrypt": blocks * n_out,
            "he_ntt": blocks * (n_in * 2 * B + groups * G)}


def ciphertext_counts(T: int, k: int, n: int) -> tuple[int, int]:
    """(P1 -> P0 input ciphertexts, P0 -> P1 output ciphertexts) of one (T, k) @ (k, n) product."""
    lay = layout(T, k, n)
    return lay["in_cts"], lay["out_cts"]


def galois_steps(T: int, k: int, n: int) -> tuple[int, ...]:
    """The left row rotations he_matmul's evaluation of this product needs (baby and giant steps)."""
    lay = layout(T, k, n)
    tb, B, G = lay["tb"], lay["B"], lay["G"]
    return tuple(sorted({beta * tb for beta in range(1, B)} | {g * B * tb for g in range(1, G)}))


def galois_elements(steps: tuple[int, ...]) -> list[int]:
    """SEAL's Galois elements of these left row rotations and the row swap: 3^step mod 2N and 2N - 1."""
    return sorted({2 * N - 1, *(pow(3, s, 2 * N) for s in steps)})


@functools.lru_cache(maxsize=None)
def batching_prime(plain_bits: int) -> int:
    """The plaintext modulus SlotBFV takes: SEAL's batching prime of this many bits for N (p = 1 mod 2N)."""
    seal = he_bfv._sealapi()
    return int(seal.PlainModulus.Batching(N, plain_bits).value())


class SlotBFV:
    """One party's batching context: the key owner's (P1: secret and public key, the Galois keys it makes for
    each set of rotations) or, from P1's serialised public key, the evaluator's (P0: the Galois keys P1 sent)."""

    def __init__(self, plain_bits: int, public_key: bytes | None = None) -> None:
        seal = self.seal = he_bfv._sealapi()
        self.plain_bits = plain_bits
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.BFV)
        parms.set_poly_modulus_degree(N)
        parms.set_coeff_modulus(seal.CoeffModulus.Create(N, list(he_bfv.COEFF_BITS)))
        parms.set_plain_modulus(seal.PlainModulus.Batching(N, plain_bits))
        self.ctx = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)   # refuses < 128-bit parameters
        if self.ctx.parameters_error_message() != "valid":
            raise ValueError(f"BFV parameters refused by SEAL: {self.ctx.parameters_error_message()}")
        self.p = parms.plain_modulus().value()
        he_bfv.BFV._keys(self, public_key)
        self.evaluator = seal.Evaluator(self.ctx)
        self.encoder = seal.BatchEncoder(self.ctx)
        self._galois: dict = {}

    public_key_bytes = he_bfv.BFV.public_key_bytes

    def galois_key(self, element: int):
        """The Galois key of one element (a row rotation's 3^step mod 2N, or the row swap's 2N - 1), one SEAL
        object each so that a key is made and sent once whatever products need it: made here by the key
        owner; the evaluator has those it loaded (load_galois)."""
        if element not in self._galois:
            if self.keygen is None:
                raise RuntimeError(f"he_simd: the evaluator has no Galois key for element {element} (the key "
                                   "owner sends it with its first ciphertexts of a product that rotates by it)")
            keys = self.seal.GaloisKeys()
            self.keygen.create_galois_keys([int(element)], keys)
            self._galois[element] = keys
        return self._galois[element]

    def load_galois(self, element: int, blob: bytes) -> None:
        self._galois[element] = he_bfv.deserialise(self.ctx, self.seal.GaloisKeys(), blob)

    def rotation_key(self, step: int):
        """The Galois key of a left row rotation by `step` slots."""
        return self.galois_key(pow(3, step, 2 * N))

    def swap_key(self):
        return self.galois_key(2 * N - 1)

    def encode(self, slots: np.ndarray):
        pt = self.seal.Plaintext()
        self.encoder.encode(slots.tolist(), pt)
        return pt

    def decode(self, pt) -> np.ndarray:
        return np.asarray(self.encoder.decode_uint64(pt), dtype=np.uint64)

    to_bytes = he_bfv.BFV.to_bytes
    from_bytes = he_bfv.BFV.from_bytes


def uniform_mod(p: int, size: int) -> np.ndarray:
    """Uniform integers in [0, p) from the OS's cryptographic generator (rejection sampling)."""
    bits = p.bit_length()
    out = np.empty(0, dtype=np.uint64)
    while out.size < size:
        draw = np.frombuffer(os.urandom(8 * 2 * size), dtype=np.uint64) & np.uint64((1 << bits) - 1)
        out = np.concatenate([out, draw[draw < np.uint64(p)]])
    return out[:size]


def _pack(x: np.ndarray, lay: dict, seg0: int, period: int | None = None) -> np.ndarray:
    """Slots (2, S) of one ciphertext: segments seg0, seg0 + 1 of x's (T_b, k) row block, column-major,
    each period repeated across its row; `period` < L repeats the columns within the segment too."""
    tb, L = lay["tb"], lay["L"]
    rows = np.zeros((2, L * tb), dtype=np.uint64)
    T, k = x.shape
    for r in range(2):
        c0 = (seg0 + r) * L
        cols = max(0, min(L, k - c0))
        if cols:
            block = np.zeros((tb, L), dtype=np.uint64)
            block[:T, :cols] = x[:, c0:c0 + cols]
            if period is not None and period < L:
                block = np.tile(block[:, :period], (1, L // period))
            rows[r] = block.T.ravel()                  # slot c T_b + t <- x[t, c0 + c]
    return np.tile(rows, (1, S // (L * tb)))


def _diagonal(w: np.ndarray, lay: dict, a: int, b: int, d: int) -> np.ndarray:
    """Period (L T_b,) of diagonal d of W's block (a, b), each column value repeated over the T_b tokens."""
    tb, L = lay["tb"], lay["L"]
    j = np.arange(L)
    i = a * L + (j + d) % lay["D"]
    o = b * L + j
    ok = (i < w.shape[0]) & (o < w.shape[1])
    col = np.zeros(L, dtype=np.uint64)
    col[ok] = w[i[ok], o[ok]]
    return np.repeat(col, tb)


def _rotated(row: np.ndarray, steps: int) -> np.ndarray:
    """A row of S slots rotated left by `steps` (SEAL's rotate_rows direction)."""
    return np.roll(row, -steps)


def encrypt_input(ctx: SlotBFV, x1: np.ndarray, n: int) -> list[bytes]:
    """Step 1, P1's part (ss_to_he): its packed share x1 (T, k) in [0, p), row blocks outer, encrypted and
    serialised: in_cts ciphertexts."""
    T, k = x1.shape
    lay = layout(T, k, n)
    sent = []
    for r0 in range(0, T, lay["tb"]):
        for c in range(-(-lay["seg_in"] // 2)):
            ct = ctx.seal.Ciphertext()
            ctx.encryptor.encrypt(ctx.encode(_pack(x1[r0:r0 + lay["tb"]], lay, 2 * c, lay["D"]).ravel()), ct)
            sent.append(ctx.to_bytes(ct))
    return sent


def evaluate(ctx: SlotBFV, received: list[bytes], x0: np.ndarray, w: np.ndarray, b: np.ndarray | None):
    """Steps 1 (P0's part: add its packed share), 2 and 3 (mask every slot with b - R) at P0. x0: (T, k) in
    [0, p), w: (k, n), b: (n,) in [0, p). Returns (y0 (T, n): P0's share R at the outputs' slots, the
    serialised results: out_cts ciphertexts)."""
    T, k = x0.shape
    n = w.shape[1]
    p = np.uint64(ctx.p)
    lay = layout(T, k, n)
    tb, D, B, G = lay["tb"], lay["D"], lay["B"], lay["G"]
    n_in, n_out = -(-lay["seg_in"] // 2), -(-lay["seg_out"] // 2)
    if len(received) != lay["in_cts"]:
        raise ValueError(f"he_simd.evaluate: {len(received)} input ciphertexts for a ({T}, {k}) x ({k}, {n}) "
                         f"product that sends {lay['in_cts']}")
    ev, seal = ctx.evaluator, ctx.seal
    y0 = np.zeros((T, n), dtype=np.uint64)
    out = []
    for bi_row, r0 in enumerate(range(0, T, tb)):
        xr0 = x0[r0:r0 + tb]
        rows = xr0.shape[0]
        baby = []                                                     # [c][variant][beta]
        for c in range(n_in):
            got = ctx.from_bytes(received[bi_row * n_in + c])
            ev.add_plain_inplace(got, ctx.encode(_pack(xr0, lay, 2 * c, D).ravel()))
            swapped = seal.Ciphertext()
            ev.rotate_columns(got, ctx.swap_key(), swapped)
            per = []
            for v in (got, swapped):
                steps = [v]
                for beta in range(1, B):
                    rot = seal.Ciphertext()
                    ev.rotate_rows(v, beta * tb, ctx.rotation_key(beta * tb), rot)
                    steps.append(rot)
                per.append(steps)
            for steps in per:                                         # NTT form: the products pointwise
                for v in steps:
                    ev.transform_to_ntt_inplace(v)
            baby.append(per)
        level = baby[0][0][0].parms_id() if baby else None
        for o in range(n_out):                                        # 2. BSGS diagonals
            total = None
            for g in range(G):
                inner = None
                for c in range(n_in):
                    for var in (0, 1):
                        for beta in range(B):
                            d = g * B + beta
                            if d >= D:
                                break
                            diag = np.zeros((2, S), dtype=np.uint64)
                            for r in range(2):
                                a, bo = 2 * c + (r ^ var), 2 * o + r
                                if a < lay["seg_in"] and bo < lay["seg_out"]:
                                    period = _diagonal(w, lay, a, bo, d)
                                    diag[r] = _rotated(np.tile(period, S // period.size), -g * B * tb)
                            if not diag.any():
                                continue
                            pt = seal.Plaintext()
                            ev.transform_to_ntt(ctx.encode(diag.ravel()), level, pt)
                            prod = seal.Ciphertext()
                            ev.multiply_plain(baby[c][var][beta], pt, prod)
                            if inner is None:
                                inner = prod
                            else:
                                ev.add_inplace(inner, prod)
                if inner is None:
                    continue
                ev.transform_from_ntt_inplace(inner)                  # rotations act on coefficient form
                if g:
                    ev.rotate_rows_inplace(inner, g * B * tb, ctx.rotation_key(g * B * tb))
                if total is None:
                    total = inner
                else:
                    ev.add_inplace(total, inner)
            bias = np.zeros((tb, n), dtype=np.uint64)                 # 3. he_to_ss: + b - R
            if b is not None:
                bias[:] = b[None, :]
            R = uniform_mod(int(p), N)
            mask = (_pack(bias, lay, 2 * o).ravel() + (p - R)) % p
            if total is None:                                         # an all-zero weight block
                total = seal.Ciphertext()
                ctx.encryptor.encrypt(ctx.encode(np.zeros(N, np.uint64)), total)
            ev.add_plain_inplace(total, ctx.encode(mask))
            out.append(ctx.to_bytes(total))
            Rs = R.reshape(2, S)
            for r, idx, cols in _outputs(lay, n, rows, o):
                y0[r0:r0 + rows, cols] = Rs[r][idx]
    return y0, out


def _outputs(lay: dict, n: int, rows: int, o: int):
    """(row r of the slot matrix, slot indices (rows, cols), output columns) of output ciphertext o: slot
    j T_b + t of the first period holds Y[t, (2 o + r) L + j]."""
    tb, L = lay["tb"], lay["L"]
    for r in range(2):
        bo = 2 * o + r
        cols = max(0, min(L, n - bo * L))
        if cols:
            yield r, np.arange(cols)[None, :] * tb + np.arange(rows)[:, None], slice(bo * L, bo * L + cols)


def decrypt_output(ctx: SlotBFV, received: list[bytes], T: int, k: int, n: int) -> np.ndarray:
    """Step 3, P1's part: decrypt the results and read its share y1 (T, n) off their slots; a result whose
    noise budget is exhausted is refused (its decryption would be wrong, silently)."""
    lay = layout(T, k, n)
    tb, n_out = lay["tb"], -(-lay["seg_out"] // 2)
    if len(received) != lay["out_cts"]:
        raise ValueError(f"he_simd.decrypt_output: {len(received)} results for a product that returns {lay['out_cts']}")
    y1 = np.zeros((T, n), dtype=np.uint64)
    blobs = iter(received)
    for r0 in range(0, T, tb):
        rows = min(tb, T - r0)
        for o in range(n_out):
            got = ctx.from_bytes(next(blobs))
            if ctx.decryptor.invariant_noise_budget(got) <= 0:
                raise RuntimeError(f"BFV noise budget exhausted after {lay['D']} diagonals at p of "
                                   f"{ctx.plain_bits} bits: the decryption would be wrong")
            pt = ctx.seal.Plaintext()
            ctx.decryptor.decrypt(got, pt)
            slots = ctx.decode(pt).reshape(2, S)
            for r, idx, cols in _outputs(lay, n, rows, o):
                y1[r0:r0 + rows, cols] = slots[r][idx]
    return y1


def he_matmul(ctx: SlotBFV, x0: np.ndarray, x1: np.ndarray, w: np.ndarray, b: np.ndarray | None):
    """Steps 1-3 of the module docstring in one process (`ctx` plays both parties). x0, x1: (T, k) shares in
    [0, p), w: (k, n), b: (n,) in [0, p).

    Returns (y0, y1, in_bytes, out_bytes): shares (T, n) of x W + b mod p and the serialised length of
    every ciphertext sent each way."""
    return he_bfv.one_process(sys.modules[__name__], ctx, x0, x1, w, b)
