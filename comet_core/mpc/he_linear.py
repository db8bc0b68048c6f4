"""Iron's and BOLT's HE linear layers (`system.linear=he`): y = x W + b with BFV, the client (P1, the key
owner) encrypting its share of x, the server (P0, the model owner) holding W and b in the clear.

Packings (`system.he_packing`), each run for real in exact mode (SEAL through TenSEAL's sealapi):
  * `bolt` (bolt's default): BOLT's slot packing, the input by columns, the weights by diagonals,
    baby-step giant-step rotations (mpc/he_simd.py), plaintext modulus a batching prime p:
    in_cts = ceil(T/T_b) ceil(ceil(k/L)/2), out_cts = ceil(T/T_b) ceil(ceil(n/L)/2) (he_simd.layout),
    BOLT's ceil(T k / N), ceil(T n / N) at a power-of-two T (bert.cpp: `ln_cts_size = ln_size /
    poly_modulus_degree`, ss_to_he_server / he_to_ss_client around every linear layer).
  * `iron` (iron's default) and `cheetah` (the same code): the coefficient packing of Iron's matrix
    product (Hao et al., NeurIPS 2022, sec. 3.1 [R]: blocks T' k' n' <= N, extending Cheetah's, Huang et
    al. 2022, sec. 3), t = 2^ell (mpc/he_bfv.py): in_cts = ceil(T/T') ceil(k/k'), out_cts =
    ceil(T/T') ceil(n/n') (he_bfv.ciphertext_counts).
Steps (either packing): a. ss_to_he: P1 -> P0, in_cts ciphertexts of its (T, k) input share;
b. he_to_ss: P0 -> P1, out_cts masked result ciphertexts; c. he.gt_p_sub over the T n outputs,
FPMath::gt_p_sub = GT (MILL(ell)) + if_else (MUX) (fp-math.cpp), priced (cost_source=model) and
evaluated as the ideal lift of the Z_t shares to Z_2^64 (the signed value of their sum mod t, rescaled
from 2f to the engine's scale by one rounding): exact while |x W + b| < t / 2^(2 + 2f) (he_bfv.value_range:
2^19 at f = 16), logged as a warning when a result comes within a factor 2 of that bound. Exact mode
books the serialised length of every ciphertext sent (cost_source=measured); cost mode books the same
counts at CT_BYTES each (one code path: he_linear, data-free when the shares are shapes).
Parameters (he_bfv.py, BOLT's he.cpp): BFV, N = 8192, coeff modulus {54, 54, 55, 55}, sec_level tc128,
i.e. 128-bit security (HomomorphicEncryption.org standard, Albrecht et al. 2018, Table 1: log2 q <= 218
at N = 8192). CT_BYTES is measured, not derived: a fresh public-key BFV ciphertext serialised by TenSEAL
0.3.18 (zstd; results/bert_base/README.md has the command; tests/test_he_linear.py re-measures it and the
ciphertexts both packings send). Rotation keys and the one-off key exchange are not counted.
Attention's two activation products (Q K^T, P V) stay the engine's Beaver products.
Work (comet_core/comm/work.py, both modes from the shapes: he_op_counts): he_encrypt, he_decrypt,
he_mul_plain (slots) or he_mul_plain_coeff (coefficients), he_rotate, priced by `comet calibrate`'s
benchmarks of the same SEAL calls (experiments/calibrate.py), beside gt_p_sub's OTs.
Cost: he_linear_cost(p, T, k, n, packing).
"""

from __future__ import annotations

import collections
import logging
import math

import numpy as np
import torch

from comet_core.comm.work import register_kind
from comet_core.mpc import he_bfv, he_simd, ideal
from comet_core.mpc.engine import AShare
from comet_core.mpc.shape import Shape

log = logging.getLogger(__name__)
PACKINGS = ("bolt", "cheetah", "iron")   # iron and cheetah: the same coefficient packing (he_bfv)

POLY_DEGREE = he_bfv.POLY_DEGREE   # he.cpp poly_modulus_degree (slot_count)
COEFF_BITS = he_bfv.COEFF_BITS     # he.cpp CoeffModulus::Create(slot_count, {54, 54, 55, 55})
CT_BYTES = 370_229                 # measured: TenSEAL 0.3.18 BFV(N=8192, these moduli).serialize() of a fresh ciphertext


register_kind("he_encrypt", "ciphertext", "he_linear: P1 packs and encrypts its share, serialises it; P0 loads it")
register_kind("he_decrypt", "ciphertext", "he_linear: P0 masks and serialises a result; P1 loads, decrypts, reads it")
register_kind("he_mul_plain", "ciphertext-plaintext product", "he_linear, bolt packing: a diagonal encoded "
              "into slots, multiplied into a baby-step ciphertext and added")
register_kind("he_mul_plain_coeff", "ciphertext-plaintext product", "he_linear, iron/cheetah packing: a weight "
              "block as a plaintext polynomial, multiplied into an input ciphertext and added")
