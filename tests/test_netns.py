"""The emulated link (comet_core/comm/netns.py): namespaces, a tbf-shaped veth pair, teardown.

The link tests need root and iproute2 (skipped with the reason otherwise); the error tests run everywhere.
None of them times the link: the rate it achieves is a measurement, `benchmarks/emulated_link.py --raw-link`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from comet_core.comm import netns

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
from comet_core.comm.netns import EmulatedLink, LinkError, tbf_params, tcp_throughput
from tests.helpers_load import scaled


def _can_make_namespaces() -> str | None:
    """None if this machine can make the link, else why not."""
    try:
        netns.check_prerequisites()
    except LinkError as e:
        return str(e)
    r = subprocess.run(["ip", "netns", "add", f"{netns.PREFIX}probe{os.getpid()}t"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", f"{netns.PREFIX}probe{os.getpid()}t"], capture_output=True)
    return None


WHY_NOT = _can_make_namespaces()
needs_netns = pytest.mark.skipif(WHY_NOT is not None, reason=f"emulated link unavailable: {WHY_NOT}")


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_tbf_params_scale_with_rate():
    slow, fast = tbf_params(1e8), tbf_params(1e9)
    assert slow["rate"] == "100000000bit" and fast["rate"] == "1000000000bit"
    assert slow["burst"] >= 2 * 1514 and fast["burst"] == 125_000          # 1 ms of traffic at 1 Gbit/s
    assert slow["limit"] == 1_250_000 and fast["limit"] == 12_500_000       # 100 ms of traffic


def test_not_root_is_one_line(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(shutil, "which", lambda t: f"/usr/sbin/{t}")
    with pytest.raises(LinkError, match="must run as root.*transport.emulate=shaper"):
        EmulatedLink(1e8).setup()


def test_missing_tools_is_one_line(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda t: None if t == "tc" else "/usr/sbin/ip")
    with pytest.raises(LinkError, match="needs tc .package iproute2."):
        EmulatedLink(1e8).setup()


def tbf_counters(link: EmulatedLink) -> list[dict]:
    """Each shaped end's tbf as the kernel reports it (`tc -s qdisc show`): rate, bytes sent, overlimits
    (packets tbf held back for lack of tokens); [] for an end without tbf."""
    ends = []
    for block in link.qdiscs().split("qdisc ")[1:]:
        words = block.split()
        if words[0] != "tbf":
            continue
        sent = words.index("Sent")
        ends.append(dict(rate=words[words.index("rate") + 1], sent_bytes=int(words[sent + 1]),
                         overlimits=int(words[words.index("overlimits") + 1])))
    return ends


@needs_netns
def test_rate_is_applied_by_the_kernel_in_both_directions():
    """tbf shapes both ends at the configured rate, and each direction's 2 MB went through it with packets
    held back (the kernel's own counters; no timing, so a busy machine cannot fail it). Positive control: the
    same link unshaped has no tbf, and the check finds none after the same transfer. The rate the link
    achieves is a measurement: `python benchmarks/emulated_link.py --raw-link` (results/emulated_link/link_alone.csv)."""
    with EmulatedLink(None) as link:
        assert tcp_throughput(link, 2_000_000) > 0
        assert tbf_counters(link) == [] and "tbf" not in link.qdiscs()      # the control: nothing shaped it
        link.set_rate(1e8)
        # a fresh tbf; a stray packet of the control's connection (a late ACK or FIN) may still pass it
        start = [e["sent_bytes"] for e in tbf_counters(link)]
        assert len(start) == 2 and all(b < 100_000 for b in start), start
        tcp_throughput(link, 2_000_000, "p0", "p1")
        after_there = tbf_counters(link)
        tcp_throughput(link, 2_000_000, "p1", "p0")
        after_back = tbf_counters(link)
    for ends in (after_there, after_back):
        assert len(ends) == 2 and all(e["rate"] == "100Mbit" for e in ends), ends
    p0_end, p1_end = after_there
    assert p0_end["sent_bytes"] - start[0] >= 2_000_000 and p0_end["overlimits"] > 0, after_there   # P0 -> P1 shaped
    assert p1_end["sent_bytes"] - start[1] < 2_000_000                                   # P1 sent only ACKs
    assert after_back[1]["sent_bytes"] - p1_end["sent_bytes"] >= 2_000_000 and \
        after_back[1]["overlimits"] > 0, after_back                                      # P1 -> P0 was shaped


@needs_netns
def test_every_role_reaches_every_other():
    """P0 <-> P1 over the shaped pair, the root namespace (dealer, client, owner) to both parties."""
    with EmulatedLink(1e9) as link:
        for src, dst in (("p0", "p1"), ("p1", "p0"), ("dealer", "p0"), ("dealer", "p1"), ("p0", "dealer")):
            assert tcp_throughput(link, 200_000, src, dst) > 0
        assert link.hosts["dealer"] == link.hosts["client"] == link.hosts["owner"]


@needs_netns
def test_teardown_is_idempotent_and_complete():
    link = EmulatedLink(1e8, 0.01).setup()
    names = list(link.namespaces.values())
    assert all(n in _namespaces() for n in names)
    link.teardown()
    link.teardown()
    assert not any(n in _namespaces() for n in names)
    assert link.name[-9:] not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


@needs_netns
def test_teardown_never_waits_for_the_rtnl_lock(monkeypatch):
    """issue 22: a process interrupted with Ctrl-C did not exit within 20 s on a loaded machine: its teardown
    ran `ip link del` on the root-side veth ends first, which waits for the kernel's rtnl lock (held while
    other namespaces are freed). Teardown now deletes the namespaces only (their veths and those veths'
    peers go with them): no `ip link del`, and the root-side ends are gone all the same."""
    real = netns._run
    ran = []

    def recording(cmd, check=True, timeout=None):
        ran.append(cmd)
        return real(cmd, check, *([timeout] if timeout is not None else []))

    link = EmulatedLink(1e8).setup()
    devs = [name for kind, name in link._made if kind == "dev"]
    assert devs and all(os.path.exists(f"/sys/class/net/{d}") for d in devs)
    monkeypatch.setattr(netns, "_run", recording)
    link.teardown()
    assert not [c for c in ran if c[:3] == ["ip", "link", "del"]], ran
    assert not any(os.path.exists(f"/sys/class/net/{d}") for d in devs)
    assert not any(n in _namespaces() for n in link.namespaces.values())


@needs_netns
def test_a_failed_setup_leaves_nothing(monkeypatch):
    real = netns._run

    def failing(cmd, check=True, timeout=None):
        if "tbf" in cmd:
            raise LinkError("tbf refused (test)")
        return real(cmd, check, timeout)

    monkeypatch.setattr(netns, "_run", failing)
    link = EmulatedLink(1e8)
    with pytest.raises(LinkError, match="tbf refused"):
        link.setup()
    assert not any(n in _namespaces() for n in link.namespaces.values())


@needs_netns
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_process_tears_down(sig):
    code = ("import time, sys\nfrom comet_core.comm.netns import EmulatedLink\n"
            "with EmulatedLink(1e8) as l:\n    print(l.name, flush=True)\n    time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        name = p.stdout.readline().strip()
        assert name, p.stderr.read()
        assert f"{name}-p0" in _namespaces()
        p.send_signal(sig)
        p.wait(scaled(20))
    finally:
        if p.poll() is None:
            p.kill()
    assert name not in _namespaces()
    assert netns.leftover_links() == [] or all(not n.startswith(name) for n in netns.leftover_links())


@needs_netns
def test_a_killed_runs_namespaces_are_removed_by_the_next_link():
    dead = f"{netns.PREFIX}4194999x0a0-p0"          # above any pid_max: no such process
    subprocess.run(["ip", "netns", "add", dead], check=True)
    try:
        assert dead in netns.leftover_links()
        with EmulatedLink(1e8):
            assert dead not in _namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", dead], capture_output=True)
