"""BOLT's HE linear layers (`system.linear=he`, bolt): y = x W + b with BFV, the client (P1, the key
owner) encrypting its share of x, the server (P0, the model owner) holding W and b in the clear.

Two packings (`system.he_packing`):
  * `bolt` (default): BOLT's compact SIMD packing, as an ideal functionality priced by the ciphertexts its
    code sends (the HE product itself is not run: BOLT's rotations are not implemented here).
    a. ss_to_he: P1 -> P0, ceil(T k / N) ciphertexts of its (T, k) input share;
    b. he_to_ss: P0 -> P1, ceil(T n / N) masked result ciphertexts;
    Counts and parameters from BOLT's harness (Qi-Pang/EzPC branch bert, SCI/tests/bert/bert.cpp:
    `ln_cts_size = ln_size / poly_modulus_degree`, ss_to_he_server / he_to_ss_client around every linear
    layer). Exact mode: the trusted party opens x, W and b and re-shares x W + b (mpc.dealer.ideal).
  * `cheetah`: the HE product runs for real (mpc/he_bfv.py: SEAL BFV through TenSEAL, Cheetah's
    coefficient packing, T' k' n' <= N, plaintext modulus 2^ell): in_cts = ceil(T/T') ceil(k/k')
    ciphertexts P1 -> P0, out_cts = ceil(T/T') ceil(n/n') P0 -> P1 (he_bfv.ciphertext_counts; more than
    BOLT's, whose packing fills every slot). Exact mode books the serialised length of every ciphertext
    sent (cost_source=measured); cost mode books the same counts at CT_BYTES each.
Both then reduce the result shares back to the OT ring: c. he.gt_p_sub over the T n outputs,
FPMath::gt_p_sub = GT (MILL(ell)) + if_else (MUX) (fp-math.cpp), priced (cost_source=model). With
`cheetah` it is evaluated as the ideal lift of the Z_2^ell shares to Z_2^64 (the signed value of their
sum mod 2^ell, rescaled from 2f to the engine's scale by one rounding): exact while |x W + b| <
2^(ell - 1 - 2f) (he_bfv.value_range: 2^19 at f = 16), logged as a warning when a result comes within a
factor 2 of that bound.
Parameters (he_bfv.py, BOLT's he.cpp): BFV, N = 8192, coeff modulus {54, 54, 55, 55}, sec_level tc128,
i.e. 128-bit security (HomomorphicEncryption.org standard, Albrecht et al. 2018, Table 1: log2 q <= 218
at N = 8192). CT_BYTES is measured, not derived: a fresh public-key BFV ciphertext serialised by TenSEAL
0.3.18 (zstd; results/bert_base/README.md has the command; tests/test_he_linear.py re-measures it and the
ciphertexts the cheetah protocol sends). Rotation keys and the one-off key exchange are not counted;
the rescaling after the product is inside the lift, not priced separately.
Attention's two activation products (Q K^T, P V) stay the engine's Beaver products.
Cost: he_linear_cost(p, T, k, n, packing).
"""

from __future__ import annotations

import collections
import logging
import math

import numpy as np
import torch

from comet_core.mpc import he_bfv, ideal
from comet_core.mpc.dealer import register_ideal_functions
from comet_core.mpc.engine import AShare
from comet_core.mpc.shape import Shape

log = logging.getLogger(__name__)
PACKINGS = ("bolt", "cheetah")

POLY_DEGREE = he_bfv.POLY_DEGREE   # he.cpp poly_modulus_degree (slot_count)
COEFF_BITS = he_bfv.COEFF_BITS     # he.cpp CoeffModulus::Create(slot_count, {54, 54, 55, 55})
CT_BYTES = 370_229                 # measured: TenSEAL 0.3.18 BFV(N=8192, these moduli).serialize() of a fresh ciphertext


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
    if packing == "cheetah":
        return he_bfv.ciphertext_counts(T, k, n)
    return ciphertexts(T * k), ciphertexts(T * n)


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


def _plain_linear(flat: torch.Tensor, shapes: tuple, has_bias: bool) -> torch.Tensor:
    """x W (+ b) from the trusted party's view of the packed shares (x, W[, b] flattened, one scale)."""
    sizes = [math.prod(sh) for sh in shapes]
    parts = [t.reshape(sh) for t, sh in zip(torch.split(flat.double(), sizes), shapes)]
    y = parts[0] @ parts[1]
    return y + parts[2] if has_bias else y


register_ideal_functions({"he_linear": _plain_linear})


def _u(t: torch.Tensor, mask: int) -> np.ndarray:
    """int64 ring elements -> their low ell bits as uint64 (Z_2^64 -> Z_2^ell drops the high bits)."""
    return t.contiguous().numpy().view(np.uint64) & np.uint64(mask)


