"""`transport.emulate` (comet_core/roles/emulated.py): config checks, the parties' shaper, and one tcp run of a tiny
model whose P0 and P1 sit in network namespaces behind a shaped link (root only; skipped with the reason)."""

from __future__ import annotations

import json
import os
import subprocess

import pandas as pd
import pytest
from omegaconf import OmegaConf

from comet_core.comm import netns
from comet_core.comm.netns import LinkError
from comet_core.comm.shaper import LinkShaper
from comet_core.errors import ConfigError
from comet_core.roles.emulated import check_emulation, party_shaper

from tests.test_netns import WHY_NOT
from tests.test_tcp import _cfg as tcp_cfg


def _cfg(tmp_path, *over):
    return tcp_cfg(tmp_path, *over, timeout_s=60)


def test_bad_values_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="transport.emulate must be one of none, netns, shaper"):
        check_emulation(_cfg(tmp_path, "transport.emulate=tc"))
    with pytest.raises(ConfigError, match="transport.latency_by must be"):
        check_emulation(_cfg(tmp_path, "transport.emulate=netns", "transport.latency_by=kernel"))
    cfg = _cfg(tmp_path)
    OmegaConf.set_struct(cfg, False)
    cfg.transport.name = "inprocess"
    cfg.transport.emulate = "shaper"
    with pytest.raises(ConfigError, match="add transport=tcp"):
        check_emulation(cfg)
    check_emulation(_cfg(tmp_path, "transport.emulate=shaper"))


def test_netns_needs_root_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(LinkError, match="must run as root"):
        check_emulation(_cfg(tmp_path, "transport.emulate=netns"))


def test_party_shaper_per_mode(tmp_path):
    net = ("network=emu-100m-10ms",)
    assert party_shaper(_cfg(tmp_path, *net), "p0") is None                                   # emulate=none
    s = party_shaper(_cfg(tmp_path, *net, "transport.emulate=shaper"), "p1")
    assert isinstance(s, LinkShaper) and (s.latency_s, s.bandwidth_bps) == (0.01, 1e8)       # both terms here
    s = party_shaper(_cfg(tmp_path, *net, "transport.emulate=netns", "transport.latency_by=shaper"), "p0")
    assert (s.latency_s, s.bandwidth_bps) == (0.01, None)                                    # bandwidth in tbf
    assert party_shaper(_cfg(tmp_path, *net, "transport.emulate=netns", "transport.latency_by=netem"), "p0") is None
    assert party_shaper(_cfg(tmp_path, *net, "transport.emulate=shaper"), "dealer") is None  # P0-P1 link only


@pytest.mark.skipif(WHY_NOT is not None, reason=f"emulated link unavailable: {WHY_NOT}")
def test_tcp_run_over_an_emulated_link(tmp_path):
    """P0 and P1 in namespaces, 100 Mbit/s tbf, 20 ms one-way latency: the same tokens and ledger as in-process,
    the sockets' bytes went through tbf, P0 spent >= rounds x latency in the link (an unshaped run spends far
    less: the existing tcp test's link), the roles ran at the namespace addresses, and nothing is left behind."""
    from experiments.run import run

    cfg = _cfg(tmp_path, "transport.emulate=netns", "network=emu-100m-10ms", "network.latency_s=0.02")
    s = run(cfg, tmp_path / "run")
    t = s["transport"]
    assert t["tokens_equal_inprocess"] and t["ledger_equal_inprocess"]
    link = t["link"]
    assert link["latency_by"] in ("netem", "shaper") and link["rate_bps"] == 1e8
    sent = [int(ln.split()[1]) for ln in link["qdisc_after"].splitlines() if ln.strip().startswith("Sent")]
    assert len(sent) == 2 and all(b >= t["socket_bytes"] // 2 for b in sent), (sent, t["socket_bytes"])
    roles = t["roles"]
    assert roles["p0"]["address"].startswith(link["hosts"]["p0"] + ":")
    assert roles["p1"]["address"].startswith(link["hosts"]["p1"] + ":")
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    rounds = int(m[(m.network == m.network.iloc[0]) & (m.phase == "total")].rounds.iloc[0])
    wait = sum(t["link_wait_s_by_stage"]["p0"].values())
    assert wait >= rounds * 0.02, (wait, rounds)
    if link["latency_by"] == "shaper":
        assert t["shaper"]["p0"]["messages"] == rounds + 2                     # + hello and done
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in left for ns in link["namespaces"].values())
    assert netns.leftover_links() == []
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["transport"]["link"]["namespaces"] == link["namespaces"]
