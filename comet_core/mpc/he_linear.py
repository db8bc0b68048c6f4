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
Who holds what: P0 (the server) holds W and b in the clear, as Iron's and BOLT's model owner does: the
model owner shares the linear layers' weights as (W, 0) (models/weights.share_weights with the system's
owner_held(), MPC.share's to_p0); P1 (the client) holds the secret key, made once per engine.
Steps (either packing), in one process or one party per process (transport=tcp: the bytes cross the
P0-P1 socket): a. ss_to_he: P1 -> P0, the keys P0 does not have yet (its public key; for the slot
packing one Galois key per rotation element, he_simd.galois_elements) and in_cts ciphertexts of its
(T, k) input share; b. he_to_ss: P0 -> P1, out_cts masked result ciphertexts; c. he.gt_p_sub over the
T n outputs, FPMath::gt_p_sub = GT (MILL(ell)) + if_else (MUX) (fp-math.cpp), priced (cost_source=model)
and evaluated by the trusted party of the ideal functionalities as the lift of the Z_t shares to Z_2^64
(ideal.ring_he_lift: the signed value of their sum mod t, rescaled from 2f to the engine's scale by one
rounding): exact while |x W + b| < t / 2^(2 + 2f) (he_bfv.value_range: 2^19 at f = 16), logged as a
warning when a result comes within a factor 2 of that bound. The slot packing's shares enter Z_p by the
same trusted party (ideal.ring_he_to_field). Exact mode books the serialised length of every key and
ciphertext sent (cost_source=measured: each party books what it sent or received); cost mode books the
same counts at PK_BYTES, GALOIS_KEY_BYTES and CT_BYTES each (one code path: he_linear, data-free when the
shares are shapes).
Parameters (he_bfv.py, BOLT's he.cpp): BFV, N = 8192, coeff modulus {54, 54, 55, 55}, sec_level tc128,
i.e. 128-bit security (HomomorphicEncryption.org standard, Albrecht et al. 2018, Table 1: log2 q <= 218
at N = 8192). CT_BYTES is measured, not derived: a fresh public-key BFV ciphertext serialised by TenSEAL
0.3.18 (zstd; results/bert_base/README.md has the command; tests/test_he_linear.py re-measures it, the keys
and the ciphertexts both packings send).
Attention's two activation products (Q K^T, P V) stay the engine's Beaver products.
Work (comet_core/comm/work.py, both modes from the shapes: he_op_counts): he_encrypt, he_decrypt,
he_mul_plain (slots) or he_mul_plain_coeff (coefficients), he_rotate, he_ntt, priced by `comet calibrate`'s
benchmarks of the same SEAL calls (experiments/calibrate.py), beside gt_p_sub's OTs.
Cost: he_linear_cost(p, T, k, n, packing), plus key_bytes of keys_of(...) at the first product that needs them.
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
PROTOCOL = "he.linear"                   # the ledger's protocol label of these rows

POLY_DEGREE = he_bfv.POLY_DEGREE   # he.cpp poly_modulus_degree (slot_count)
COEFF_BITS = he_bfv.COEFF_BITS     # he.cpp CoeffModulus::Create(slot_count, {54, 54, 55, 55})
CT_BYTES = 370_229                 # measured: TenSEAL 0.3.18 BFV(N=8192, these moduli).serialize() of a fresh ciphertext
PK_BYTES = 493_566                 # measured: a serialised public key at these parameters (SEAL, zstd)
GALOIS_KEY_BYTES = 1_480_463       # measured: a serialised Galois key, per Galois element (SEAL, zstd)


register_kind("he_encrypt", "ciphertext", "he_linear: P1 packs and encrypts its share, serialises it; P0 loads it")
register_kind("he_decrypt", "ciphertext", "he_linear: P0 masks and serialises a result; P1 loads, decrypts, reads it")
register_kind("he_mul_plain", "ciphertext-plaintext product", "he_linear, bolt packing: a diagonal encoded "
              "into slots, multiplied into a baby-step ciphertext and added")
register_kind("he_mul_plain_coeff", "ciphertext-plaintext product", "he_linear, iron/cheetah packing: a weight "
              "block as a plaintext polynomial, multiplied into an input ciphertext and added")
register_kind("he_rotate", "Galois rotation", "he_linear, bolt packing: a row rotation or row swap of a ciphertext")
register_kind("he_ntt", "ciphertext NTT", "he_linear: a ciphertext taken to NTT form (the products are pointwise "
              "there) or back (before a rotation, the mask and the serialisation)")


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


# -- P1's keys: made once per engine, sent with its first ciphertexts that need them -------------------


def _family(packing: str) -> str:
    return "slots" if packing == "bolt" else "coeff"


def keys_of(packing: str, bits: int, T: int, k: int, n: int) -> list[tuple]:
    """The keys P0 needs for a (T, k) @ (k, n) product: P1's public key (for an all-zero weight block's
    encryption), and for the slot packing the Galois keys of its rotations."""
    fam = _family(packing)
    if fam != "slots":
        return [("pk", fam, bits)]
    return [("pk", fam, bits)] + [("galois", bits, e) for e in he_simd.galois_elements(he_simd.galois_steps(T, k, n))]


def _pending_keys(mpc, packing: str, bits: int, T: int, k: int, n: int) -> list[tuple]:
    """The keys P0 needs for this product and has not been sent: ("pk", family, bits), then for the slot
    packing ("galois", bits, element) of each Galois element its rotations use. Both parties (and cost
    mode) keep the same record, so P0 knows what the blobs that come first in P1's message are. Marks them
    sent."""
    want = keys_of(packing, bits, T, k, n)
    sent = mpc.__dict__.setdefault("_he_keys_sent", set())
    new = [key for key in want if key not in sent]
    sent.update(new)
    return new


def key_bytes(key: tuple) -> int:
    """The modelled serialised length of one key (cost mode): the public key, or one Galois element's key."""
    return PK_BYTES if key[0] == "pk" else GALOIS_KEY_BYTES


def _context(mpc, packing: str, bits: int, public_key: bytes | None = None):
    """This engine's BFV context for the packing at `bits`: the key owner's (P1, or both parties in one
    process) made here, P0's from P1's public key."""
    store = mpc.__dict__.setdefault("_he_ctx", {})
    key = (_family(packing), bits)
    if key not in store:
        cls = he_simd.SlotBFV if packing == "bolt" else he_bfv.BFV
        store[key] = cls(bits, public_key=public_key)
    return store[key]


def _key_blobs(ctx, keys: list[tuple]) -> list[bytes]:
    """P1 serialises the pending keys (the Galois keys made here, one per element)."""
    return [ctx.public_key_bytes() if key[0] == "pk" else he_bfv.serialise(ctx.galois_key(key[2])) for key in keys]


def _load_keys(mpc, packing: str, bits: int, keys: list[tuple], blobs: list[bytes]):
    """P0 adopts the keys P1 sent (its context from the public key, then the Galois keys); its context."""
    ctx = None
    for key, blob in zip(keys, blobs):
        if key[0] == "pk":
            ctx = _context(mpc, packing, bits, public_key=blob)
    ctx = ctx or mpc.__dict__.get("_he_ctx", {}).get((_family(packing), bits))
    if ctx is None:
        from comet_core.errors import CometError
        raise CometError("he_linear: P0 has no public key of P1's (the key exchange is out of step)")
    for key, blob in zip(keys, blobs):
        if key[0] == "galois":
            ctx.load_galois(key[2], blob)
    return ctx


# -- the product on the shares (exact mode) -----------------------------------------------------------


def _u(t: torch.Tensor, mask: int) -> np.ndarray:
    """int64 ring elements -> their low ell bits as uint64 (Z_2^64 -> Z_2^ell drops the high bits)."""
    return t.contiguous().numpy().view(np.uint64) & np.uint64(mask)


def _to_field(v: torch.Tensor, p: int) -> np.ndarray:
    """Signed int64 ring values -> [0, p) as uint64."""
    return np.mod(v.contiguous().numpy(), np.int64(p)).astype(np.uint64)


def _p0_weights(mpc, w: AShare, b: AShare | None, f_in: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """P0's W and b in the clear (the ring elements at their scales; b moved to f_in): Iron's and BOLT's
    server is the model owner. In one process the two halves' sum; a single P0 holds them as its share, the
    model owner having shared them (W, 0) (models/weights.share_weights with the system's owner_held)."""
    both = mpc.rank is None
    wv = w.data[0] + w.data[1] if both else w.data[0]
    bv = None if b is None else ((b.data[0] + b.data[1]) if both else b.data[0]) << (f_in - b.frac)
    return wv, bv


def _p1_holds_nothing(mpc, *ops: AShare | None) -> None:
    """A single P1 checks that its halves of W and b are zero (P0 holds them), else the product would be
    wrong: the model owner shared the weights as the beaver systems need them."""
    if any(o is not None and bool(o.data[0].any()) for o in ops):
        from comet_core.errors import CometError
        raise CometError("system.linear=he: P1 holds a non-zero share of a weight, but P0 (Iron's and BOLT's "
                         "server) must hold W and b in the clear: share them with the system's owner_held() "
                         "(models/weights.share_weights)")


def _he_exact(x: AShare, w: AShare, b: AShare | None, p: ideal.Params, T: int, k: int, n: int,
              packing: str) -> AShare:
    """Exact mode, steps a-c of the module docstring on the shares, in one process or one party each: P1's
    keys (once) and ciphertexts, P0's masked results, each booked at its serialised length; then the lift
    to Z_2^64 (the trusted party's, priced as gt_p_sub)."""
    mpc, rank = x.mpc, x.mpc.rank
    f_in = x.frac + w.frac
    bits = he_bfv.plain_bits_for(max(x.frac, w.frac))
    keys = _pending_keys(mpc, packing, bits, T, k, n)
    xs = x.data.reshape(-1, T, k)                                    # [x]: (parties here, T, k) over Z_2^64
    if packing == "bolt":                                            # the shares enter Z_p (ideal conversion)
        modulus = he_simd.batching_prime(bits)
        xs = mpc.dealer.ideal(xs, 0, "he_to_field", 0, dict(p=int(modulus)))   # (parties here, T, k) in [0, p)
        red = lambda t: t.contiguous().numpy().view(np.uint64)        # noqa: E731 - already in [0, p)
        to_plain = lambda t: _to_field(t, modulus)                    # noqa: E731
        prod = he_simd
    else:
        modulus = 1 << bits
        red = to_plain = lambda t: _u(t, modulus - 1)                 # noqa: E731
        prod = he_bfv
    x0, x1 = (xs[0], xs[1]) if rank is None else ((xs[0], None) if rank == 0 else (None, xs[0]))
    if rank == 1:
        _p1_holds_nothing(mpc, w, b)
    y = {}
    if rank != 0:                                                    # a. P1: keys, then its encrypted share
        ctx = _context(mpc, packing, bits)
        sent = mpc.channel.send_bytes(1, _key_blobs(ctx, keys) + prod.encrypt_input(ctx, red(x1), n))
    else:
        sent = mpc.channel.send_bytes(1, None)
    if rank != 1:                                                    # b. P0: W, then its masked results
        ctx = _load_keys(mpc, packing, bits, keys, sent[:len(keys)]) if rank == 0 else ctx
        wv, bv = _p0_weights(mpc, w, b, f_in)
        y[0], back = prod.evaluate(ctx, sent[len(keys):], red(x0), to_plain(wv),
                                   None if bv is None else to_plain(bv))
        back = mpc.channel.send_bytes(0, back)
    else:
        back = mpc.channel.send_bytes(0, None)
    if rank != 0:                                                    # c. P1 decrypts its share
        y[1] = prod.decrypt_output(ctx, back, T, k, n)
    ideal.book(mpc, _gt_p_sub(p, T * n))
    # [y]: (parties here, T, n), residues mod t
    shares = torch.stack([torch.from_numpy(y[r].astype(np.int64)) for r in sorted(y)])
    out = mpc.dealer.ideal(shares, 0, "he_lift", mpc.frac_bits, dict(modulus=int(modulus), f_in=int(f_in)))
    return out.reshape(*x.shape[:-1], n)


def he_linear(x: AShare, w: AShare, b: AShare | None, p: ideal.Params, packing: str = "bolt") -> AShare:
    """y = x @ W (+ b) for x (T, k), W (k, n), as the packing's HE protocol (module docstring).
    Exact mode runs it; cost mode books the same key and ciphertext counts at PK_BYTES, GALOIS_KEY_BYTES and
    CT_BYTES (he_linear_cost, key_bytes)."""
    if packing not in PACKINGS:
        raise ValueError(f"he_linear: packing {packing!r}; valid: {', '.join(PACKINGS)}")
    mpc = x.mpc
    T, k = math.prod(x.shape[:-1]), x.shape[-1]
    n = w.shape[-1]
    with mpc.ledger.protocol(PROTOCOL):
        for kind, count in he_op_counts(T, k, n, packing).items():
            mpc.ledger.work.add(kind, count)
        ops = [x, w] + ([b] if b is not None else [])
        if not x.data.is_meta and len({o.frac for o in ops}) != 1:
            raise ValueError(f"he_linear: operands at scales {[o.frac for o in ops]}; expected one scale")
        if not x.data.is_meta:
            return _he_exact(x, w, b, p, T, k, n, packing)
        cin, cout = ciphertext_counts(T, k, n, packing)               # cost mode: the same rows at CT_BYTES
        keys = _pending_keys(mpc, packing, he_bfv.plain_bits_for(max(x.frac, w.frac)), T, k, n)
        _book_ciphertexts(mpc, "P1", "P0", [key_bytes(key) for key in keys] + [CT_BYTES] * cin, "model")
        _book_ciphertexts(mpc, "P0", "P1", [CT_BYTES] * cout, "model")
        ideal.book(mpc, _gt_p_sub(p, T * n))
        return mpc.dealer._arith(Shape((*x.shape[:-1], n)), mpc.frac_bits)
