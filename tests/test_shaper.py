"""The transport's link shaper (comet_core/comm/shaper.py): one-way latency per message, optional bandwidth.

The shaper implements the network model's latency term; these tests pin that a run over shaped pipes
takes rounds * latency (+ busiest-direction bytes / bandwidth), i.e. exchanges overlap, one-way
messages do not, and nothing is charged twice.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from comet_core.comm.channel import PartyChannel, QueuePipe
from comet_core.comm.ledger import Ledger
from comet_core.comm.shaper import LinkShaper, make_shaper
from comet_core.errors import ConfigError
from tests.helpers_load import scaled


class ShapedPipe:
    """A QueuePipe whose sends go through a shaper, as the TCP pipe does (payload bytes of the tensors)."""

    def __init__(self, pipe: QueuePipe, shaper: LinkShaper) -> None:
        self.pipe, self.shaper = pipe, shaper

    def send(self, obj) -> None:
        tensors = obj if isinstance(obj, list) else [obj]
        self.shaper.before_send(sum(t.numel() * t.element_size() for t in tensors))
        self.pipe.send(obj)

    def recv(self):
        return self.pipe.recv()


def test_delay_formula():
    assert LinkShaper(0.01).delay_for(10 ** 6) == pytest.approx(0.01)
    assert LinkShaper(0.01, 1e8).delay_for(10 ** 6) == pytest.approx(0.01 + 0.08)
    assert LinkShaper(0.0, 8e6).delay_for(1000) == pytest.approx(1e-3)


@pytest.mark.parametrize("bad", [dict(latency_s=-1), dict(latency_s="1ms"), dict(latency_s=0.01, bandwidth_bps=0),
                                 dict(latency_s=0.01, bandwidth_bps=-5.0)])
def test_bad_settings_are_one_line_errors(bad):
    with pytest.raises(ConfigError, match="shaper"):
        LinkShaper(**bad)


def test_each_message_waits_one_latency():
    s = LinkShaper(0.02)
    t0 = time.perf_counter()
    for _ in range(5):
        s.before_send(100)
    dt = time.perf_counter() - t0
    assert 0.1 <= dt < 0.1 + scaled(0.15), dt   # never early; late only by the machine's load
    assert (s.messages, s.bytes) == (5, 500) and s.delayed_s == pytest.approx(dt, abs=0.01)


def test_oversleep_is_carried_over(monkeypatch):
    """A sleep that returns 4 ms late (a busy CPU) is taken off the next message: 10 messages of 10 ms take
    100 ms + at most one oversleep, not 140 ms; the carried credit never exceeds MAX_CREDIT_S."""
    import comet_core.comm.shaper as shaper_mod

    clock = [0.0]
    monkeypatch.setattr(shaper_mod.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(shaper_mod.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s + 0.004))
    s = LinkShaper(0.01)
    for _ in range(10):
        s.before_send(8)
    assert 0.100 <= clock[0] <= 0.100 + 0.004 + 1e-9, clock[0]
    assert s.delayed_s == pytest.approx(clock[0]) and s.credit_s == pytest.approx(clock[0] - 0.1)
    monkeypatch.setattr(shaper_mod.time, "sleep", lambda t: clock.__setitem__(0, clock[0] + t + 1.0))
    s.before_send(8)
    assert s.credit_s == shaper_mod.MAX_CREDIT_S


def test_bandwidth_term():
    s = LinkShaper(0.0, 8e7)                 # 10 MB/s: 1 MB takes 0.1 s
    t0 = time.perf_counter()
    s.before_send(10 ** 6)
    assert 0.1 <= time.perf_counter() - t0 < 0.1 + scaled(0.1)


def _two_parties(latency_s, bandwidth_bps, program):
    """Run `program(channel, rank)` as P0 and P1 in two threads over shaped in-memory pipes."""
    a, b = QueuePipe.pair(timeout_s=10)
    chans = [PartyChannel(r, Ledger(), ShapedPipe(p, LinkShaper(latency_s, bandwidth_bps))) for r, p in enumerate((a, b))]
    errors = []

    def run(r):
        try:
            program(chans[r], r)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return time.perf_counter() - t0, chans


def test_a_run_takes_rounds_times_latency():
    """4 exchanges (both send: one latency each) + 2 one-way messages = 6 rounds = 6 latencies, not 10."""
    lat = 0.1

    def program(ch, r):
        x = torch.zeros(1, 8, dtype=torch.int64)
        for _ in range(4):
            ch.exchange([x])
        ch.send_one_way(0, torch.zeros(8, dtype=torch.int64))
        ch.send_one_way(1, torch.zeros(8, dtype=torch.int64))

    dt, chans = _two_parties(lat, None, program)
    rounds = chans[0].ledger.round
    assert rounds == 6 and chans[1].ledger.round == 6
    # late by the machine's load, yet always short of the 10 latencies of exchanges that were serialised
    assert rounds * lat <= dt < rounds * lat + min(scaled(0.12), 3.5 * lat), dt
    assert chans[0].pipe.shaper.messages == 5 and chans[1].pipe.shaper.messages == 5


def test_exchange_pays_the_busiest_direction():
    """P0 sends 1 MB, P1 8 bytes in one exchange at 80 Mbit/s: ~0.1 s (P0's direction), not the sum."""

    def program(ch, r):
        n = 125_000 if r == 0 else 1          # int64 words: 1 MB vs 8 bytes
        ch.pipe.send([torch.zeros(n, dtype=torch.int64)])
        ch.pipe.recv()

    dt, _ = _two_parties(0.0, 8e7, program)
    assert 0.1 <= dt < 0.1 + scaled(0.1), dt


def test_make_shaper_modes():
    assert make_shaper("none", 0.01, 1e8) is None
    s = make_shaper("shaper", 0.01, 1e8)
    assert (s.latency_s, s.bandwidth_bps) == (0.01, 1e8)
    s = make_shaper("netns", 0.01, 1e8)                         # bandwidth in the kernel, latency here
    assert (s.latency_s, s.bandwidth_bps) == (0.01, None)
    assert make_shaper("netns", 0.01, 1e8, latency_by="netem") is None
    with pytest.raises(ConfigError, match="transport.emulate"):
        make_shaper("tc", 0.01, 1e8)
