"""system.linear=he (iron, bolt): the HE linear layers run for real (TenSEAL). Exact mode equals the
fixed-point product; the ledger books the serialised ciphertexts per direction (P1 its encrypted share, P0
the masked results), as many as the cost formula counts, each within 0.2% of CT_BYTES (a fresh serialised
ciphertext), and the mod-p reduction exactly; cost mode books the formula (he_linear_cost)."""

import math

import pytest
import torch

from comet_core.mpc import he_linear as HE, ideal
from comet_core.mpc.engine import MPC
from comet_core.mpc.shape import Shape
from conftest import assert_close

P = ideal.Params()
g = torch.Generator().manual_seed(5)
X = torch.randn(3, 16, generator=g, dtype=torch.float64)
W = torch.randn(16, 24, generator=g, dtype=torch.float64) / 4
B = torch.randn(24, generator=g, dtype=torch.float64) / 8


def _he_rows(mpc, rows0):
    return [r for r in mpc.ledger.rows[rows0:] if r[11] == "measured"]   # (..., sender 5, elements 7, bits 8, ...)


def _check_exact(mpc, x, w, b, packing):
    """The product equals the fixed-point one up to the rescale's rounding; the measured ciphertext rows
    are the formula's counts per direction, each within 0.2% of CT_BYTES, and before them P1's keys (a
    fresh engine's first product), each within 0.2% of its modelled length; rounds and the rest exact.
    One process or one party per engine (spmd: P1's ciphertexts and P0's results cross the channel)."""
    T, k = x.shape
    n = w.shape[1]
    xs = mpc.share(x)
    ws, bs = (None if t is None else mpc.share(t, owner="model_owner", to_p0=True) for t in (w, b))
    mark, rows0 = mpc.ledger.mark(), len(mpc.ledger.rows)
    y = HE.he_linear(xs, ws, bs, P, packing)
    cost, he_rows = mpc.ledger.cost_since(mark), _he_rows(mpc, rows0)
    fx = [mpc.reveal(t) for t in (xs, ws)]
    want = fx[0] @ fx[1] + (0 if b is None else mpc.reveal(bs))
    assert_close(mpc.reveal(y), want, atol=2 ** -16, what=f"he_linear {packing} (one rounding)")
    assert_close(mpc.reveal(y), x @ w + (0 if b is None else b), atol=k * 2 ** -16, what=f"he_linear {packing}")
    formula = HE.he_linear_cost(P, T, k, n, packing)
    cin, cout = HE.ciphertext_counts(T, k, n, packing)
    ct = [r for r in he_rows if abs(r[8] / 8 - HE.CT_BYTES) <= 0.002 * HE.CT_BYTES]
    keys = [r for r in he_rows if r not in ct]
    assert sum(r[7] for r in ct if r[5] == "P1") == cin
    assert sum(r[7] for r in ct if r[5] == "P0") == cout
    want_keys = HE.keys_of(packing, 52, T, k, n)
    assert sum(r[7] for r in keys) == len(want_keys) and {r[5] for r in keys} == {"P1"}
    key_bytes = sum(HE.key_bytes(key) for key in want_keys)
    assert sum(r[9] for r in keys) == pytest.approx(key_bytes, rel=0.002)
    assert cost.rounds == formula.rounds
    assert cost.online_bytes == pytest.approx(formula.online_bytes + key_bytes, rel=0.002)
    return cin, cout


def test_bolt_exact_is_a_real_product_and_books_measured_bytes(mpc):
    pytest.importorskip("tenseal")
    got = _check_exact(mpc, X, W, B, "bolt")
    assert got in (None, (1, 1))                         # 48 values: one ciphertext each way
    steps = HE.he_linear_steps(P, 3, 16, 24)
    assert steps[0].p1 == 8 * HE.CT_BYTES and steps[0].p0 == 0 and steps[1].p0 == 8 * HE.CT_BYTES
    assert steps[2].count == 72 and steps[2].p1 == math.ceil((ideal.MILL(37) + ideal.MUX(37)).p1)


