"""An emulated link between P0 and P1: two network namespaces, a shaped veth pair between them.

`comet run-experiment transport=tcp transport.emulate=netns network=<preset>` runs P0 and P1 each in
its own namespace, so their traffic crosses a link whose bandwidth the kernel enforces; the time the
run takes is then measured, not modelled, and checks the network model (DESIGN.md 3).

Layout (one /24 ``10.A.B.0/24`` per link, chosen free; names unique per process and link):

    root namespace (dealer, client, model owner, launcher): 10.A.B.3
        |  veth <ns>r0 / <ns>a0 (unshaped)           |  veth <ns>r1 / <ns>b1 (unshaped)
    namespace <name>-p0: P0 = 10.A.B.1  ==== veth <ns>ab / <ns>ba (SHAPED) ====  namespace <name>-p1: P1 = 10.A.B.2

1. ``EmulatedLink.setup()`` checks root and the ``ip``/``tc`` tools (one-line CometError otherwise),
   creates both namespaces and three veth pairs, puts each party's address on its namespace's
   loopback (/32) and adds host routes so that every role reaches every other by one address: P0 and
   P1 reach each other over the shaped pair only; the dealer, client and owner (root namespace) reach
   both parties over the unshaped pairs (their traffic is the offline phase and input sharing, which
   the online time model does not price).
2. Bandwidth: a ``tbf`` on the egress of *both* ends of the shaped pair (full duplex: each direction
   has its own ``rate``, as the model's "busiest direction bytes / bandwidth"); ``burst`` and
   ``limit`` are chosen from the rate (``tbf_params``). tbf counts whole frames (Ethernet + IP + TCP
   headers: 1514 wire bytes carry 1448 payload bytes at MTU 1500), so a bulk TCP transfer reaches
   about 95% of ``rate`` in payload; the benchmark reports that gap rather than hiding it.
3. Latency: ``netem delay`` (one-way, each direction) under the tbf when the kernel has netem
   (``netem_available``); otherwise ``latency_by`` is ``shaper`` and the transport's ``LinkShaper``
   (comet_core/comm/shaper.py) delays each message instead. That shaper implements the model's own
   latency term (rounds * one-way latency), so for latency the measurement then only checks that
   the rounds the ledger counts are the messages the sockets carry, not the model's assumption.
4. ``teardown()`` deletes both namespaces and nothing else: that deletes the veths inside them, and with
   each its peer, the root-side end, which the kernel removes as it frees the namespace (it waits up to
   TEARDOWN_WAIT_S for those to go, from sysfs). It never runs ``ip link del``, which waits for the kernel's
   rtnl lock: on a busy machine (other namespaces being freed) that took long enough that a process
   interrupted with Ctrl-C did not exit within 20 s (issue 22). Each command has a timeout. It is
   idempotent and runs on exit, on errors and on Ctrl-C / SIGTERM (``with EmulatedLink(...) as link:``). A process killed with SIGKILL cannot clean up: the next
   ``setup()`` removes the namespaces of links whose process no longer runs (``teardown_stale``).

The processes of P0 and P1 are started with ``link.exec_prefix[role] + [command...]``
(``ip netns exec <namespace>``) and every role's address is ``link.hosts[role]``.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass, field

from comet_core.errors import CometError

log = logging.getLogger(__name__)

PREFIX = "cmt"                     # namespace names: cmt<pid>x<hex>-p0 / -p1
MTU = 1500
TEARDOWN_WAIT_S = 3.0              # teardown: how long to wait for the kernel to remove the root-side veth ends
TEARDOWN_CMD_S = 10.0              # teardown: the longest one `ip netns del` may take


class LinkError(CometError):
    """The emulated link cannot be made here (not root, no ip/tc, a kernel without a needed qdisc)."""


def _run(cmd: list[str], check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        if check:
            raise LinkError(f"`{' '.join(cmd)}` did not finish within {timeout:g} s") from None
        return subprocess.CompletedProcess(cmd, 124, "", f"timed out after {timeout:g} s")
    if check and r.returncode != 0:
        last = ((r.stderr or r.stdout).strip().splitlines() or ["no message"])[-1]
        raise LinkError(f"`{' '.join(cmd)}` failed: {last}")
    return r


def check_prerequisites() -> None:
    """One line saying what is missing: root (network namespaces need CAP_NET_ADMIN) and iproute2."""
    if os.name != "posix" or not os.path.isdir("/proc/self/ns"):
        raise LinkError("transport.emulate=netns needs Linux network namespaces; use transport.emulate=shaper")
    missing = [t for t in ("ip", "tc") if shutil.which(t) is None]
    if missing:
        raise LinkError(f"transport.emulate=netns needs {' and '.join(missing)} (package iproute2); install it "
                        "or use transport.emulate=shaper")
    if os.geteuid() != 0:
        raise LinkError("transport.emulate=netns must run as root (it creates network namespaces and qdiscs); "
                        "run as root or use transport.emulate=shaper")


def tbf_params(rate_bps: float) -> dict:
    """tbf settings for a rate in bit/s: ``burst`` (bucket size) and ``limit`` (queue) in bytes.

    burst: at least 2 full frames and 1 ms of traffic (so the kernel's timer granularity cannot cap the
    rate); small, so that messages pay their serialisation time as the model charges it.
    limit: 100 ms of traffic (at least 64 KiB): deep enough that TCP does not lose packets at the
    bottleneck and drop below the rate, shallow enough to stay a link rather than a buffer.
    """
    byte_rate = rate_bps / 8.0
    burst = int(max(2 * (MTU + 14), byte_rate * 1e-3))
    limit = int(max(64 * 1024, byte_rate * 0.1, 2 * burst))
    return {"rate": f"{int(rate_bps)}bit", "burst": burst, "limit": limit}


def netem_available() -> bool:
    """Whether this kernel has the netem qdisc: tried on the loopback of a throw-away namespace."""
    check_prerequisites()
    name = f"{PREFIX}probe{os.getpid() % 100000}"
    _run(["ip", "netns", "add", name])
    try:
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        r = _run(["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                 check=False)
        return r.returncode == 0
    finally:
        _run(["ip", "netns", "del", name], check=False)


def _used_subnets() -> set[tuple[int, int]]:
    text = _run(["ip", "-o", "-4", "addr"], check=False).stdout + _run(["ip", "-4", "route"], check=False).stdout
    return {(int(a), int(b)) for a, b in re.findall(r"\b10\.(\d+)\.(\d+)\.\d+", text)}


@dataclass
class EmulatedLink:
    """P0 and P1 in two namespaces joined by a veth pair shaped to ``rate_bps`` (None: unshaped)
    and, where netem exists and ``delay=netem``, ``latency_s`` one-way (module docstring)."""

    rate_bps: float | None
    latency_s: float = 0.0
    delay: str = "auto"              # auto: netem if the kernel has it, else the transport's shaper | netem | shaper
    name: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}x{random.randrange(16 ** 3):03x}")
    hosts: dict = field(default_factory=dict)
    exec_prefix: dict = field(default_factory=dict)
    latency_by: str = "shaper"       # who emulates the one-way latency: netem (kernel) | shaper (transport)
    _made: list = field(default_factory=list, repr=False)
    # reentrant: the SIGTERM handler tears down from the main thread, possibly inside a teardown already
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    # names ------------------------------------------------------------------------------------------
    @property
    def namespaces(self) -> dict[str, str]:
        return {"p0": f"{self.name}-p0", "p1": f"{self.name}-p1"}

    def _dev(self, tag: str) -> str:
        return f"{self.name[-9:]}{tag}"[-15:]     # interface names: at most 15 characters

    # setup ------------------------------------------------------------------------------------------
    def setup(self) -> "EmulatedLink":
        """Create the namespaces, links, addresses, routes and qdiscs (module docstring, steps 1-3)."""
        check_prerequisites()
        if self.delay not in ("auto", "netem", "shaper"):
            raise LinkError(f"delay must be auto, netem or shaper, got {self.delay!r}")
        if self.rate_bps is not None and not self.rate_bps > 0:
            raise LinkError(f"the emulated link's rate must be > 0 bit/s, got {self.rate_bps}")
        gone = teardown_stale()
        if gone:
            log.warning("removed the namespaces of emulated links whose process died: %s", ", ".join(gone))
        _install_cleanup(self)
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        log.info("emulated link %s: P0 %s, P1 %s, rate %s, latency %.3g s by %s", self.name, self.hosts["p0"],
                 self.hosts["p1"], f"{self.rate_bps:.3g} bit/s" if self.rate_bps else "unshaped",
                 self.latency_s, self.latency_by)
        return self

    def _build(self) -> None:
        ns0, ns1 = self.namespaces["p0"], self.namespaces["p1"]
        used = _used_subnets()
        free = [(a, b) for a in range(200, 250) for b in range(256) if (a, b) not in used]
        a, b = random.choice(free)
        net = f"10.{a}.{b}"
        p0, p1, root = f"{net}.1", f"{net}.2", f"{net}.3"
        ab, ba, r0, a0, r1, b1 = (self._dev(t) for t in ("ab", "ba", "r0", "a0", "r1", "b1"))
        for ns in (ns0, ns1):
            _run(["ip", "netns", "add", ns])
            self._made.append(("ns", ns))
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # the shaped pair P0 <-> P1, and one unshaped pair from the root namespace to each party
        _run(["ip", "link", "add", ab, "netns", ns0, "type", "veth", "peer", "name", ba, "netns", ns1])
        for dev, peer, ns in ((r0, a0, ns0), (r1, b1, ns1)):
            _run(["ip", "link", "add", dev, "type", "veth", "peer", "name", peer, "netns", ns])
            self._made.append(("dev", dev))
        _run(["ip", "-n", ns0, "addr", "add", f"{p0}/32", "dev", "lo"])
        _run(["ip", "-n", ns1, "addr", "add", f"{p1}/32", "dev", "lo"])
        _run(["ip", "addr", "add", f"{root}/32", "dev", r0])
        for ns, dev in ((ns0, ab), (ns1, ba), (ns0, a0), (ns1, b1)):
            _run(["ip", "-n", ns, "link", "set", dev, "mtu", str(MTU), "up"])
        for dev in (r0, r1):
            _run(["ip", "link", "set", dev, "mtu", str(MTU), "up"])
        # host routes: one address per role, reachable from every namespace
        _run(["ip", "-n", ns0, "route", "add", f"{p1}/32", "dev", ab, "src", p0])
        _run(["ip", "-n", ns1, "route", "add", f"{p0}/32", "dev", ba, "src", p1])
        _run(["ip", "-n", ns0, "route", "add", f"{root}/32", "dev", a0, "src", p0])
        _run(["ip", "-n", ns1, "route", "add", f"{root}/32", "dev", b1, "src", p1])
        _run(["ip", "route", "add", f"{p0}/32", "dev", r0, "src", root])
        _run(["ip", "route", "add", f"{p1}/32", "dev", r1, "src", root])
        self.hosts = {"p0": p0, "p1": p1, "dealer": root, "client": root, "owner": root}
        self.exec_prefix = {role: ["ip", "netns", "exec", ns] for role, ns in self.namespaces.items()}
        self._devs = {"p0": (ns0, ab), "p1": (ns1, ba)}
        self._shape()

    def _shape(self) -> None:
        """tbf (rate) at the root of both shaped ends, netem (delay) under it when used."""
        use_netem = False
        if self.latency_s > 0 and self.delay in ("auto", "netem"):
            use_netem = netem_available()
            if not use_netem and self.delay == "netem":
                raise LinkError("this kernel has no netem qdisc (`tc qdisc add ... netem`: unknown kind); "
                                "use transport.emulate with the shaper for latency (delay=shaper)")
        self.latency_by = "netem" if use_netem else ("shaper" if self.latency_s > 0 else "none")
        for ns, dev in self._devs.values():
            tc = ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev]
            parent = ["root"]
            if self.rate_bps is not None:
                p = tbf_params(self.rate_bps)
                _run(tc + ["root", "handle", "1:", "tbf", "rate", p["rate"], "burst", str(p["burst"]),
                           "limit", str(p["limit"])])
                parent = ["parent", "1:1"]
            if use_netem:
                _run(tc + parent + ["handle", "10:", "netem", "delay", f"{self.latency_s * 1e6:.0f}us",
                                    "limit", "100000"])

    def set_rate(self, rate_bps: float | None) -> None:
        """Re-shape the link in place (None: unshaped); for measurements with a control on one link."""
        for ns, dev in self._devs.values():
            _run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"], check=False)
        self.rate_bps = rate_bps
        self._shape()

    def qdiscs(self) -> str:
        """What the kernel says about the shaped ends (`tc -s qdisc`), for the run's records."""
        return "\n".join(_run(["ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", dev], check=False).stdout
                         for ns, dev in self._devs.values())

    # teardown ---------------------------------------------------------------------------------------
    def teardown(self) -> None:
        """Delete what setup made: the namespaces; the root-side veth ends go with them (module docstring,
        step 4). Idempotent; never raises; bounded in time."""
        import time

        with self._lock:
            devs = [name for kind, name in self._made if kind == "dev"]
            for kind, name in list(self._made):
                if kind == "ns":
                    r = _run(["ip", "netns", "del", name], check=False, timeout=TEARDOWN_CMD_S)
                    if r.returncode != 0 and "No such" not in r.stderr and "Cannot find" not in r.stderr:
                        log.warning("teardown of namespace %s: %s", name, r.stderr.strip())
            self._made.clear()
            _LIVE.discard(self)
            deadline = time.monotonic() + TEARDOWN_WAIT_S
            while any(os.path.exists(f"/sys/class/net/{d}") for d in devs) and time.monotonic() < deadline:
                time.sleep(0.05)
            left = [d for d in devs if os.path.exists(f"/sys/class/net/{d}")]
            if left:
                log.warning("the kernel has not yet removed %s (it goes with the deleted namespaces)", ", ".join(left))

    def __enter__(self) -> "EmulatedLink":
        return self.setup()

    def __exit__(self, *exc) -> None:
        self.teardown()

    def __hash__(self) -> int:
        return id(self)


