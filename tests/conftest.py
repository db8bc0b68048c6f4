"""Shared fixtures for the engine tests: engines in both truncation modes, both ways of running the
parties, and a closeness check.

Tests build small shapes only (2 shared CPU cores); every random input comes from a fixed seed. Waits and
timeouts stretch with the machine's load (tests/helpers_load.py): no test asserts a time or a speed.

Two ways of running (the `parties` parameter, DESIGN 3 and engine.MPC):
  * `sim`: one engine holds both parties' shares (the default simulation);
  * `spmd`: the test body runs twice, in two threads, once as P0 and once as P1, each engine holding
    only its own shares, over an in-memory link with a simulated dealer and client
    (comet_core/mpc/parties.py). Every engine a test gets from the `mpc` or `engines` fixture is then
    a single party; outputs (revealed through the client) and ledgers must be what `sim` gives.
"""

from __future__ import annotations

import os
import signal
import threading
import warnings
from pathlib import Path

import pytest
import torch

from comet_core.mpc.engine import MPC, EngineConfig
from tests.helpers_load import cores, scaled

QUICK_LIST = Path(__file__).with_name("quick.txt")


def pytest_configure(config):
    """Under pytest-xdist each worker gets its share of the cores (torch would take them all in each)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        torch.set_num_threads(max(1, cores() // int(workers)))


@pytest.hookimpl(tryfirst=True)   # before -m deselects
def pytest_collection_modifyitems(config, items):
    """Mark the tests tests/quick.txt names `quick` (`make test-quick`)."""
    entries = [ln.strip() for ln in QUICK_LIST.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    wanted, found = set(entries), set()
    for item in items:
        for key in (item.nodeid, item.nodeid.split("[")[0]):
            if key in wanted:
                item.add_marker(pytest.mark.quick)
                found.add(key)
    missing = [e for e in entries if e not in found]
    if missing and "quick" in (config.option.markexpr or ""):
        raise pytest.UsageError(f"tests/quick.txt names tests that were not collected: {', '.join(missing)}")

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


def _restore_sigint(when: str) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    handler, blocked = signal.getsignal(signal.SIGINT), signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    if handler is not signal.default_int_handler or blocked:
        warnings.warn(f"SIGINT was {'blocked' if blocked else repr(handler)} {when}; restored")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


@pytest.fixture(autouse=True)
def sigint_as_python_sets_it(request):
    """Each test starts with SIGINT raising KeyboardInterrupt and unblocked; finding it otherwise (before or
    after a test) is named in a warning and undone: processes a test starts inherit an ignored or blocked
    SIGINT, so a test that interrupts its child saw it run on to exit 0. Seen under xdist only, where SIGINT
    was already ignored before a worker's first test (e.g. test_approx.py::test_quad[local-sim])."""
    _restore_sigint(f"before {request.node.nodeid}")
    yield
    _restore_sigint(f"after {request.node.nodeid}")


@pytest.fixture(params=["local", "dealer"])
def truncation(request) -> str:
    return request.param


class _Pending:
    """An engine to be built inside each party's thread (spmd)."""

    def __init__(self, config, seed, kwargs) -> None:
        self.config, self.seed, self.kwargs = config, seed, kwargs


class Engines:
    """`engines(config, seed=..)`: a new exact-mode engine; a single party when the test runs as spmd."""

    def __init__(self, parties: str, rank: int | None = None, registry=None) -> None:
        self.parties, self.rank, self.registry = parties, rank, registry
        self._count = 0

    def __call__(self, config=None, seed: int | None = 0, **kwargs):
        if self.parties == "sim" or kwargs.get("mode") == "cost":
            return MPC(config, seed=seed, **kwargs)
        if self.rank is None:  # fixture time, outside the party threads
            return _Pending(config, seed, kwargs)
        k = self._count
        self._count += 1
        return self.registry.engine(k, self.rank, config, seed, kwargs)


class _PeersRegistry:
    """The n-th engine of P0 and the n-th engine of P1 share one LocalPeers (dealer, client, link)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.peers = {}

    def engine(self, k: int, rank: int, config, seed, kwargs) -> MPC:
        from comet_core.mpc.parties import LocalPeers

        with self.lock:
            if k not in self.peers:
                self.peers[k] = LocalPeers(config, seed=seed, timeout_s=scaled(60.0))
            peers = self.peers[k]
        return MPC(config, seed=seed, party=rank, peers=peers, **kwargs)

    def fail(self, rank: int, exc: BaseException) -> None:
        with self.lock:
            for p in self.peers.values():
                p.fail(rank, exc)


@pytest.fixture(params=["sim", "spmd"])
def parties(request) -> str:
    return request.param


@pytest.fixture
def engines(parties) -> Engines:
    return Engines(parties)


@pytest.fixture
def mpc(truncation, engines) -> MPC:
    """An exact-mode engine, once per truncation mode (and, through `engines`, per way of running)."""
    return engines(EngineConfig(frac_bits=FRAC_BITS, truncation=truncation), seed=7, mode="exact")


def _clone(v):
    if isinstance(v, torch.Generator):
        g = torch.Generator()
        g.set_state(v.get_state())
        return g
    return v


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """spmd: run the test body as P0 and as P1 in two threads (see the module docstring)."""
    engines = pyfuncitem.funcargs.get("engines")
    if not isinstance(engines, Engines) or engines.parties != "spmd":
        return None
    names = pyfuncitem._fixtureinfo.argnames
    registry = _PeersRegistry()
    errors: list = [None, None]

    def body(rank: int) -> None:
        try:
            mine = Engines("spmd", rank, registry)
            args = {k: _clone(pyfuncitem.funcargs[k]) for k in names}
            args = {k: (mine(v.config, v.seed, **v.kwargs) if isinstance(v, _Pending) else v) for k, v in args.items()}
            if "engines" in args:
                args["engines"] = mine
            pyfuncitem.obj(**args)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors[rank] = e
            registry.fail(rank, e)

    threads = [threading.Thread(target=body, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(scaled(300))
        assert not t.is_alive(), "a party thread hung"
    from comet_core.comm.channel import PeerError

    first = next((e for e in errors if e is not None and not isinstance(e, PeerError)), None)
    first = first or next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return True


@pytest.fixture
def gen() -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(1234)
    return g
