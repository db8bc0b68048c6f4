"""A link shaper inside the transport: one-way latency (and optionally bandwidth) per message.

The TCP transport's socket pipe calls ``shaper.before_send(nbytes)`` just before it writes a message
of ``nbytes`` payload bytes to the peer. The shaper blocks the sender for as long as the emulated link
would hold that message back:

1. latency: ``latency_s`` (one-way) per message. Every message between P0 and P1 is one round of the
   ledger (an exchange: both parties send at once and their delays overlap, so the round costs one
   latency; a one-way message: one latency), so the delay a run accumulates is ``rounds * latency_s``;
2. bandwidth (only when ``bandwidth_bps`` is given, i.e. no kernel shaping): the message's
   serialisation time ``nbytes * 8 / bandwidth_bps``. Each party shapes only its own direction, so
   an exchange costs the larger of the two directions, as the model's busiest-direction term.

What it checks and what it does not: this *is* the network model's latency term (and bandwidth term,
if used), applied to the messages that really cross the socket. A run shaped this way checks that
the ledger's rounds (and bytes) are the messages the sockets carry and that compute and
communication add up as the model assumes (no overlap); it cannot check the model's idea of latency
itself. The kernel's ``netem`` (comet_core/comm/netns.py) would; this machine's kernel has none, so
the emulated link takes the bandwidth from the kernel (``tbf``) and the latency from this shaper.

3. oversleep: ``time.sleep`` returns late when the CPU is busy (measured here: ~1 ms per 10 ms sleep
   with five role processes and other jobs on 2 cores). That wake-up is the emulation's own (a real link
   does not make the *sender* wait), so the shaper carries it over: the next message waits that much less
   (never below zero; at most ``MAX_CREDIT_S`` carried), and the total delay of a run stays
   ``rounds * latency_s`` to within one wake-up.

The sleep is measured (``time.perf_counter``), so the shaper also reports what it added
(``delayed_s``) and the oversleep it could not carry over (``credit_s`` at the end).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from comet_core.errors import ConfigError

MAX_CREDIT_S = 0.1   # oversleep carried over to later messages at most (module docstring, step 3)


@dataclass
class LinkShaper:
    """Delays each outgoing message by the emulated link's one-way latency (and serialisation time)."""

    latency_s: float
    bandwidth_bps: float | None = None
    messages: int = 0            # messages shaped so far
    bytes: int = 0               # their payload bytes
    delayed_s: float = 0.0       # time this shaper slept in total
    credit_s: float = 0.0        # oversleep not yet taken off later messages
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.latency_s, (int, float)) or not self.latency_s >= 0:
            raise ConfigError(f"the shaper's latency must be >= 0 seconds (one-way), got {self.latency_s!r}")
        if self.bandwidth_bps is not None and not (isinstance(self.bandwidth_bps, (int, float))
                                                   and self.bandwidth_bps > 0):
            raise ConfigError(f"the shaper's bandwidth must be > 0 bit/s or None, got {self.bandwidth_bps!r}")

    def delay_for(self, nbytes: int) -> float:
        """Seconds a message of ``nbytes`` payload bytes is held back: latency + serialisation."""
        d = float(self.latency_s)
        if self.bandwidth_bps is not None:
            d += nbytes * 8.0 / float(self.bandwidth_bps)
        return d

    def before_send(self, nbytes: int) -> None:
        """Block until the message may leave (module docstring); called once per message."""
        if nbytes < 0:
            raise ValueError(f"a message has >= 0 bytes, got {nbytes}")
        with self._lock:
            want = self.delay_for(nbytes)
            target = max(0.0, want - self.credit_s)
            self.credit_s -= want - target
        t0 = time.perf_counter()
        deadline = t0 + target
        while True:                  # sleep may return early on some platforms: sleep to the deadline
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            time.sleep(left)
        slept = time.perf_counter() - t0
        with self._lock:
            self.credit_s = min(MAX_CREDIT_S, self.credit_s + max(0.0, slept - target))
            self.messages += 1
            self.bytes += int(nbytes)
            self.delayed_s += slept

    def summary(self) -> dict:
        """What the shaper did, for run_info.json: settings and totals."""
        return {"latency_s": self.latency_s, "bandwidth_bps": self.bandwidth_bps, "messages": self.messages,
                "bytes": self.bytes, "delayed_s": round(self.delayed_s, 6), "credit_s": round(self.credit_s, 6)}


def make_shaper(emulate: str, latency_s: float, bandwidth_bps: float, latency_by: str = "shaper") -> LinkShaper | None:
    """The shaper a party's pipe uses for ``transport.emulate``:

    - ``none``: no shaper (the link is whatever the hosts have);
    - ``shaper``: latency and bandwidth both in the transport (no kernel shaping at all);
    - ``netns``: bandwidth in the kernel (tbf); latency here unless the kernel's netem does it
      (``latency_by='netem'``: no shaper).
    """
    if emulate == "none":
        return None
    if emulate == "shaper":
        return LinkShaper(latency_s, bandwidth_bps)
    if emulate == "netns":
        return None if latency_by == "netem" or latency_s == 0 else LinkShaper(latency_s, None)
    raise ConfigError(f"transport.emulate must be none, netns or shaper, got {emulate!r}")
