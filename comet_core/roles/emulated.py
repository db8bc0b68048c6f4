"""`transport.emulate`: the link between P0 and P1 of a `transport=tcp` run emulates `network=<preset>`.

- ``none`` (default): the roles talk over whatever the hosts have (loopback for a one-machine run);
- ``netns``: `run-experiment` starts P0 and P1 in two network namespaces joined by a veth pair whose
  bandwidth the kernel shapes to ``network.bandwidth_bps`` (tbf, both directions) and whose one-way
  latency ``network.latency_s`` comes from netem where the kernel has it, else from the parties'
  ``LinkShaper`` (comet_core/comm/netns.py, comet_core/comm/shaper.py). Needs root and iproute2;
- ``shaper``: no kernel shaping; each party's shaper adds latency and serialisation time per message
  (works anywhere, also between two machines; it then implements the model it is compared with).

1. ``check_emulation(cfg)`` (before any work): a known value, only with ``transport=tcp``, and for
   ``netns`` root and the tools (one line otherwise).
2. ``emulated(run_cfg)`` (the launcher, around starting the roles): for ``netns`` makes the link and
   writes into the roles' config where each role runs (``transport.hosts``), the prefix that starts P0 and
   P1 inside their namespaces (``transport.exec_prefix``), their ports (the namespaces are fresh, so fixed
   ports are free) and who adds the latency (``transport.latency_by``); tears the link down afterwards,
   also on errors and Ctrl-C. Yields a dict for the run's records (``link_record``).
3. ``party_shaper(cfg, role)`` (each role process): the shaper of P0's and P1's link to each other.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

from comet_core.comm.network import Network
from comet_core.config.typed import network_params
from comet_core.errors import ConfigError

log = logging.getLogger("comet.emulate")

EMULATE = ("none", "netns", "shaper")
LATENCY_BY = ("auto", "netem", "shaper")
PORTS = {"p0": 7100, "p1": 7101}        # inside fresh namespaces nothing else listens


def check_emulation(cfg) -> None:
    t = cfg.transport
    emulate = str(t.get("emulate", "none"))
    if emulate not in EMULATE:
        raise ConfigError(f"transport.emulate must be one of {', '.join(EMULATE)}, got {emulate!r}")
    if str(t.get("latency_by", "auto")) not in LATENCY_BY:
        raise ConfigError(f"transport.latency_by must be one of {', '.join(LATENCY_BY)}, got {t.latency_by!r}")
    if emulate != "none" and str(t.name) != "tcp":
        raise ConfigError(f"transport.emulate={emulate} shapes the sockets between separate parties: add transport=tcp")
    if emulate == "netns":
        from comet_core.comm.netns import check_prerequisites

        check_prerequisites()


@contextmanager
def emulated(run_cfg):
    """Around the roles of a tcp run (module docstring, step 2); yields the link's record (or None)."""
    from omegaconf import open_dict

    t = run_cfg.transport
    if str(t.get("emulate", "none")) != "netns":
        yield None
        return
    from comet_core.comm.netns import EmulatedLink, tbf_params

    net = Network.from_cfg(network_params(run_cfg.network))
    link = EmulatedLink(net.bandwidth_bps, net.latency_s, delay=str(t.get("latency_by", "auto")))
    with link:
        with open_dict(run_cfg):
            for role, host in link.hosts.items():
                t.hosts[role] = host
            for role, prefix in link.exec_prefix.items():
                t.exec_prefix[role] = list(prefix)
            for role, port in PORTS.items():
                if int(t.ports[role]) == 0:
                    t.ports[role] = port
            t.bind = None
            t.latency_by = link.latency_by if link.latency_by != "none" else "shaper"
        record = dict(emulate="netns", namespaces=link.namespaces, hosts=dict(link.hosts),
                      rate_bps=link.rate_bps, tbf=tbf_params(link.rate_bps), latency_s=link.latency_s,
                      latency_by=link.latency_by)
        try:
            yield record
        finally:
            record["qdisc_after"] = link.qdiscs()     # what tbf passed (bytes, packets, drops): evidence
        log.info("emulated link %s: %s", link.name, " | ".join(
            ln.strip() for ln in record["qdisc_after"].splitlines() if ln.strip().startswith("Sent")))


def party_shaper(cfg, role: str):
    """The LinkShaper P0's and P1's pipes to each other call before each message (None: no shaping)."""
    from comet_core.comm.shaper import make_shaper

    if role not in ("p0", "p1"):
        return None
    t = cfg.transport
    latency_by = str(t.get("latency_by", "auto"))
    net = Network.from_cfg(network_params(cfg.network))
    return make_shaper(str(t.get("emulate", "none")), net.latency_s, net.bandwidth_bps,
                       latency_by="netem" if latency_by == "netem" else "shaper")
