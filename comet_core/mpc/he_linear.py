"""BOLT's HE linear layers (`system.linear=he`) as an ideal functionality, priced by the ciphertexts BOLT's
code sends.

BOLT evaluates y = x W + b with BFV (SEAL): the key owner (P1, the client in BOLT) encrypts its share,
the weight owner (P0) multiplies homomorphically by its plaintext weights, masks and returns ciphertexts,
and both reduce the decrypted shares modulo the plaintext prime back into the OT ring. This engine has
no HE, so (as for the OT protocols of mpc/ideal.py):

  1. Book the modelled traffic (cost_source=model):
     a. ss_to_he: P1 -> P0, ceil(T k / N) ciphertexts of its (T, k) input share;
     b. he_to_ss: P0 -> P1, ceil(T n / N) masked result ciphertexts;
     c. the mod-p reduction of the T n result shares, FPMath::gt_p_sub = GT (MILL(ell)) + if_else (MUX).
     Ciphertext counts and parameters from BOLT's harness (Qi-Pang/EzPC branch bert, SCI/tests/bert/bert.cpp:
     `ln_cts_size = ln_size / poly_modulus_degree`, ss_to_he_server / he_to_ss_client around every linear
     layer; he.cpp: BFV, N = 8192, coeff modulus {54, 54, 55, 55}, sec_level tc128, i.e. 128-bit security
     (HomomorphicEncryption.org standard, Albrecht et al. 2018, Table 1: log2 q <= 218 at N = 8192)).
     CT_BYTES is measured, not derived: the serialised size of a fresh public-key BFV ciphertext at these
     parameters (TenSEAL 0.3.18, results/bert_base/README.md has the command; tests/test_he_linear.py
     re-measures it where tenseal is installed). Rotation keys and the one-off key exchange are not counted.
  2. The trusted party opens x, W and b, computes x W + b in float64 and re-shares it at the engine's scale
     (mpc.dealer.ideal): the HE products themselves are not run (a known simplification, named in the
     README), so exact mode equals the plaintext linear layer up to one rounding.
Attention's two activation products (Q K^T, P V) stay the engine's Beaver products.
Cost: he_linear_cost(T, k, n, p).
"""

from __future__ import annotations

import math

import torch

from comet_core.mpc import ideal
from comet_core.mpc.dealer import register_ideal_functions
from comet_core.mpc.engine import AShare
from comet_core.mpc.shape import Shape

POLY_DEGREE = 8192                 # he.cpp poly_modulus_degree (slot_count)
COEFF_BITS = (54, 54, 55, 55)      # he.cpp CoeffModulus::Create(slot_count, {54, 54, 55, 55})
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


def he_linear_steps(p: ideal.Params, T: int, k: int, n: int) -> list[ideal.Step]:
    """The modelled steps of one (T, k) @ (k, n) product: bytes as whole ciphertexts, then gt_p_sub."""
    ct_bits = CT_BYTES * 8
    gtp = ideal._seq(ideal.MILL(p.ell, p.ot), ideal.MUX(p.ell, p.ot))
    return [ideal.Step("he.ss_to_he", ciphertexts(T * k), 0, ct_bits, 1),
            ideal.Step("he.he_to_ss", ciphertexts(T * n), ct_bits, 0, 1),
            *ideal._steps(T * n, ("he.gt_p_sub", gtp))]


def he_linear_cost(p: ideal.Params, T: int, k: int, n: int):
    return ideal.steps_cost(he_linear_steps(p, T, k, n))


def _plain_linear(flat: torch.Tensor, shapes: tuple, has_bias: bool) -> torch.Tensor:
    """x W (+ b) from the trusted party's view of the packed shares (x, W[, b] flattened, one scale)."""
    sizes = [math.prod(sh) for sh in shapes]
    parts = [t.reshape(sh) for t, sh in zip(torch.split(flat.double(), sizes), shapes)]
    y = parts[0] @ parts[1]
    return y + parts[2] if has_bias else y


register_ideal_functions({"he_linear": _plain_linear})


def he_linear(x: AShare, w: AShare, b: AShare | None, p: ideal.Params) -> AShare:
    """y = x @ W (+ b) for x (T, k), W (k, n), as BOLT's HE protocol (module docstring)."""
    mpc = x.mpc
    T, k = math.prod(x.shape[:-1]), x.shape[-1]
    n = w.shape[-1]
    with mpc.ledger.protocol("ideal.he_linear"):
        ideal.book(mpc, he_linear_steps(p, T, k, n))
        if x.data.is_meta:
            return mpc.dealer._arith(Shape((*x.shape[:-1], n)), mpc.frac_bits)
        ops = [x, w] + ([b] if b is not None else [])
        if len({o.frac for o in ops}) != 1:
            raise ValueError(f"he_linear: operands at scales {[o.frac for o in ops]}; expected one scale")
        flat = torch.cat([o.data.reshape(o.data.shape[0], -1) for o in ops], dim=1)   # one share per party
        kw = {"shapes": tuple(tuple(o.shape) for o in ops), "has_bias": b is not None}
        return mpc.dealer.ideal(flat, x.frac, "he_linear", mpc.frac_bits, kw).reshape(*x.shape[:-1], n)
