"""Running the protocols as single parties (SPMD): the dealer's and the input owners' side, and a harness.

A single-party engine (`MPC(party=r, peers=...)`) holds only its own share of everything. What it
cannot compute itself comes from `peers`:
  * `channel(rank, ledger)`: its end of the P0-P1 link;
  * `dealer_view(mpc)`: the dealer, handing this party only its own half of every correlation;
  * `share(rank, x, owner, ...)`: its share of an input from the client or the model owner;
  * `reveal(rank, share, to)`: sends its share of an output to the client;
  * `ideal(rank, share, evaluate)`: hands its share to the trusted party of an ideal functionality
    (comet_core/mpc/ideal.py: Iron's and BOLT's OT-based protocols, priced by a model), which waits for
    both shares, evaluates once and returns each party its half of fresh shares of the result.

`LocalPeers` plays the dealer, the client and the model owner inside one process for two party
threads (the test harness, and the contract the TCP transport relies on): it runs a simulation
engine built from the same seed, so every item it hands out equals what the simulation's dealer
produces in the same order, and each party's ledger equals the simulation's ledger. Both parties
call the dealer in the same order (SPMD); the first caller of item k makes it, the second takes its
half. In the harness the simulated client returns a revealed value to the calling code (a test
needs it, and the client's next token drives generation); the parties themselves never see it.
"""

from __future__ import annotations

import threading

import torch

from comet_core.comm.channel import PartyChannel, PeerError, QueuePipe
from comet_core.comm.ledger import Ledger


def _my_half(obj, rank: int, mpc):
    """Restrict a dealer item (AShares, party-stacked tensors, lists of them) to one party."""
    from comet_core.mpc.engine import AShare

    if isinstance(obj, AShare):
        return AShare(obj.data[rank:rank + 1].clone(), mpc, obj.frac)
    if isinstance(obj, torch.Tensor):
        assert obj.shape[0] == 2, "dealer items are party-stacked"
        return obj[rank:rank + 1].clone()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_my_half(o, rank, mpc) for o in obj)
    if obj is None:
        return None
    raise TypeError(f"cannot split a dealer item of type {type(obj).__name__}")


class _Sequenced:
    """Items made once, in the parties' common call order, handed out per party."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: dict[int, list] = {}   # index -> [result, rows, name, parties still to collect]
        self.next = {0: 0, 1: 0}

    def get(self, rank: int, name: str, make):
        with self.lock:
            k = self.next[rank]
            self.next[rank] += 1
            if k not in self.items:
                result, rows = make()
                self.items[k] = [result, rows, name, {0, 1}]
            item = self.items[k]
            if item[2] != name:
                raise PeerError(f"P{rank} asked the dealer for {name} as item {k}, but the other party asked "
                                f"for {item[2]}: the parties are out of step")
            item[3].discard(rank)
            if not item[3]:
                del self.items[k]
            return item[0], item[1]


class DealerView:
    """One party's dealer: the same methods as `Dealer`, returning only this party's halves."""

    def __init__(self, peers: "LocalPeers", mpc) -> None:
        self.peers, self.mpc = peers, mpc

    def __getattr__(self, name: str):
        def call(*args, **kwargs):
            result, rows = self.peers.dealer_call(self.mpc.rank, name, args, kwargs)
            for row in rows:  # the dealer's messages, booked under this party's labels
                self.mpc.ledger.record(*row)
            return _my_half(result, self.mpc.rank, self.mpc)
        return call

    def ideal(self, data: torch.Tensor, frac: int, fn: str, out_frac: int, kwargs: dict):
        """An ideal functionality: this party hands its share to the simulated trusted party, which waits
        for the other party's share, evaluates once (Dealer.ideal) and hands each its half."""
        result = self.peers.ideal(self.mpc.rank, data,
                                  lambda both: self.peers.full.dealer.ideal(both, frac, fn, out_frac, kwargs))
        return _my_half(result, self.mpc.rank, self.mpc)


