"""Bit-for-bit pins of the small protocols' shares, opened values, dealer streams and ledger rows.

The per-call fast paths of the small protocols (prg.PRG's made-ahead keystream, the comparison tree's
bit helpers, the dealer's AND triples, truncation, the simulation's range checks) must not change a
single share, opened value, stream word or ledger row. For a fixed seed this test runs a mix of the
protocols a decode step uses (Beaver products, truncation, DReLU / LTZ of odd and even sizes, exp,
reciprocal, inverse square root, SiLU, softmax, RMSNorm, max and argmax) and compares SHA-256 digests
of (1) every opened value (MPC.open_raw / open_masked results), (2) every protocol's output shares,
(3) the ledger rows and (4) the next words of every dealer stream, with digests recorded at
main d2ec281 (before the fast paths).
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from comet_core.mpc import arith, compare, nonlinear, pairmax
from comet_core.mpc.engine import MPC, EngineConfig

# recorded at main d2ec281 (PYTHONPATH=<a checkout of d2ec281> python tests/test_bitexact_small.py prints them)
EXPECTED = {
    "dealer": "8194a0e7386e82fec0852e1372e55652cebf4cd705c3e5be30aa7007340228bf",
    "local": "27a3942fd3d08fedbc263d840389bdec3e776f17e810337f41a48e704d637fd3",
}


def _update(h, t: torch.Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(str((tuple(t.shape), str(t.dtype))).encode())
    h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def fingerprint(truncation: str) -> dict[str, str]:
    """SHA-256 digests of the opened values, output shares, ledger rows and dealer streams of a fixed run."""
    mpc = MPC(EngineConfig(truncation=truncation), seed=7, mode="exact")
    h_open = hashlib.sha256()
    raw, masked = mpc.open_raw, mpc.open_masked

    def open_raw(*a, **k):
        out = raw(*a, **k)
        for t in out:
            _update(h_open, t)
        return out

    def open_masked(*a, **k):
        out = masked(*a, **k)
        for t in out:
            _update(h_open, t)
        return out

    def open_np(*a, **k):   # the numpy variant (simulation): the same values, as numpy arrays
        out = np_open(*a, **k)
        for t in out:
            _update(h_open, torch.from_numpy(t))
        return out

    np_open = getattr(mpc, "open_np", None)
    mpc.open_raw, mpc.open_masked = open_raw, open_masked
    if np_open is not None:
        mpc.open_np = open_np
    g = torch.Generator().manual_seed(3)
    outs = []

    def sh(*shape, lo=-4.0, hi=4.0):
        return mpc.share(torch.rand(*shape, generator=g, dtype=torch.float64) * (hi - lo) + lo)

    x1, x7, x16 = sh(1, 1), sh(1, 7), sh(2, 8)
    pos1, pos5 = sh(1, 1, lo=0.5, hi=40.0), sh(5, lo=0.01, hi=200.0)
    outs.append(arith.mul(x1, x1))
    outs.append(arith.mul(x7, x1))
    outs.append(arith.mul(x16, x16, out_frac=24))
    outs.append(arith.square(x7))
    outs.append(arith.truncate(x16, 5))
    big = sh(3, 3001)                                       # past the numpy limits of arith and the dealer
    outs.append(arith.mul(big, big))
    outs.append(arith.square(sh(5001)))
    outs.append(arith.truncate(big, 9))
    for n in (1, 2, 3, 7, 16, 63, 64, 65, 130, 2100, 9001, 17000):   # past prg.SMALL_READ and the numpy limits
        outs.append(compare.drelu(sh(n)))
    outs.append(AShareBits(compare.ltz_bits(sh(3, 5)), mpc))
    outs.append(compare.relu(x16))
    outs.append(nonlinear.exp(x7))
    outs.append(nonlinear.reciprocal(pos5))
    outs.append(nonlinear.inv_sqrt(pos1))
    outs.append(nonlinear.inv_sqrt(pos5))
    outs.append(nonlinear.silu(sh(1, 37)))
    outs.append(nonlinear.silu(sh(1, 1536)))
    outs.append(nonlinear.softmax(sh(2, 9)))
    outs.append(nonlinear.rmsnorm(sh(1, 24), mpc.share(torch.rand(24, generator=g) + 0.5)))
    outs.append(pairmax.max_last(sh(3, 6)))
    outs.append(compare.argmax(sh(2, 5)))
    outs.append(compare.maximum(x7, sh(1, 7)))
    h_out = hashlib.sha256()
    for o in outs:
        _update(h_out, o.data)
        h_out.update(str(o.frac).encode())
    h_led = hashlib.sha256(repr(mpc.ledger.rows).encode())
    h_gen = hashlib.sha256()
    for gen in (mpc.dealer.gen_p0, mpc.dealer.gen_p1, mpc.dealer.gen_own):
        h_gen.update(str(gen.block).encode())
        _update(h_gen, gen.ring((6,)))
    parts = {"open": h_open.hexdigest(), "out": h_out.hexdigest(), "ledger": h_led.hexdigest(),
             "streams": h_gen.hexdigest(), "rows": str(len(mpc.ledger.rows)), "rounds": str(mpc.ledger.round)}
    parts["all"] = hashlib.sha256(repr(sorted(parts.items())).encode()).hexdigest()
    return parts


class AShareBits:
    """XOR-shared bits in the output list (data and a scale of 0, like an AShare)."""

    def __init__(self, data: torch.Tensor, mpc: MPC) -> None:
        self.data, self.mpc, self.frac = data, mpc, 0


@pytest.mark.parametrize("truncation", ["dealer", "local"])
def test_small_protocols_bit_for_bit(truncation):
    got = fingerprint(truncation)
    assert got["all"] == EXPECTED[truncation], f"shares, openings, ledger or streams changed: {got}"


if __name__ == "__main__":
    for t in ("dealer", "local"):
        print(t, fingerprint(t))