register_kind("he_rotate", "Galois rotation", "he_linear, bolt packing: a row rotation or row swap of a ciphertext")


def he_op_counts(T: int, k: int, n: int, packing: str = "bolt") -> dict[str, int]:
    """Work counts of one (T, k) @ (k, n) product in this packing (he_simd / he_bfv op_counts)."""
    return he_simd.op_counts(T, k, n) if packing == "bolt" else he_bfv.op_counts(T, k, n)


def measure_ct_bytes(poly_degree: int = POLY_DEGREE, coeff_bits: tuple = COEFF_BITS) -> int:
    """Serialised bytes of one fresh BFV ciphertext (public-key encryption of a full slot vector) at these
    parameters, measured with TenSEAL (SEAL underneath, as BOLT). Needs the `he` extra."""
    try:
        import tenseal as ts
    except ImportError:
        from comet_core.errors import CometError
        raise CometError("measuring ciphertexts needs TenSEAL: pip install -e '.[he]' (tenseal==0.3.18)") from None
    ctx = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=poly_degree, plain_modulus=1032193,
                     coeff_mod_bit_sizes=list(coeff_bits))
    return len(ts.bfv_vector(ctx, list(range(poly_degree))).serialize())


def ciphertexts(elements: int) -> int:
    return -(-int(elements) // POLY_DEGREE)


def ciphertext_counts(T: int, k: int, n: int, packing: str = "bolt") -> tuple[int, int]:
    """(input ciphertexts P1 -> P0, result ciphertexts P0 -> P1) of one (T, k) @ (k, n) product."""
    if packing == "bolt":
        return he_simd.ciphertext_counts(T, k, n)
    return he_bfv.ciphertext_counts(T, k, n)


def _gt_p_sub(p: ideal.Params, elements: int) -> list[ideal.Step]:
    return ideal._steps(elements, ("he.gt_p_sub", ideal._seq(ideal.MILL(p.ell, p.ot), ideal.MUX(p.ell, p.ot))))


def he_linear_steps(p: ideal.Params, T: int, k: int, n: int, packing: str = "bolt") -> list[ideal.Step]:
    """The modelled steps of one (T, k) @ (k, n) product: bytes as whole ciphertexts, then gt_p_sub."""
    ct_bits = CT_BYTES * 8
    cin, cout = ciphertext_counts(T, k, n, packing)
    return [ideal.Step("he.ss_to_he", cin, 0, ct_bits, 1),
            ideal.Step("he.he_to_ss", cout, ct_bits, 0, 1),
            *_gt_p_sub(p, T * n)]


def he_linear_cost(p: ideal.Params, T: int, k: int, n: int, packing: str = "bolt"):
    return ideal.steps_cost(he_linear_steps(p, T, k, n, packing))


def _book_ciphertexts(mpc, sender: str, receiver: str, sizes: list[int], source: str = "measured") -> None:
    """One round of ciphertexts as sent: one ledger row per distinct serialised length."""
    r = mpc.ledger.new_round()
    for size, count in sorted(collections.Counter(sizes).items()):
        mpc.ledger.record("online", sender, receiver, count, 8 * size, r, cost_source=source)


def _u(t: torch.Tensor, mask: int) -> np.ndarray:
    """int64 ring elements -> their low ell bits as uint64 (Z_2^64 -> Z_2^ell drops the high bits)."""
    return t.contiguous().numpy().view(np.uint64) & np.uint64(mask)


def _coefficient_product(mpc, x: AShare, w: AShare, b: AShare | None, T: int, k: int, n: int):
    """cheetah / iron packing: the Z_2^64 shares reduce to Z_2^ell by dropping high bits (t = 2^ell)."""
    f_in = x.frac + w.frac
    ell = he_bfv.plain_bits_for(max(x.frac, w.frac))
    mask = (1 << ell) - 1
    xs = x.data.reshape(2, T, k)                             # [x]: (2, T, k) over Z_2^64
    wv = (w.data[0] + w.data[1]).reshape(k, n)               # P0's own weights, in the clear (it shared them)
    bv = None if b is None else _u(((b.data[0] + b.data[1]).reshape(n)) << (f_in - b.frac), mask)
    bfv = getattr(mpc, "_he_bfv", None)
    if bfv is None or bfv.ell != ell:
        bfv = he_bfv.BFV(ell)                                # P1's keys, made once per inference
        mpc._he_bfv = bfv
    y0, y1, in_bytes, out_bytes = he_bfv.he_matmul(bfv, _u(xs[0], mask), _u(xs[1], mask), _u(wv, mask), bv)
    return (y0 + y1) & np.uint64(mask), 1 << ell, in_bytes, out_bytes


def _to_field(v: torch.Tensor, p: int) -> np.ndarray:
    """Signed int64 ring values -> [0, p) as uint64."""
    return np.mod(v.contiguous().numpy(), np.int64(p)).astype(np.uint64)


def _slot_product(mpc, x: AShare, w: AShare, b: AShare | None, T: int, k: int, n: int):
    """bolt packing: the shares enter Z_p (p a batching prime) by the ideal conversion of BOLT's
    ss_to_he_server (each share by its signed value, no message beyond the client's ciphertexts): here
    P1's share is fresh uniform, P0's the value minus it."""
    f_in = x.frac + w.frac
    bits = he_bfv.plain_bits_for(max(x.frac, w.frac))
    ctx = getattr(mpc, "_he_slots", None)
    if ctx is None or ctx.plain_bits != bits:
        ctx = he_simd.SlotBFV(bits)                          # P1's keys, made once per inference
        mpc._he_slots = ctx
    p = ctx.p
    xv = _to_field((x.data[0] + x.data[1]).reshape(T, k), p)           # [x]: (T, k), the value mod p
    x1 = he_simd.uniform_mod(p, T * k).reshape(T, k)
    x0 = (xv + (np.uint64(p) - x1)) % np.uint64(p)
    wv = _to_field((w.data[0] + w.data[1]).reshape(k, n), p)
    bv = None if b is None else _to_field(((b.data[0] + b.data[1]).reshape(n)) << (f_in - b.frac), p)
    y0, y1, in_bytes, out_bytes = he_simd.he_matmul(ctx, x0, x1, wv, bv)
    return (y0 + y1) % np.uint64(p), p, in_bytes, out_bytes


def _he_exact(x: AShare, w: AShare, b: AShare | None, p: ideal.Params, T: int, k: int, n: int,
              packing: str) -> AShare:
    """Exact mode: the real BFV product on the shares, its ciphertexts booked, then the lift to Z_2^64."""
    mpc = x.mpc
    if mpc.rank is not None:
        from comet_core.errors import CometError
        raise CometError("system.linear=he runs with both parties in one process (the simulation); "
                         "its ciphertexts over a two-party channel are not implemented")
    product = _slot_product if packing == "bolt" else _coefficient_product
    v, modulus, in_bytes, out_bytes = product(mpc, x, w, b, T, k, n)
    _book_ciphertexts(mpc, "P1", "P0", in_bytes)
    _book_ciphertexts(mpc, "P0", "P1", out_bytes)
    ideal.book(mpc, _gt_p_sub(p, T * n))
    # the lift (ideal, priced as gt_p_sub): the signed value of y0 + y1 mod t, rescaled to frac_bits
    f_in = x.frac + w.frac
    v = v.astype(np.int64)
    v = np.where(v >= modulus // 2, v - modulus, v)
    if np.abs(v).max(initial=0) >= modulus // 4:
        log.warning("he_linear: a result reaches %.3g, within a factor 2 of the exact range +-%.3g (t ~ 2^%d)",
                    float(np.abs(v).max()) / 2 ** f_in, modulus / 2 / 2 ** f_in, modulus.bit_length() - 1)
    shift = f_in - mpc.frac_bits
    out = torch.from_numpy(v)
    if shift > 0:
        out = (out + (1 << (shift - 1))) >> shift
    return mpc.dealer._arith(out, mpc.frac_bits).reshape(*x.shape[:-1], n)


def he_linear(x: AShare, w: AShare, b: AShare | None, p: ideal.Params, packing: str = "bolt") -> AShare:
    """y = x @ W (+ b) for x (T, k), W (k, n), as the packing's HE protocol (module docstring).
    Exact mode runs it; cost mode books the same ciphertext counts at CT_BYTES (he_linear_cost)."""
    if packing not in PACKINGS:
        raise ValueError(f"he_linear: packing {packing!r}; valid: {', '.join(PACKINGS)}")
    mpc = x.mpc
    T, k = math.prod(x.shape[:-1]), x.shape[-1]
    n = w.shape[-1]
    with mpc.ledger.protocol("he.linear"):
        for kind, count in he_op_counts(T, k, n, packing).items():
            mpc.ledger.work.add(kind, count)
        ops = [x, w] + ([b] if b is not None else [])
        if not x.data.is_meta and len({o.frac for o in ops}) != 1:
            raise ValueError(f"he_linear: operands at scales {[o.frac for o in ops]}; expected one scale")
        if not x.data.is_meta:
            return _he_exact(x, w, b, p, T, k, n, packing)
        cin, cout = ciphertext_counts(T, k, n, packing)               # cost mode: the same rows at CT_BYTES
        _book_ciphertexts(mpc, "P1", "P0", [CT_BYTES] * cin, "model")
        _book_ciphertexts(mpc, "P0", "P1", [CT_BYTES] * cout, "model")
        ideal.book(mpc, _gt_p_sub(p, T * n))
        return mpc.dealer._arith(Shape((*x.shape[:-1], n)), mpc.frac_bits)
