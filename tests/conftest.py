"""Shared fixtures for the engine tests: engines in both truncation modes and a closeness check.

Tests build small shapes only (2 shared CPU cores); every random input comes from a fixed seed.
"""

from __future__ import annotations

import pytest
import torch

from comet_core.mpc.engine import MPC, EngineConfig

FRAC_BITS = 16
LSB = 2.0 ** -FRAC_BITS  # one unit in the last place of the fixed-point encoding


def quantize(x: torch.Tensor, frac_bits: int = FRAC_BITS) -> torch.Tensor:
    """The float64 value that the fixed-point encoding represents exactly (round to nearest)."""
    return torch.round(x.to(torch.float64) * 2.0 ** frac_bits) / 2.0 ** frac_bits


def assert_close(got: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float = 0.0, what: str = "",
                 x: torch.Tensor | None = None) -> None:
    """|got - ref| <= atol + rtol * |ref| elementwise; on failure name the worst element (and its input)."""
    got = got.to(torch.float64)
    ref = ref.to(torch.float64).expand(got.shape) if ref.dim() <= got.dim() else ref.to(torch.float64)
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != expected {tuple(ref.shape)}"
    err = (got - ref).abs()
    bound = atol + rtol * ref.abs()
    bad = err > bound
    if bool(bad.any()):
        excess = (err - bound).flatten()
        i = int(excess.argmax())
        where = f" at input {x.flatten()[i].item():.6g}" if x is not None and x.numel() == got.numel() else ""
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{got.numel()} elements out of tolerance (atol={atol:.3g}, "
            f"rtol={rtol:.3g}); worst{where}: expected {ref.flatten()[i].item():.8g}, "
            f"got {got.flatten()[i].item():.8g} (|err| {err.flatten()[i].item():.3g})")


@pytest.fixture(params=["local", "dealer"])
def truncation(request) -> str:
    return request.param


@pytest.fixture
def mpc(truncation) -> MPC:
    """An exact-mode engine, once per truncation mode."""
    return MPC(EngineConfig(frac_bits=FRAC_BITS, truncation=truncation), seed=7, mode="exact")


@pytest.fixture
def gen() -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(1234)
    return g