def test_bolt_exact_several_segments_and_ciphertexts():
    """64 tokens, 128 -> 192: segments of 64 columns, both rows of the input ciphertext used, the row swap
    reaching the second output row, two output ciphertexts; no bias."""
    pytest.importorskip("tenseal")
    g2 = torch.Generator().manual_seed(8)
    x = torch.randn(64, 128, generator=g2, dtype=torch.float64)
    w = torch.randn(128, 192, generator=g2, dtype=torch.float64) / 8
    assert _check_exact(MPC(seed=3), x, w, None, "bolt") == (1, 2)


def test_bolt_counts_are_bolts():
    """bert.cpp's ceil(T k / N), ceil(T n / N) at a power-of-two T (128 tokens: a 128 x 768 share is 12
    ciphertexts, a 128 x 3072 result 48); other T pad to the next power of two."""
    from comet_core.mpc import he_simd
    assert HE.ciphertext_counts(128, 768, 3072) == (12, 48)
    assert HE.ciphertext_counts(128, 3072, 768) == (48, 12)
    for T, k, n in [(1, 256, 1024), (8, 256, 256), (64, 4096, 4096), (2048, 768, 768), (16, 100, 3000)]:
        assert HE.ciphertext_counts(T, k, n) == (-(-T * k // 8192), -(-T * n // 8192)), (T, k, n)
    assert HE.ciphertext_counts(100, 768, 768) == HE.ciphertext_counts(128, 768, 768) == (12, 12)
    lay = he_simd.layout(8192, 64, 64)                   # more tokens than a row: row blocks of 4096
    assert (lay["tb"], lay["blocks"], lay["L"]) == (4096, 2, 1)


def test_cost_mode_books_the_formula_for_each_packing():
    """The formula, plus P1's keys at the first product that needs them: the public key, and for the slot
    packing one Galois key per element its rotations use; a second product of the same shape sends none."""
    for packing in HE.PACKINGS:
        c = MPC(seed=2, mode="cost")
        keys = sum(HE.key_bytes(k) for k in HE.keys_of(packing, 52, 8, 256, 1024))
        lay = __import__("comet_core.mpc.he_simd", fromlist=["layout"]).layout(8, 256, 1024)
        rotations = (lay["B"] - 1) + (lay["G"] - 1) + 1                  # baby steps, giant steps, the row swap
        assert keys == HE.PK_BYTES + (HE.GALOIS_KEY_BYTES * rotations if packing == "bolt" else 0)
        for extra in (keys, 0):
            mark = c.ledger.mark()
            y = HE.he_linear(c.share(Shape((8, 256), torch.float64)), c.share(Shape((256, 1024), torch.float64)),
                             None, P, packing)
            assert tuple(y.shape) == (8, 1024)
            f = HE.he_linear_cost(P, 8, 256, 1024, packing)
            assert c.ledger.cost_since(mark) == type(f)(f.online_bytes + extra, f.offline_bytes, f.rounds)


def test_key_sizes_are_serialised_keys():
    """PK_BYTES and GALOIS_KEY_BYTES are measured: a fresh public key and one element's Galois key as
    serialised (zstd lengths vary by a few bytes)."""
    pytest.importorskip("tenseal")
    from comet_core.mpc import he_bfv, he_simd

    ctx = he_simd.SlotBFV(52)
    assert len(ctx.public_key_bytes()) == pytest.approx(HE.PK_BYTES, rel=0.002)
    assert len(he_bfv.BFV(52).public_key_bytes()) == pytest.approx(HE.PK_BYTES, rel=0.002)
    assert len(he_bfv.serialise(ctx.swap_key())) == pytest.approx(HE.GALOIS_KEY_BYTES, rel=0.002)


def test_ct_bytes_is_a_fresh_serialised_ciphertext():
    pytest.importorskip("tenseal")
    assert HE.measure_ct_bytes() == pytest.approx(HE.CT_BYTES, rel=0.002)    # zstd output varies by a few bytes


def test_iron_and_bolt_offer_he_with_their_packings():
    from comet_core.errors import ConfigError
    from comet_core.systems.bolt import BoltSystem
    from comet_core.systems.dense import DenseSystem
    from comet_core.systems.iron import IronSystem

    assert BoltSystem({"linear": "he"}).he_packing == "bolt"
    assert IronSystem({"linear": "he"}).he_packing == "iron"
    with pytest.raises(ConfigError, match="he_packing='bolt' is not available"):
        IronSystem({"linear": "he", "he_packing": "bolt"})
    with pytest.raises(ConfigError, match="linear='he' is not available"):
        DenseSystem({"linear": "he"})


def test_iron_exact_is_a_real_product_and_books_measured_bytes(mpc):
    pytest.importorskip("tenseal")
    g2 = torch.Generator().manual_seed(7)
    x = torch.randn(4, 64, generator=g2, dtype=torch.float64)
    w = torch.randn(64, 48, generator=g2, dtype=torch.float64) / 4
    b = torch.randn(48, generator=g2, dtype=torch.float64)
    assert _check_exact(mpc, x, w, b, "iron") in (None, (2, 1))    # 2 k-blocks: the server sums products


# -- system.he_packing=cheetah: the real BFV product (mpc/he_bfv.py) ------------------------------------

def test_cheetah_packing_fits_and_counts():
    """T' k' n' <= N for every block; counts as the docstring's formula; fewer than one ciphertext per row."""
    from comet_core.mpc import he_bfv
    for T, k, n in [(3, 16, 24), (8, 256, 1024), (1, 1024, 256), (128, 768, 3072)]:
        tp, kp, np_ = he_bfv.packing(T, k, n)
        assert tp * kp * np_ <= he_bfv.POLY_DEGREE and tp <= T and kp <= k and np_ <= n
        rows = -(-T // tp)
        assert he_bfv.ciphertext_counts(T, k, n) == (rows * -(-k // kp), rows * -(-n // np_))
    assert HE.ciphertext_counts(128, 768, 3072, "cheetah")[0] > HE.ciphertext_counts(128, 768, 3072)[0]


def test_cheetah_plain_modulus_carries_the_value_range():
    """2^ell holds x W + b at scale 2f with 20 bits of integer range at f = 16; SEAL refuses t > 2^60."""
    from comet_core.mpc import he_bfv
    assert he_bfv.plain_bits_for(16) == 52 and he_bfv.value_range(16) == 2 ** 19
    assert he_bfv.plain_bits_for(24) == 60
    with pytest.raises(ValueError, match="at most"):
        he_bfv.BFV(61)


def test_he_packing_is_validated():
    from comet_core.errors import ConfigError
    from comet_core.systems.bolt import BoltSystem
    assert BoltSystem({"linear": "he", "he_packing": "cheetah"}).he_packing == "cheetah"
    with pytest.raises(ConfigError, match="he_packing='simd'"):
        BoltSystem({"linear": "he", "he_packing": "simd"})


@pytest.mark.parametrize("system", ["bolt", "iron"])
def test_he_end_to_end_tiny_model(tmp_path, system):
    """iron and bolt with their real HE linear layers (their default packings) through the CLI's task
    (one tiny-opt layer, prefill and decode): private tokens equal the plaintext reference; cost mode books
    the exact run's ciphertext counts, its bytes within 0.2% of the measured ones (zstd lengths vary by a
    few bytes); the rest of the HE protocol's rows identical."""
    pytest.importorskip("tenseal")
    from hydra import compose, initialize_config_dir

    from experiments.run import execute, run
    conf = str(__import__("pathlib").Path(__file__).resolve().parent.parent / "conf")
    over = [f"system={system}", "system.linear=he", "model=tiny-opt", "model.layers=1",
            "gen_tokens=2", "prompt=To be", "seed=1"]
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("config", overrides=[f"output_dir={tmp_path}", *over])
        cost = compose("config", overrides=[f"output_dir={tmp_path / 'c'}", *over, "mode=cost"])
    s = run(cfg, tmp_path)
    assert s["max_logit_err"] < 2e-2, s["max_logit_err"]
    import pandas as pd
    e, c = pd.read_csv(tmp_path / "ledger.csv.gz"), execute(cost).ledger
    he_e, he_c = e[e.protocol == "he.linear"], c[c.protocol == "he.linear"]
    assert set(he_e.cost_source) == {"measured", "model"} and set(he_c.cost_source) == {"model"}
    big_e, big_c = he_e[he_e.bits > 8 * 300_000], he_c[he_c.bits > 8 * 300_000]   # the ciphertext rows
    assert big_e.elements.sum() == big_c.elements.sum() > 0
    assert big_e.bytes.sum() == pytest.approx(big_c.bytes.sum(), rel=0.002)
    assert he_e[he_e.cost_source == "model"].bytes.sum() == he_c[he_c.bits <= 8 * 300_000].bytes.sum()


def test_cheetah_client_share_is_masked():
    """The client's decrypted share is fresh randomness each run (P0 masks every coefficient), the sum
    exact: y0 + y1 = x W + b mod 2^ell (a positive control: the two runs' y1 differ, their sums do not)."""
    pytest.importorskip("tenseal")
    import numpy as np

    from comet_core.mpc import he_bfv
    ell, m = 52, np.uint64((1 << 52) - 1)
    r = np.random.default_rng(3)
    x0, x1 = (r.integers(0, 1 << 52, (2, 8), dtype=np.uint64) for _ in range(2))
    w, b = r.integers(0, 1 << 52, (8, 5), dtype=np.uint64), r.integers(0, 1 << 52, 5, dtype=np.uint64)
    bfv = he_bfv.BFV(ell)
    a0, a1, _, _ = he_bfv.he_matmul(bfv, x0, x1, w, b)
    c0, c1, _, _ = he_bfv.he_matmul(bfv, x0, x1, w, b)
    want = (((x0 + x1) & m) @ w + b) & m
    assert ((a0 + a1) & m == want).all() and ((c0 + c1) & m == want).all()
    assert (a1 != c1).all()


def test_bolt_client_share_is_masked():
    """The slot packing likewise: P1's decrypted share is fresh randomness each run (P0 masks every slot with
    a uniform R), the sum exact: y0 + y1 = x W + b mod p (positive control: the runs' y1 differ, the sums
    do not)."""
    pytest.importorskip("tenseal")
    import numpy as np

    from comet_core.mpc import he_simd
    ctx = he_simd.SlotBFV(40)
    p = np.uint64(ctx.p)
    r = np.random.default_rng(4)
    x0, x1 = (r.integers(0, ctx.p, (3, 16), dtype=np.uint64) for _ in range(2))
    w, b = r.integers(0, 1 << 12, (16, 24), dtype=np.uint64), r.integers(0, ctx.p, 24, dtype=np.uint64)
    a0, a1, _, _ = he_simd.he_matmul(ctx, x0, x1, w, b)
    c0, c1, _, _ = he_simd.he_matmul(ctx, x0, x1, w, b)
    xv = [[int(v) for v in row] for row in (x0 + x1) % p]                # exact in Python integers mod p
    want = np.array([[(sum(xv[t][i] * int(w[i, j]) for i in range(16)) + int(b[j])) % ctx.p for j in range(24)]
                     for t in range(3)], dtype=np.uint64)
    assert ((a0 + a1) % p == want).all() and ((c0 + c1) % p == want).all()
    assert (a1 != c1).all()


class _Counting:
    """A SEAL object whose calls of `names` are counted into `counts` (the rest pass through)."""

    def __init__(self, inner, names: dict, counts: dict):
        self._inner, self._names, self._counts = inner, names, counts

    def __getattr__(self, a):
        f = getattr(self._inner, a)
        if a not in self._names:
            return f

        def call(*args, **kw):
            self._counts[self._names[a]] = self._counts.get(self._names[a], 0) + 1
            return f(*args, **kw)
        return call


@pytest.mark.parametrize("packing,shape", [("bolt", (1, 64, 256)), ("bolt", (3, 256, 64)), ("iron", (1, 64, 256)),
                                           ("iron", (5, 128, 96))])
def test_work_counts_are_the_seal_calls_he_matmul_makes(packing, shape):
    """he_op_counts (the work the compute model prices, from shapes alone) = the encryptions, products,
    rotations and decryptions the real product runs on dense random weights."""
    pytest.importorskip("tenseal")
    import numpy as np

    from comet_core.mpc import he_bfv, he_simd

    T, k, n = shape
    counts: dict = {}
    ctx = he_simd.SlotBFV(40) if packing == "bolt" else he_bfv.BFV(40)
    ctx.evaluator = _Counting(ctx.evaluator, {"multiply_plain": "he_mul_plain" if packing == "bolt" else "he_mul_plain_coeff",
                                              "rotate_rows": "he_rotate", "rotate_columns": "he_rotate",
                                              "rotate_rows_inplace": "he_rotate", "transform_to_ntt_inplace": "he_ntt",
                                              "transform_from_ntt_inplace": "he_ntt"}, counts)
    ctx.encryptor = _Counting(ctx.encryptor, {"encrypt": "he_encrypt"}, counts)
    ctx.decryptor = _Counting(ctx.decryptor, {"decrypt": "he_decrypt"}, counts)
    rng = np.random.default_rng(0)
    top = ctx.p if packing == "bolt" else 1 << 40
    x0, x1 = (rng.integers(0, top, (T, k), dtype=np.uint64) for _ in range(2))
    w = rng.integers(1, top, (k, n), dtype=np.uint64)
    (he_simd if packing == "bolt" else he_bfv).he_matmul(ctx, x0, x1, w, None)
    assert counts == HE.he_op_counts(T, k, n, packing)


@pytest.mark.parametrize("packing", ["bolt", "iron"])
def test_both_modes_count_the_same_he_work(packing):
    """The work counters of one product are the same in exact and cost mode (the compute model prices cost
    mode's from exact mode's calibrated units)."""
    pytest.importorskip("tenseal")
    got = {}
    for mode in ("exact", "cost"):
        m = MPC(mode=mode, seed=0)
        x, w = (m.share(t) if mode == "exact" else m.share(Shape(tuple(t.shape), torch.float64)) for t in (X, W))
        HE.he_linear(x, w, None, P, packing)
        got[mode] = {key[-1]: v for key, v in m.ledger.work.counts.items() if str(key[-1]).startswith("he_")}
    assert got["exact"] == got["cost"] == HE.he_op_counts(*X.shape, W.shape[1], packing)


def test_plaintext_from_its_serialisation_is_the_polynomial():
    """BFV.plaintext writes SEAL's serialisation of the coefficients and loads it: the same polynomial as
    SEAL's own hex syntax (zeros, the top coefficient and the largest value below t included)."""
    pytest.importorskip("tenseal")
    import numpy as np

    from comet_core.mpc import he_bfv

    bfv = he_bfv.BFV(40)
    c = np.random.default_rng(1).integers(0, 1 << 40, he_bfv.POLY_DEGREE, dtype=np.uint64)
    c[::7] = 0
    c[-1], c[1] = (1 << 40) - 1, 0
    nz = np.nonzero(c)[0]
    hex_pt = bfv.seal.Plaintext(" + ".join(f"{int(c[i]):X}x^{int(i)}" for i in nz[::-1]))
    pt = bfv.plaintext(c)
    assert pt.to_string() == hex_pt.to_string()
    assert [pt.data(i) for i in (0, 1, 8191)] == [int(c[0]), 0, (1 << 40) - 1]
    c[3] = 1 << 40                                       # outside Z_t: refused, not reduced
    with pytest.raises(ValueError, match="outside"):
        bfv.plaintext(c)


def test_a_single_p1_refuses_a_weight_share_it_should_not_hold():
    """Over two processes P0 multiplies by its own share of W, so P1's must be zero (the owner shares the
    linear layers' weights to P0: share_weights(held=system.owner_held())); a P1 holding a random share
    says so instead of computing a wrong product. Positive control: a zero share passes."""
    from types import SimpleNamespace

    from comet_core.errors import CometError
    from comet_core.systems.iron import IronSystem

    assert {"wq", "w1", "b1", "w_down"} <= IronSystem({"linear": "he"}).owner_held()
    assert not IronSystem({}).owner_held()
    HE._p1_holds_nothing(None, SimpleNamespace(data=torch.zeros(1, 4, 4, dtype=torch.int64)), None)
    with pytest.raises(CometError, match="P0 .* must hold W"):
        HE._p1_holds_nothing(None, SimpleNamespace(data=torch.ones(1, 4, 4, dtype=torch.int64)), None)


def test_to_p0_shares_give_p0_the_value():
    """MPC.share(to_p0=True): P0's half is the encoded value, P1's zero; the setup row goes to P0."""
    m = MPC(seed=0)
    s = m.share(W, owner="model_owner", phase="setup", to_p0=True)
    assert torch.equal(s.data[1], torch.zeros_like(s.data[1])) and torch.equal(s.data[0], s.data[0] + s.data[1])
    assert_close(m.reveal(s), W, atol=2 ** -16, what="to_p0 share")
    assert m.ledger.rows[-3][6] == "P0"                                  # before reveal's two output rows
