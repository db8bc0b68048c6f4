"""The distributed comparison function (mpc/dcf.py): V_0 + V_1 = beta [y < alpha] for every element,
each party's evaluation from its own key alone, the key-size formula, and the batched fixed-key AES PRG."""

from __future__ import annotations

import numpy as np
import pytest

from comet_core.mpc import dcf


def _edge_inputs(rng, alpha: np.ndarray, nb: int) -> np.ndarray:
    """y at alpha, alpha +- 1, 0 and the domain's top, and uniform elsewhere."""
    n = alpha.size
    top = np.uint64((1 << nb) - 1)
    y = rng.integers(0, 1 << nb, n, dtype=np.uint64)
    q = n // 8
    y[:q] = alpha[:q]
    y[q:2 * q] = alpha[q:2 * q] - np.uint64(1)
    y[2 * q:3 * q] = alpha[2 * q:3 * q] + np.uint64(1)
    y[3 * q:4 * q] = 0
    y[4 * q:5 * q] = top
    return y & top


@pytest.fixture(params=["numba", "numpy"])
def kernels(request, monkeypatch):
    """Both implementations of the level steps (numba's, fused per element; numpy's)."""
    monkeypatch.setattr(dcf, "USE_NUMBA", request.param == "numba" and dcf.USE_NUMBA)
    return request.param


@pytest.mark.parametrize("nb,w", [(1, 1), (5, 1), (8, 2), (63, 1), (63, 2), (20, 4)])
def test_dcf_evaluates_beta_below_alpha(nb, w, kernels):
    """V_0 + V_1 = beta [y < alpha] for every element, alpha including 0 and the domain's top."""
    rng = np.random.default_rng(nb * 10 + w)
    n = 800
    alpha = rng.integers(0, 1 << nb, n, dtype=np.uint64)
    alpha[-3:] = [0, (1 << nb) - 1, 1 % (1 << nb)]
    y = _edge_inputs(rng, alpha, nb)
    beta = rng.integers(-(1 << 63), (1 << 63) - 1, (n, w), dtype=np.int64)
    beta[0] = 1
    seeds = rng.integers(0, 1 << 64, (2, n, 2), dtype=np.uint64)
    keys = dcf.gen(alpha, beta, seeds, nb)
    both = dcf.eval_((0, 1), y, keys)
    np.testing.assert_array_equal(both[0] + both[1], beta * (y < alpha)[:, None])
    for b in (0, 1):   # one party alone, from its own key, gets the same share
        own = dcf.Keys(keys.seeds[b:b + 1], keys.cw_s, keys.cw_t, keys.cw_v)
        np.testing.assert_array_equal(dcf.eval_((b,), y, own)[0], both[b])


def test_dcf_key_size_formula():
    """Per element and party: 63 levels of (128 + 2 + 64 w) bits and the leaf's 64 w, whole bytes."""
    assert dcf.key_bits(63, 1) == 63 * 194 + 64 == 12286
    assert dcf.key_bytes(63, 1) == 1536
    assert dcf.key_bytes(63, 2) == (63 * 258 + 128 + 7) // 8 == 2048
    keys = dcf.gen(np.zeros(3, dtype=np.uint64), np.ones((3, 2), dtype=np.int64),
                   np.zeros((2, 3, 2), dtype=np.uint64), 63)
    assert keys.cw_s.shape == (63, 3, 2) and keys.cw_t.shape == (63, 3, 2) and keys.cw_v.shape == (64, 3, 2)


def test_dcf_one_aes_call_per_level(monkeypatch):
    """Batched evaluation: one ECB call per tree level (and one for the leaf) for all elements and parties."""
    calls = []
    real, real_into = dcf.mmo, dcf.aes_into
    monkeypatch.setattr(dcf, "mmo", lambda b: calls.append(b.shape) or real(b))
    monkeypatch.setattr(dcf, "aes_into", lambda b, out: calls.append(b.shape) or real_into(b, out))
    rng = np.random.default_rng(0)
    n, nb = 500, 63
    keys = dcf.gen(rng.integers(0, 1 << nb, n, dtype=np.uint64), np.ones((n, 1), dtype=np.int64),
                   rng.integers(0, 1 << 64, (2, n, 2), dtype=np.uint64), nb)
    assert len(calls) == nb + 1
    calls.clear()
    dcf.eval_((0, 1), rng.integers(0, 1 << nb, n, dtype=np.uint64), keys)
    assert len(calls) == nb + 1 and calls[0] == (2, n, 2, 2)   # both parties, 2 blocks per element


def test_dcf_prg_is_fixed_key_mmo():
    """G_j(s) = AES_K(s ^ j) ^ s ^ j with the public key K (the docstring's PRG)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    blk = np.array([[123456789, 987654321]], dtype=np.uint64)
    enc = Cipher(algorithms.AES(dcf.FIXED_KEY), modes.ECB()).encryptor().update(blk.tobytes())
    np.testing.assert_array_equal(dcf.mmo(blk), np.frombuffer(enc, dtype=np.uint64).reshape(1, 2) ^ blk)




def test_dcf_numba_and_numpy_steps_give_the_same_keys_and_shares(monkeypatch):
    pytest.importorskip("numba")
    rng = np.random.default_rng(5)
    n, nb = 300, 63
    args = (rng.integers(0, 1 << nb, n, dtype=np.uint64), rng.integers(-(1 << 63), (1 << 63) - 1, (n, 2), dtype=np.int64),
            rng.integers(0, 1 << 64, (2, n, 2), dtype=np.uint64), nb)
    y = rng.integers(0, 1 << nb, n, dtype=np.uint64)
    out = []
    for use in (True, False):
        monkeypatch.setattr(dcf, "USE_NUMBA", use)
        k = dcf.gen(*args)
        out.append((k.cw_s, k.cw_t, k.cw_v, dcf.eval_((0, 1), y, k)))
    assert dcf._compiled is not None     # numba's kernels did compile
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)