class LocalPeers:
    """The dealer, the client and the model owner for two single-party engines in one process."""

    def __init__(self, config=None, seed: int | None = None, device: str = "cpu", timeout_s: float = 120.0) -> None:
        from comet_core.mpc.engine import MPC

        self.full = MPC(config, seed=seed, device=device, mode="exact")  # their side: both halves
        self.pipes = QueuePipe.pair(timeout_s)
        self.timeout_s = timeout_s
        self._dealer = _Sequenced()
        self._inputs = _Sequenced()
        self._reveals: dict[int, dict] = {}
        self._cv = threading.Condition()
        self._nreveal = {0: 0, 1: 0}
        self._ideals: dict[int, dict] = {}
        self._nideal = {0: 0, 1: 0}
        self.failed: BaseException | None = None

    def channel(self, rank: int, ledger: Ledger) -> PartyChannel:
        return PartyChannel(rank, ledger, self.pipes[rank])

    @property
    def pair_key(self) -> bytes:
        """The P0-P1 key both party engines adopt (the parties' own; the harness holds every key)."""
        return self.full.keys.key("P0", "P1")

    def dealer_view(self, mpc) -> DealerView:
        return DealerView(self, mpc)

    def dealer_call(self, rank: int, name: str, args, kwargs):
        def make():
            ledger = self.full.ledger
            start = len(ledger.rows)
            result = getattr(self.full.dealer, name)(*args, **kwargs)
            rows = [(r[0], r[5], r[6], r[7], r[8], r[10], r[11]) for r in ledger.rows[start:]]
            return result, rows
        return self._dealer.get(rank, name, make)

    def share(self, rank: int, x: torch.Tensor, owner: str, frac: int, phase: str, to_p0: bool = False) -> torch.Tensor:
        """The owner shares x (the first party thread to ask brings it: in the harness both know it)."""
        def make():
            s = self.full.share(x, owner=owner, frac=frac, phase=phase, to_p0=to_p0)
            return s.data, []
        data, _ = self._inputs.get(rank, f"share:{owner}", make)
        return data[rank:rank + 1].clone()

    def reveal(self, rank: int, data: torch.Tensor, to: str, frac: int = 0) -> torch.Tensor:
        """The client collects both shares and returns the opened ring value."""
        with self._cv:
            k = self._nreveal[rank]
            self._nreveal[rank] += 1
            slot = self._reveals.setdefault(k, {})
            slot[rank] = data[0]
            self._cv.notify_all()
            if not self._cv.wait_for(lambda: (0 in slot and 1 in slot) or self.failed is not None,
                                     timeout=self.timeout_s):
                raise PeerError(f"the client got no share from P{1 - rank} within {self.timeout_s:g} s")
            if not (0 in slot and 1 in slot):
                raise PeerError(f"the client got no share from P{1 - rank}: it stopped ({self.failed})")
            value = slot[0] + slot[1]
            slot.setdefault("done", set()).add(rank)
            if len(slot["done"]) == 2:
                del self._reveals[k]
            return value

    def ideal(self, rank: int, data: torch.Tensor, evaluate):
        """The trusted party of an ideal functionality: collect both shares of call k, evaluate once."""
        with self._cv:
            k = self._nideal[rank]
            self._nideal[rank] += 1
            slot = self._ideals.setdefault(k, {})
            slot[rank] = data[0]
            self._cv.notify_all()
            if not self._cv.wait_for(lambda: "out" in slot or (0 in slot and 1 in slot) or self.failed is not None,
                                     timeout=self.timeout_s):
                raise PeerError(f"the ideal functionality got no share from P{1 - rank} within {self.timeout_s:g} s")
            if "out" not in slot:
                if not (0 in slot and 1 in slot):
                    raise PeerError(f"the ideal functionality got no share from P{1 - rank}: it stopped ({self.failed})")
                slot["out"] = evaluate(torch.stack([slot[0], slot[1]]))
            out = slot["out"]
            slot.setdefault("done", set()).add(rank)
            if len(slot["done"]) == 2:
                del self._ideals[k]
            return out

    def fail(self, rank: int, exc: BaseException) -> None:
        """A party died: wake its peer with the error instead of letting it wait."""
        self.pipes[rank].send_q.put(exc)  # what the dead party would have sent next
        with self._cv:
            self.failed = exc
            self._cv.notify_all()


def run_pair(fn, config=None, seed: int | None = 0, device: str = "cpu", timeout_s: float = 120.0):
    """Run fn(mpc) as P0 and P1 in two threads over an in-memory link; returns (result0, result1, mpcs).

    Each thread gets a single-party engine holding only its own shares. An exception in either
    party is re-raised here (the other party is woken with a PeerError, never left hanging).
    """
    from comet_core.mpc.engine import MPC

    peers = LocalPeers(config, seed=seed, device=device, timeout_s=timeout_s)
    mpcs = [MPC(config, seed=seed, device=device, party=r, peers=peers) for r in (0, 1)]
    results: list = [None, None]
    errors: list = [None, None]

    def body(r: int) -> None:
        try:
            results[r] = fn(mpcs[r])
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            errors[r] = e
            peers.fail(r, e)

    threads = [threading.Thread(target=body, args=(r,), name=f"party-P{r}") for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s * 4)
        if t.is_alive():
            raise PeerError(f"{t.name} did not finish within {timeout_s * 4:g} s")
    first = next((e for e in errors if e is not None and not isinstance(e, PeerError)), None)
    first = first or next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return results[0], results[1], mpcs
