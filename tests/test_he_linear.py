"""system.linear=he (bolt): BOLT's HE linear layer as an ideal functionality. Exact mode equals the plaintext
product; the ledger books whole ciphertexts per direction (P1 its encrypted share, P0 the masked results)
and the mod-p reduction, exactly he_linear_cost; the booked ciphertext size is a fresh serialised one."""

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


def test_exact_output_and_ledger(mpc):
    mark = mpc.ledger.mark()
    y = HE.he_linear(mpc.share(X), mpc.share(W), mpc.share(B), P)
    assert_close(mpc.reveal(y), X @ W + B, atol=2 ** -14, what="he_linear")
    cost = mpc.ledger.cost_since(mark)
    assert cost == HE.he_linear_cost(P, 3, 16, 24)
    steps = HE.he_linear_steps(P, 3, 16, 24)
    assert steps[0].count == 1 and steps[0].p1 == 8 * HE.CT_BYTES and steps[0].p0 == 0    # 48 values: 1 ct
    assert steps[1].count == 1 and steps[1].p0 == 8 * HE.CT_BYTES
    assert steps[2].count == 72 and steps[2].p1 == math.ceil((ideal.MILL(37) + ideal.MUX(37)).p1)


def test_ciphertext_counts_are_bolts():
    """bert.cpp at 128 tokens: a 128 x 768 share is 12 ciphertexts, a 128 x 3072 result 48."""
    s = HE.he_linear_steps(P, 128, 768, 3072)
    assert (s[0].count, s[1].count) == (12, 48)


def test_cost_mode_books_the_same_rows():
    e, c = MPC(seed=2), MPC(seed=2, mode="cost")
    HE.he_linear(e.share(X), e.share(W), None, P)
    y = HE.he_linear(c.share(Shape(X.shape, torch.float64)), c.share(Shape(W.shape, torch.float64)), None, P)
    assert tuple(y.shape) == (3, 24)
    assert e.ledger.rows == c.ledger.rows


def test_ct_bytes_is_a_fresh_serialised_ciphertext():
    pytest.importorskip("tenseal")
    assert HE.measure_ct_bytes() == pytest.approx(HE.CT_BYTES, rel=0.002)    # zstd output varies by a few bytes


def test_only_bolt_offers_he(tmp_path):
    from comet_core.errors import ConfigError
    from comet_core.systems.bolt import BoltSystem
    from comet_core.systems.iron import IronSystem

    assert BoltSystem({"linear": "he"}).linear_name == "he"
    with pytest.raises(ConfigError, match="linear='he' is not available"):
        IronSystem({"linear": "he"})


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


def test_cheetah_exact_is_a_real_product_and_books_measured_bytes(mpc):
    """Output == the fixed-point product up to the one rounding of the rescale; the ledger's ciphertext rows are the serialised lengths actually sent, each
    within 0.2% of CT_BYTES (zstd varies by a few bytes), as many as the formula counts."""
    pytest.importorskip("tenseal")
    if mpc.rank is not None:                             # one party per engine: refused, not run
        from comet_core.errors import CometError
        with pytest.raises(CometError, match="both parties in one process"):
            HE.he_linear(mpc.share(X), mpc.share(W), None, P, "cheetah")
        return
    T, k, n = 4, 64, 48                                  # 2 k-blocks: the server sums products
    g2 = torch.Generator().manual_seed(7)
    x = torch.randn(T, k, generator=g2, dtype=torch.float64)
    w = torch.randn(k, n, generator=g2, dtype=torch.float64) / 4
    b = torch.randn(n, generator=g2, dtype=torch.float64)
    xs, ws, bs = mpc.share(x), mpc.share(w), mpc.share(b)
    mark = mpc.ledger.mark()
    rows0 = len(mpc.ledger.rows)
    y = HE.he_linear(xs, ws, bs, P, "cheetah")
    cost, formula = mpc.ledger.cost_since(mark), HE.he_linear_cost(P, T, k, n, "cheetah")
    rows = mpc.ledger.rows[rows0:]
    fx = [mpc.reveal(t) for t in (xs, ws, bs)]                          # the fixed-point operands
    assert_close(mpc.reveal(y), fx[0] @ fx[1] + fx[2], atol=2 ** -16, what="he_linear cheetah (one rounding)")
    assert_close(mpc.reveal(y), x @ w + b, atol=k * 2 ** -16, what="he_linear cheetah vs float")
    he_rows = [r for r in rows if r[11] == "measured"]                 # (..., sender 5, elements 7, bits 8, ...)
    cin, cout = HE.ciphertext_counts(T, k, n, "cheetah")
    assert cin == 2 and cout == 1
    assert sum(r[7] for r in he_rows if r[5] == "P1") == cin
    assert sum(r[7] for r in he_rows if r[5] == "P0") == cout
    assert all(abs(r[8] / 8 - HE.CT_BYTES) <= 0.002 * HE.CT_BYTES for r in he_rows)
    assert cost.rounds == formula.rounds
    assert cost.online_bytes == pytest.approx(formula.online_bytes, rel=0.002)


def test_cheetah_cost_mode_books_the_formula():
    c = MPC(seed=2, mode="cost")
    mark = c.ledger.mark()
    y = HE.he_linear(c.share(Shape((8, 256), torch.float64)), c.share(Shape((256, 1024), torch.float64)),
                     None, P, "cheetah")
    assert tuple(y.shape) == (8, 1024)
    assert c.ledger.cost_since(mark) == HE.he_linear_cost(P, 8, 256, 1024, "cheetah")


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


def test_cheetah_end_to_end_tiny_model(tmp_path):
    """bolt with the real HE linear layers through the CLI's task (one tiny-opt layer, prefill and decode):
    private tokens equal the plaintext reference; cost mode books the exact run's ciphertext counts, its
    bytes within 0.2% of the measured ones (zstd lengths vary by a few bytes)."""
    pytest.importorskip("tenseal")
    from hydra import compose, initialize_config_dir

    from experiments.run import execute, run
    conf = str(__import__("pathlib").Path(__file__).resolve().parent.parent / "conf")
    over = ["system=bolt", "system.linear=he", "system.he_packing=cheetah", "model=tiny-opt", "model.layers=1",
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
