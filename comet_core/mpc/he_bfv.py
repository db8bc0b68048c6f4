"""A real BFV matrix product on secret shares (SEAL through TenSEAL's sealapi), with Cheetah's packing.

The product y = x W + b of a shared x = x0 + x1 (mod 2^ell) and the server's plaintext W, b:

  1. P1 (the key owner) packs its share x1 into polynomials (Cheetah's coefficient packing, Huang et al.,
     USENIX Security 2022, sec. 3: for a block of T' rows, k' inputs and n' outputs with T' k' n' <= N,
     x[t, i] is the coefficient of z^(t k' n' + i)), encrypts them and sends them:
     in_cts = ceil(T/T') ceil(k/k') ciphertexts, P1 -> P0.
  2. P0 takes each to NTT form once, multiplies each by its weight polynomial (W[i, j] at
     z^(j k' + k' - 1 - i), in NTT form: the product pointwise), sums over the
     k-blocks, and adds a uniformly random polynomial R (every coefficient, so the client learns nothing
     of W from the coefficients it does not need). Coefficient t k' n' + j k' + k' - 1 of the result is
     (x1 W)[t, j] + R[that coefficient]; P0's share is (x0 W + b)[t, j] - R[...], computed in the clear.
     out_cts = ceil(T/T') ceil(n/n') ciphertexts, P0 -> P1.
  3. P1 decrypts and reads its share off those coefficients.
Plaintext modulus t = 2^ell (coefficient encoding needs no batching, so t need not be prime): the
shares of Z_2^64 reduce to Z_2^ell by dropping high bits, and the HE product is exact mod 2^ell; the
caller lifts back to Z_2^64 (mpc/he_linear.py). Noise flooding of the returned ciphertexts (Cheetah's
circuit privacy) is not applied: the returned ciphertexts have the same size either way.
Parameters: N = 8192, coefficient moduli {54, 54, 55, 55} (BOLT's he.cpp), 128-bit security by SEAL's
check (sec_level tc128: HomomorphicEncryption.org standard, Albrecht et al. 2018, Table 1, log2 q <= 218).
Ciphertexts (and P1's public key, which P0 needs only to encrypt an all-zero weight block) cross between the
parties as bytes (SEAL's serialisation, zstd-compressed): their lengths are what the ledger books. The steps
run per party: encrypt_input (P1), evaluate (P0), decrypt_output (P1); he_matmul runs all three.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import struct
import sys
import tempfile
import weakref

import numpy as np

POLY_DEGREE = 8192
COEFF_BITS = (54, 54, 55, 55)
MAX_PLAIN_BITS = 60                      # SEAL's bound on the plaintext modulus
SEAL_VERSION = (4, 3)                    # the serialisation header TenSEAL 0.3.18's SEAL writes and reads


def _seal_header(body: int) -> bytes:
    """SEAL's 16-byte serialisation header (magic 0xA15E, header size, version, no compression, total size)."""
    return struct.pack("<HBBBBHQ", 0xA15E, 16, *SEAL_VERSION, 0, 0, 16 + body)


def plaintext_bytes(coeffs: np.ndarray) -> bytes:
    """A non-NTT plaintext polynomial in SEAL's uncompressed serialisation: parms_id zero, the coefficient
    count, scale 1, then the coefficients as a DynArray (its own header, its size, the words)."""
    words = np.ascontiguousarray(coeffs, dtype=np.uint64)
    array = struct.pack("<Q", words.size) + words.tobytes()
    body = bytes(32) + struct.pack("<Qd", words.size, 1.0) + _seal_header(len(array)) + array
    return _seal_header(len(body)) + body


def _sealapi():
    try:
        import tenseal.sealapi as seal
    except ImportError:
        from comet_core.errors import CometError
        raise CometError("system.he_packing=cheetah in mode=exact needs TenSEAL: pip install -e '.[he]' "
                         "(tenseal==0.3.18)") from None
    return seal


