"""IKNP OT extension (mpc/iknp.py), the protocol the OT microbenchmark times: the receiver gets exactly
the messages its choice bits select (and not the others), the bit transpose is a transpose, and the
bytes sent are kappa bits (R -> S) plus two 128-bit ciphertexts (S -> R) per OT."""

import os

import numpy as np

from comet_core.mpc import iknp


def _msgs(m):
    return np.frombuffer(os.urandom(16 * m), np.uint8).reshape(m, 16)


def test_receiver_gets_its_chosen_messages_only():
    m = 4096
    x0, x1 = _msgs(m), _msgs(m)
    r = np.frombuffer(os.urandom(m), np.uint8) & 1
    out, to_s, to_r = iknp.extend(x0, x1, r, batch=1024)       # four batches: the streams run on
    want = np.where(r[:, None].astype(bool), x1, x0)
    other = np.where(r[:, None].astype(bool), x0, x1)
    assert (out == want).all()
    assert not (out == other).all(axis=1).any()                # positive control: the unchosen differ
    assert (to_s, to_r) == (m * iknp.KAPPA // 8, m * 32)


def test_transpose_is_the_bit_transpose():
    mat = np.frombuffer(os.urandom(128 * 64), np.uint8).reshape(128, 64)
    bits = np.unpackbits(mat, axis=1, bitorder="little")       # (128, 512)
    got = np.unpackbits(iknp.transpose_bits(mat), axis=1, bitorder="little")
    assert (got == bits.T).all()


def test_the_committed_profile_prices_ot_work():
    """results/ot_extension/profile.json (benchmarks/ot_extension.py) is read as the per-OT CPU cost; a
    modelled step list's OT instances times it; silent OT is unmeasured (None), not a made-up figure."""
    import pytest

    from comet_core.mpc import ideal, ot_profile
    prof = ot_profile.load()
    assert prof["label"] == "modelled" and prof["command"].startswith("python benchmarks/ot_extension.py")
    s = ot_profile.seconds_per_ot("iknp")
    assert s == prof["iknp_s_per_ot"] and 0 < s < 1e-3
    steps = ideal.relu_steps(ideal.Params(), 1000)
    n = ideal.steps_ot_instances(steps)
    assert n > 0 and ot_profile.ot_seconds(n) == pytest.approx(n * s)
    assert ot_profile.seconds_per_ot("silent") is None and ot_profile.ot_seconds(n, "silent") is None
    with pytest.raises(ValueError, match="flavour"):
        ot_profile.seconds_per_ot("kkot")
