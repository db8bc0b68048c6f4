"""A real BFV matrix product on secret shares (SEAL through TenSEAL's sealapi), with Cheetah's packing.

The product y = x W + b of a shared x = x0 + x1 (mod 2^ell) and the server's plaintext W, b:

  1. P1 (the key owner) packs its share x1 into polynomials (Cheetah's coefficient packing, Huang et al.,
     USENIX Security 2022, sec. 3: for a block of T' rows, k' inputs and n' outputs with T' k' n' <= N,
     x[t, i] is the coefficient of z^(t k' n' + i)), encrypts them and sends them:
     in_cts = ceil(T/T') ceil(k/k') ciphertexts, P1 -> P0.
  2. P0 multiplies each by its weight polynomial (W[i, j] at z^(j k' + k' - 1 - i)), sums over the
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
Ciphertexts cross between the parties as bytes (SEAL's serialisation, zstd-compressed): their lengths
are what the ledger books.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import struct
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
    P1 encrypts every input ciphertext and decrypts every result; P0 multiplies each input ciphertext of a row
    block by one plaintext per output ciphertext (an all-zero weight block, which it skips, still counted)."""
    tp, kp, np_ = packing(T, k, n)
    rows, cin, cout = -(-T // tp), -(-k // kp), -(-n // np_)
    return {"he_encrypt": rows * cin, "he_mul_plain_coeff": rows * cin * cout, "he_decrypt": rows * cout}


def ciphertext_counts(T: int, k: int, n: int) -> tuple[int, int]:
    """(P1 -> P0 input ciphertexts, P0 -> P1 output ciphertexts) of one (T, k) @ (k, n) product."""
    tp, kp, np_ = packing(T, k, n)
    rows = -(-T // tp)
    return rows * -(-k // kp), rows * -(-n // np_)


class BFV:
    """The key owner's context (P1) and the evaluator's view (P0: public key and parameters only)."""

    def __init__(self, plain_bits: int) -> None:
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
        keys = seal.KeyGenerator(self.ctx)
        pk = seal.PublicKey()
        keys.create_public_key(pk)
        self.encryptor = seal.Encryptor(self.ctx, pk)
        self.decryptor = seal.Decryptor(self.ctx, keys.secret_key())
        self.evaluator = seal.Evaluator(self.ctx)

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
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "ct")
            ct.save(path)
            with open(path, "rb") as f:
                return f.read()

    def from_bytes(self, blob: bytes):
        ct = self.seal.Ciphertext()
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "ct")
            with open(path, "wb") as f:
                f.write(blob)
            ct.load(self.ctx, path)
        return ct

    def noise_budget(self, ct) -> int:
        return self.decryptor.invariant_noise_budget(ct)


def _random_poly(ell: int) -> np.ndarray:
    """Uniform coefficients in [0, 2^ell) from the OS's cryptographic generator."""
    return np.frombuffer(os.urandom(8 * POLY_DEGREE), dtype=np.uint64) & np.uint64((1 << ell) - 1)


def he_matmul(bfv: BFV, x0: np.ndarray, x1: np.ndarray, w: np.ndarray, b: np.ndarray | None):
    """Steps 1-3 of the module docstring. x0, x1: (T, k), w: (k, n), b: (n,), all uint64 in [0, 2^ell).

    Returns (y0, y1, in_bytes, out_bytes): the shares (T, n) of x W + b mod 2^ell and the serialised
    length of every ciphertext sent each way."""
    ell, N = bfv.ell, POLY_DEGREE
    mask = np.uint64((1 << ell) - 1)
    T, k = x1.shape
    n = w.shape[1]
    tp, kp, np_ = packing(T, k, n)
    ev = bfv.evaluator
    # [y0]: (T, n), P0's share of the product with its own share, in the clear (uint64 wraps mod 2^64)
    y0 = (x0 @ w) & mask if T else np.zeros((0, n), np.uint64)
    if b is not None:
        y0 = (y0 + b[None, :]) & mask
    y1 = np.zeros((T, n), dtype=np.uint64)
    in_bytes, out_bytes = [], []
    t_i = np.arange(tp)[:, None]
    for r0 in range(0, T, tp):
        rows = min(tp, T - r0)
        sent = []                                                   # step 1 (P1)
        for c0 in range(0, k, kp):
            cols = min(kp, k - c0)
            poly = np.zeros(N, dtype=np.uint64)
            idx = (t_i[:rows] * kp * np_ + np.arange(cols)[None, :]).ravel()
            poly[idx] = x1[r0:r0 + rows, c0:c0 + cols].ravel()
            ct = bfv.seal.Ciphertext()
            bfv.encryptor.encrypt(bfv.plaintext(poly), ct)
            blob = bfv.to_bytes(ct)
            in_bytes.append(len(blob))
            sent.append(blob)
        received = [bfv.from_bytes(blob) for blob in sent]          # step 2 (P0)
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
                prod = bfv.seal.Ciphertext()
                ev.multiply_plain(received[bi], bfv.plaintext(wp), prod)
                if acc is None:
                    acc = prod
                else:
                    ev.add_inplace(acc, prod)
            pos = (t_i[:rows] * kp * np_ + np.arange(outs)[None, :] * kp + kp - 1)    # (rows, outs)
            R = _random_poly(ell)
            if acc is None:                                          # an all-zero weight block
                acc = bfv.seal.Ciphertext()
                bfv.encryptor.encrypt(bfv.plaintext(np.zeros(N, np.uint64)), acc)
            ev.add_plain_inplace(acc, bfv.plaintext(R))
            y0[r0:r0 + rows, j0:j0 + outs] = (y0[r0:r0 + rows, j0:j0 + outs] - R[pos]) & mask
            blob = bfv.to_bytes(acc)
            out_bytes.append(len(blob))
            got = bfv.from_bytes(blob)                               # step 3 (P1)
            if bfv.noise_budget(got) <= 0:
                raise RuntimeError(f"BFV noise budget exhausted after {-(-k // kp)} products at t = 2^{ell}: "
                                   "the decryption would be wrong")
            pt = bfv.seal.Plaintext()
            bfv.decryptor.decrypt(got, pt)
            have = pt.coeff_count()
            y1[r0:r0 + rows, j0:j0 + outs] = np.array(
                [[pt.data(int(p)) if p < have else 0 for p in row] for row in pos], dtype=np.uint64)
    return y0, y1, in_bytes, out_bytes


def plain_bits_for(frac_bits: int, headroom: int = 20) -> int:
    """ell for a product at scale 2f: |x W + b| < 2^(ell - 1 - 2f) is the range it carries exactly."""
    return min(MAX_PLAIN_BITS, 2 * frac_bits + headroom)


def value_range(frac_bits: int) -> float:
    return math.ldexp(1.0, plain_bits_for(frac_bits) - 1 - 2 * frac_bits)