@functools.lru_cache(maxsize=None)
def packing(T: int, k: int, n: int, N: int = POLY_DEGREE) -> tuple[int, int, int]:
    """(T', k', n') with T' k' n' <= N that sends the fewest ciphertexts (in + out), then fewest products."""
    best = None
    for tp in range(1, min(T, N) + 1):
        for kp in range(1, min(k, N // tp) + 1):
            np_ = min(n, N // (tp * kp))
            rows = -(-T // tp)
            cts = rows * (-(-k // kp) + -(-n // np_))
            key = (cts, rows * -(-k // kp) * -(-n // np_), -tp)
            if best is None or key < best[0]:
                best = (key, (tp, kp, np_))
    return best[1]


def op_counts(T: int, k: int, n: int) -> dict[str, int]:
    """The HE operations of he_matmul on a (T, k) @ (k, n) product (work kinds, comet_core/mpc/he_linear.py):
    P1 encrypts every input ciphertext and decrypts every result; P0 takes each input ciphertext to NTT form
    once and each result back (he_ntt), and multiplies each input ciphertext of a row block by one weight
    plaintext (taken to NTT form) per output ciphertext (an all-zero weight block, which it skips, still
    counted)."""
    tp, kp, np_ = packing(T, k, n)
    rows, cin, cout = -(-T // tp), -(-k // kp), -(-n // np_)
    return {"he_encrypt": rows * cin, "he_mul_plain_coeff": rows * cin * cout, "he_decrypt": rows * cout,
            "he_ntt": rows * (cin + cout)}


def ciphertext_counts(T: int, k: int, n: int) -> tuple[int, int]:
    """(P1 -> P0 input ciphertexts, P0 -> P1 output ciphertexts) of one (T, k) @ (k, n) product."""
    tp, kp, np_ = packing(T, k, n)
    rows = -(-T // tp)
    return rows * -(-k // kp), rows * -(-n // np_)


def serialise(obj) -> bytes:
    """SEAL's serialisation of a ciphertext or key (sealapi objects save to a path only)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "obj")
        obj.save(path)
        with open(path, "rb") as f:
            return f.read()


def deserialise(ctx, obj, blob: bytes):
    """Load `blob` into the empty SEAL object `obj` (a Ciphertext, PublicKey or GaloisKeys) and return it."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "obj")
        with open(path, "wb") as f:
            f.write(blob)
        obj.load(ctx, path)
    return obj


class BFV:
    """One party's BFV context: the key owner's (P1: secret and public key) or, from P1's serialised public
    key, the evaluator's (P0: parameters and public key only, no decryptor)."""

    def __init__(self, plain_bits: int, public_key: bytes | None = None) -> None:
        if not 2 <= plain_bits <= MAX_PLAIN_BITS:
            raise ValueError(f"plaintext modulus 2^{plain_bits}: SEAL allows at most 2^{MAX_PLAIN_BITS}")
        seal = self.seal = _sealapi()
        self.ell = plain_bits
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.BFV)
        parms.set_poly_modulus_degree(POLY_DEGREE)
        parms.set_coeff_modulus(seal.CoeffModulus.Create(POLY_DEGREE, list(COEFF_BITS)))
        parms.set_plain_modulus(seal.Modulus(1 << plain_bits))
        self.ctx = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)   # refuses < 128-bit parameters
        if self.ctx.parameters_error_message() != "valid":
            raise ValueError(f"BFV parameters refused by SEAL: {self.ctx.parameters_error_message()}")
        self._keys(public_key)
        self.evaluator = seal.Evaluator(self.ctx)

    def _keys(self, public_key: bytes | None) -> None:
        seal = self.seal
        if public_key is None:                                   # P1: makes the keys
            self.keygen = seal.KeyGenerator(self.ctx)
            self.public_key = seal.PublicKey()
            self.keygen.create_public_key(self.public_key)
            self.decryptor = seal.Decryptor(self.ctx, self.keygen.secret_key())
        else:                                                    # P0: P1's public key only
            self.keygen = self.decryptor = None
            self.public_key = deserialise(self.ctx, seal.PublicKey(), public_key)
        self.encryptor = seal.Encryptor(self.ctx, self.public_key)

    def public_key_bytes(self) -> bytes:
        return serialise(self.public_key)

    # -- encoding --------------------------------------------------------------------------------
    def plaintext(self, coeffs: np.ndarray):
        """A plaintext polynomial from N coefficients in [0, 2^ell), loaded from its serialisation (sealapi
        has no setter for coefficients; SEAL's hex polynomial syntax took 5 ms per polynomial, this 0.7)."""
        if not hasattr(self, "_tmp"):
            self._tmp = tempfile.mkdtemp(prefix="comet-bfv-")
            weakref.finalize(self, shutil.rmtree, self._tmp, True)
        words = np.asarray(coeffs, dtype=np.uint64)
        if words.size and int(words.max()) >> self.ell:
            raise ValueError(f"BFV.plaintext: a coefficient of 2^{int(words.max()).bit_length() - 1} or more is "
                             f"outside [0, 2^{self.ell})")
        path = os.path.join(self._tmp, "pt")
        with open(path, "wb") as f:
            f.write(plaintext_bytes(words))
        pt = self.seal.Plaintext()
        pt.load(self.ctx, path)
        return pt

    def to_bytes(self, ct) -> bytes:
        return serialise(ct)

    def from_bytes(self, blob: bytes):
        return deserialise(self.ctx, self.seal.Ciphertext(), blob)

    def noise_budget(self, ct) -> int:
        return self.decryptor.invariant_noise_budget(ct)


def _random_poly(ell: int) -> np.ndarray:
    """Uniform coefficients in [0, 2^ell) from the OS's cryptographic generator."""
    return np.frombuffer(os.urandom(8 * POLY_DEGREE), dtype=np.uint64) & np.uint64((1 << ell) - 1)


def _positions(T: int, k: int, n: int, r0: int, j0: int) -> np.ndarray:
    """(rows, outs): the coefficients of a result polynomial that hold y[r0 + t, j0 + j]."""
    tp, kp, np_ = packing(T, k, n)
    rows, outs = min(tp, T - r0), min(np_, n - j0)
    return np.arange(rows)[:, None] * kp * np_ + np.arange(outs)[None, :] * kp + kp - 1


def encrypt_input(bfv: BFV, x1: np.ndarray, n: int) -> list[bytes]:
    """Step 1 (P1): its share x1 (T, k) in [0, 2^ell), packed by blocks of T' rows and k' columns (row
    blocks outer), encrypted and serialised: in_cts ciphertexts."""
    T, k = x1.shape
    tp, kp, np_ = packing(T, k, n)
    t_i = np.arange(tp)[:, None]
    sent = []
    for r0 in range(0, T, tp):
        rows = min(tp, T - r0)
        for c0 in range(0, k, kp):
            cols = min(kp, k - c0)
            poly = np.zeros(POLY_DEGREE, dtype=np.uint64)
            poly[(t_i[:rows] * kp * np_ + np.arange(cols)[None, :]).ravel()] = x1[r0:r0 + rows, c0:c0 + cols].ravel()
            ct = bfv.seal.Ciphertext()
            bfv.encryptor.encrypt(bfv.plaintext(poly), ct)
            sent.append(bfv.to_bytes(ct))
    return sent


def evaluate(bfv: BFV, received: list[bytes], x0: np.ndarray, w: np.ndarray, b: np.ndarray | None):
    """Step 2 (P0): P1's ciphertexts times W, summed over the k-blocks, plus a uniformly random polynomial R
    per result; P0's share (x0 W + b - R at the result's coefficients) in the clear. x0: (T, k), w: (k, n),
    b: (n,), uint64 in [0, 2^ell). Returns (y0 (T, n), the serialised results: out_cts ciphertexts)."""
    ell, N = bfv.ell, POLY_DEGREE
    mask = np.uint64((1 << ell) - 1)
    T, k = x0.shape
    n = w.shape[1]
    tp, kp, np_ = packing(T, k, n)
    cin = -(-k // kp)
    if len(received) != -(-T // tp) * cin:
        raise ValueError(f"he_bfv.evaluate: {len(received)} input ciphertexts for a ({T}, {k}) x ({k}, {n}) product "
                         f"that sends {-(-T // tp) * cin}")
    ev = bfv.evaluator
    # [y0]: (T, n), P0's share of the product with its own share, in the clear (uint64 wraps mod 2^64)
    y0 = (x0 @ w) & mask if T else np.zeros((0, n), np.uint64)
    if b is not None:
        y0 = (y0 + b[None, :]) & mask
    out = []
    for bi_row, r0 in enumerate(range(0, T, tp)):
        rows = min(tp, T - r0)
        cts = [bfv.from_bytes(blob) for blob in received[bi_row * cin:(bi_row + 1) * cin]]
        for ct in cts:                                               # NTT form once: each product pointwise
            ev.transform_to_ntt_inplace(ct)
        level = cts[0].parms_id() if cts else None
        for j0 in range(0, n, np_):
            outs = min(np_, n - j0)
            acc = None
            for bi, c0 in enumerate(range(0, k, kp)):
                cols = min(kp, k - c0)
                wp = np.zeros(N, dtype=np.uint64)
                jj, ii = np.meshgrid(np.arange(outs), np.arange(cols), indexing="ij")
                wp[(jj * kp + kp - 1 - ii).ravel()] = w[c0 + ii, j0 + jj].ravel()
                if not wp.any():
                    continue
                pt = bfv.seal.Plaintext()
                ev.transform_to_ntt(bfv.plaintext(wp), level, pt)   # the weight block in NTT form
                prod = bfv.seal.Ciphertext()
                ev.multiply_plain(cts[bi], pt, prod)
                if acc is None:
                    acc = prod
                else:
                    ev.add_inplace(acc, prod)
            R = _random_poly(ell)
            if acc is None:                                          # an all-zero weight block
                acc = bfv.seal.Ciphertext()
                bfv.encryptor.encrypt(bfv.plaintext(np.zeros(N, np.uint64)), acc)
            else:
                ev.transform_from_ntt_inplace(acc)
            ev.add_plain_inplace(acc, bfv.plaintext(R))
            y0[r0:r0 + rows, j0:j0 + outs] = (y0[r0:r0 + rows, j0:j0 + outs] - R[_positions(T, k, n, r0, j0)]) & mask
            out.append(bfv.to_bytes(acc))
    return y0, out


def decrypt_output(bfv: BFV, received: list[bytes], T: int, k: int, n: int) -> np.ndarray:
    """Step 3 (P1): decrypt P0's results and read its share y1 (T, n) off their coefficients; a result whose
    noise budget is exhausted is refused (its decryption would be wrong, silently)."""
    tp, kp, np_ = packing(T, k, n)
    y1 = np.zeros((T, n), dtype=np.uint64)
    blobs = iter(received)
    for r0 in range(0, T, tp):
        rows = min(tp, T - r0)
        for j0 in range(0, n, np_):
            outs = min(np_, n - j0)
            got = bfv.from_bytes(next(blobs))
            if bfv.noise_budget(got) <= 0:
                raise RuntimeError(f"BFV noise budget exhausted after {-(-k // kp)} products at t = 2^{bfv.ell}: "
                                   "the decryption would be wrong")
            pt = bfv.seal.Plaintext()
            bfv.decryptor.decrypt(got, pt)
            have = pt.coeff_count()
            y1[r0:r0 + rows, j0:j0 + outs] = np.array(
                [[pt.data(int(p)) if p < have else 0 for p in row] for row in _positions(T, k, n, r0, j0)],
                dtype=np.uint64)
    return y1


def he_matmul(bfv: BFV, x0: np.ndarray, x1: np.ndarray, w: np.ndarray, b: np.ndarray | None):
    """Steps 1-3 of the module docstring in one process (`bfv` plays both parties). x0, x1: (T, k), w: (k, n),
    b: (n,), all uint64 in [0, 2^ell).

    Returns (y0, y1, in_bytes, out_bytes): the shares (T, n) of x W + b mod 2^ell and the serialised
    length of every ciphertext sent each way."""
    return one_process(sys.modules[__name__], bfv, x0, x1, w, b)


def one_process(steps, ctx, x0: np.ndarray, x1: np.ndarray, w: np.ndarray, b: np.ndarray | None):
    """A packing's three party steps (the module `steps`: encrypt_input, evaluate, decrypt_output) with one
    context playing both parties: (y0, y1, in_bytes, out_bytes)."""
    T, k = x1.shape
    n = w.shape[1]
    sent = steps.encrypt_input(ctx, x1, n)
    y0, back = steps.evaluate(ctx, sent, x0, w, b)
    y1 = steps.decrypt_output(ctx, back, T, k, n)
    return y0, y1, [len(s) for s in sent], [len(s) for s in back]


def plain_bits_for(frac_bits: int, headroom: int = 20) -> int:
    """ell for a product at scale 2f: |x W + b| < 2^(ell - 1 - 2f) is the range it carries exactly."""
    return min(MAX_PLAIN_BITS, 2 * frac_bits + headroom)


def value_range(frac_bits: int) -> float:
    return math.ldexp(1.0, plain_bits_for(frac_bits) - 1 - 2 * frac_bits)
