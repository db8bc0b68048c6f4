"""Network model and engine configuration: the time formula, the presets, and rejection of bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from comet_core.comm.network import Network
from comet_core.errors import ConfigError
from comet_core.mpc.engine import MPC, EngineConfig

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_comm_seconds_formula():
    net = Network("t", bandwidth_bps=1e9, latency_s=1e-3)
    # rounds * one-way latency + busiest-direction bytes * 8 / bandwidth
    assert net.comm_seconds(0, 0) == 0.0
    assert net.comm_seconds(10, 0) == pytest.approx(10e-3)
    assert net.comm_seconds(0, 125_000_000) == pytest.approx(1.0)
    assert net.comm_seconds(8, 39_321_600 // 2) == pytest.approx(8e-3 + 19_660_800 * 8 / 1e9)
    assert Network("z", 5e9, 0.0).comm_seconds(100, 0) == 0.0


@pytest.mark.parametrize("bw", [0, 0.0, -1.0, -5e9])
def test_rejects_non_positive_bandwidth(bw):
    with pytest.raises(ConfigError, match="bandwidth"):
        Network("bad", bandwidth_bps=bw, latency_s=1e-3)


@pytest.mark.parametrize("lat", [-1e-9, -0.04])
def test_rejects_negative_latency(lat):
    with pytest.raises(ConfigError, match="latency"):
        Network("bad", bandwidth_bps=1e9, latency_s=lat)


def test_from_cfg():
    net = Network.from_cfg(OmegaConf.create({"name": "x", "bandwidth_bps": "2e8", "latency_s": 0.04}))
    assert net == Network("x", 2e8, 0.04)
    with pytest.raises(ConfigError):
        Network.from_cfg(OmegaConf.create({"name": "x", "bandwidth_bps": "fast", "latency_s": 0.04}))
    with pytest.raises(ConfigError):
        Network.from_cfg(OmegaConf.create({"name": "x", "bandwidth_bps": 1e9, "latency_s": -1}))


# The presets: lan 5 Gbps / 0.8 ms, lan-3g 3 Gbps / 0.8 ms, wan-200m 200 Mbps / 40 ms, wan-100m 100 Mbps / 80 ms.
PRESETS = {"lan": (5e9, 8e-4), "lan-3g": (3e9, 8e-4), "wan-200m": (2e8, 0.04), "wan-100m": (1e8, 0.08),
           "emu-100m-10ms": (1e8, 0.01), "emu-1g-1ms": (1e9, 1e-3)}   # the last two: the emulation check


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_network_presets(name):
    cfg = OmegaConf.load(CONF / "network" / f"{name}.yaml")
    net = Network.from_cfg(cfg)
    assert net.name == name
    assert (net.bandwidth_bps, net.latency_s) == pytest.approx(PRESETS[name])


@pytest.mark.parametrize("frac_bits", [7, 8, 13, 25, 0, -16, 64, 16.0, "16", True])
def test_engine_rejects_bad_frac_bits(frac_bits):
    with pytest.raises(ConfigError, match="frac_bits"):
        EngineConfig(frac_bits=frac_bits)


@pytest.mark.parametrize("frac_bits", [14, 16, 24])
def test_engine_accepts_frac_bits_in_range(frac_bits):
    assert EngineConfig(frac_bits=frac_bits).frac_bits == frac_bits


@pytest.mark.parametrize("truncation", ["", "exact", "Local", None])
def test_engine_rejects_unknown_truncation(truncation):
    with pytest.raises(ConfigError, match="truncation"):
        EngineConfig(truncation=truncation)


def test_engine_rejects_unknown_mode():
    with pytest.raises(ConfigError, match="mode"):
        MPC(EngineConfig(), mode="fast")