# cleanup on exit, SIGTERM and SIGINT -----------------------------------------------------------------

_LIVE: set = set()
_HOOKED = False


def _install_cleanup(link: EmulatedLink) -> None:
    global _HOOKED
    _LIVE.add(link)
    if _HOOKED:
        return
    _HOOKED = True
    atexit.register(_teardown_all)
    if threading.current_thread() is threading.main_thread():
        prev = signal.getsignal(signal.SIGTERM)

        def on_term(signum, frame):
            _teardown_all()
            if callable(prev) and prev not in (signal.SIG_IGN, signal.SIG_DFL):
                prev(signum, frame)
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_term)
    # SIGINT raises KeyboardInterrupt, which unwinds `with EmulatedLink(...)` and reaches atexit


def _teardown_all() -> None:
    for link in list(_LIVE):
        link.teardown()


def leftover_links() -> list[str]:
    """Namespaces of emulated links whose process no longer runs (it was killed with SIGKILL)."""
    if shutil.which("ip") is None:
        return []
    out = []
    for line in _run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = re.fullmatch(rf"{PREFIX}(\d+)x[0-9a-f]+-p[01]", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            out.append(name)
    return out


def teardown_stale() -> list[str]:
    """Delete the namespaces of links whose process died (their veths, the root-side ends included, go
    with them: deleting one end of a veth pair deletes both); returns the namespaces deleted."""
    gone = leftover_links()
    for ns in gone:
        _run(["ip", "netns", "del", ns], check=False)
    return gone


# a measurement across the link -----------------------------------------------------------------------

_RECEIVER = """
import socket, sys, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(1); srv.settimeout(float(sys.argv[4]))
print("ready", flush=True)
conn, _ = srv.accept(); conn.settimeout(float(sys.argv[4]))
want, got, t0 = int(sys.argv[3]), 0, None
while got < want:
    b = conn.recv(1 << 20)
    if not b:
        break
    if t0 is None:
        t0 = time.perf_counter()
        first = len(b)
    got += len(b)
t1 = time.perf_counter()
conn.sendall(b"k")
print(got, first, t1 - t0, flush=True)
"""

_SENDER = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))
s.sendall(bytes(int(sys.argv[3]))); s.recv(1)
"""


def tcp_throughput(link: EmulatedLink, nbytes: int, src: str = "p0", dst: str = "p1", port: int = 5599,
                   timeout_s: float = 30.0) -> float:
    """Payload bit/s of one plain TCP transfer of ``nbytes`` from role ``src`` to role ``dst`` across the link,
    timed at the receiver from its first to its last byte (process start-up and the TCP handshake excluded).

    Roles run in their namespaces (``link.exec_prefix``); ``dealer`` runs in the root namespace.
    """
    import sys

    def cmd(role: str, code: str, host: str) -> list[str]:
        return link.exec_prefix.get(role, []) + [sys.executable, "-c", code, host, str(port), str(nbytes),
                                                   str(timeout_s)]

    rx = subprocess.Popen(cmd(dst, _RECEIVER, link.hosts[dst]), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    try:
        if rx.stdout.readline().strip() != "ready":
            raise LinkError(f"the receiver in {dst}'s namespace did not start: {rx.stderr.read().strip()[-300:]}")
        tx = subprocess.run(cmd(src, _SENDER, link.hosts[dst]), capture_output=True, text=True, timeout=timeout_s)
        if tx.returncode != 0:
            raise LinkError(f"the sender in {src}'s namespace failed: {tx.stderr.strip()[-300:]}")
        out, err = rx.communicate(timeout=timeout_s)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()
    got, first, secs = out.split()
    if int(got) != nbytes:
        raise LinkError(f"the receiver got {got} of {nbytes} bytes")
    return (int(got) - int(first)) * 8.0 / float(secs)   # bytes after the first read, over the time they took