def _he_exact(x: AShare, w: AShare, b: AShare | None, p: ideal.Params, T: int, k: int, n: int) -> AShare:
    """cheetah packing, exact mode: the real BFV product on the shares, then the lift to Z_2^64."""
    mpc = x.mpc
    if mpc.rank is not None:
        from comet_core.errors import CometError
        raise CometError("system.he_packing=cheetah runs with both parties in one process (the simulation); "
                         "its ciphertexts over a two-party channel are not implemented")
    f_in = x.frac + w.frac                                   # the product's scale
    ell = he_bfv.plain_bits_for(max(x.frac, w.frac))
    mask = (1 << ell) - 1
    xs = x.data.reshape(2, T, k)                             # [x]: (2, T, k) over Z_2^64
    wv = (w.data[0] + w.data[1]).reshape(k, n)               # P0's own weights, in the clear (it shared them)
    bv = None
    if b is not None:
        bv = _u(((b.data[0] + b.data[1]).reshape(n)) << (f_in - b.frac), mask)
    bfv = getattr(mpc, "_he_bfv", None)
    if bfv is None or bfv.ell != ell:
        bfv = he_bfv.BFV(ell)                                # P1's keys, made once per inference
        mpc._he_bfv = bfv
    y0, y1, in_bytes, out_bytes = he_bfv.he_matmul(bfv, _u(xs[0], mask), _u(xs[1], mask), _u(wv, mask), bv)
    _book_ciphertexts(mpc, "P1", "P0", in_bytes)
    _book_ciphertexts(mpc, "P0", "P1", out_bytes)
    ideal.book(mpc, _gt_p_sub(p, T * n))
    # the lift (ideal, priced as gt_p_sub): signed value of y0 + y1 mod 2^ell, rescaled to frac_bits
    v = ((y0 + y1) & np.uint64(mask)).view(np.int64)
    v = np.where(v >= (1 << (ell - 1)), v - (1 << ell), v)
    near = np.abs(v).max(initial=0) >= (1 << (ell - 2))
    if near:
        log.warning("he_linear: a result reaches %.3g, within a factor 2 of the exact range +-%.3g at 2^%d",
                    float(np.abs(v).max()) / 2 ** f_in, he_bfv.value_range(max(x.frac, w.frac)), ell)
    shift = f_in - mpc.frac_bits
    out = torch.from_numpy(v)
    if shift > 0:
        out = (out + (1 << (shift - 1))) >> shift
    return mpc.dealer._arith(out, mpc.frac_bits).reshape(*x.shape[:-1], n)


def he_linear(x: AShare, w: AShare, b: AShare | None, p: ideal.Params, packing: str = "bolt") -> AShare:
    """y = x @ W (+ b) for x (T, k), W (k, n), as BOLT's HE protocol (module docstring)."""
    if packing not in PACKINGS:
        raise ValueError(f"he_linear: packing {packing!r}; valid: {', '.join(PACKINGS)}")
    mpc = x.mpc
    T, k = math.prod(x.shape[:-1]), x.shape[-1]
    n = w.shape[-1]
    with mpc.ledger.protocol("he.linear" if packing == "cheetah" else "ideal.he_linear"):
        ops = [x, w] + ([b] if b is not None else [])
        if not x.data.is_meta and len({o.frac for o in ops}) != 1:
            raise ValueError(f"he_linear: operands at scales {[o.frac for o in ops]}; expected one scale")
        if packing == "cheetah":
            if not x.data.is_meta:
                return _he_exact(x, w, b, p, T, k, n)
            cin, cout = ciphertext_counts(T, k, n, packing)           # cost mode: the same rows at CT_BYTES
            _book_ciphertexts(mpc, "P1", "P0", [CT_BYTES] * cin, "model")
            _book_ciphertexts(mpc, "P0", "P1", [CT_BYTES] * cout, "model")
            ideal.book(mpc, _gt_p_sub(p, T * n))
        else:
            ideal.book(mpc, he_linear_steps(p, T, k, n, packing))
        if x.data.is_meta:
            return mpc.dealer._arith(Shape((*x.shape[:-1], n)), mpc.frac_bits)
        flat = torch.cat([o.data.reshape(o.data.shape[0], -1) for o in ops], dim=1)   # one share per party
        kw = {"shapes": tuple(tuple(o.shape) for o in ops), "has_bias": b is not None}
        return mpc.dealer.ideal(flat, x.frac, "he_linear", mpc.frac_bits, kw).reshape(*x.shape[:-1], n)
