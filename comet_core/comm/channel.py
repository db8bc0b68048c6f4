"""Transport between the two computing servers, with every message booked in the ledger.

One interface, two views:
  * `InProcessChannel` (simulation): both parties live in one process in lock-step; a tensor's dim 0
    holds both parties' halves, so an exchange moves nothing and only books the messages.
  * `PartyChannel` (single party, SPMD): this process is one party; `exchange` sends its own half of
    every listed tensor to the peer and returns the peer's halves. It runs over any `Pipe` (a pair of
    in-memory queues for the two-threads harness; a socket for the TCP transport).
Both views book the same ledger rows (both directions of every exchange), so a single party's ledger
equals the simulation's: each party knows the sizes of what it sends and of what it receives.
"""

from __future__ import annotations

import queue
import time

import torch

from comet_core.comm.ledger import Ledger
from comet_core.errors import CometError

PARTIES = ("P0", "P1")


class PeerError(CometError):
    """The other party stopped, hung or sent something unexpected."""


class _Booking:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def _book_exchange(self, tensors: list, bits: int | list[int], packed: int | None) -> None:
        bits_l = [bits] * len(tensors) if isinstance(bits, int) else list(bits)
        r = self.ledger.new_round()
        book = self.ledger.record_exchange
        for t, b in zip(tensors, bits_l):
            book(packed if packed is not None else t[0].numel(), b, r)   # P0 -> P1 and P1 -> P0

    def _book_one_way(self, sender: int, n: int, bits: int) -> None:
        r = self.ledger.new_round()
        self.ledger.record("online", PARTIES[sender], PARTIES[1 - sender], n, bits, r)

    def _book_bytes(self, sender: int, blobs: list[bytes]) -> None:
        """One round of byte strings (serialised ciphertexts, keys) from `sender`: one ledger row per
        distinct length, its count the strings of that length (each party books what it sent or received)."""
        r = self.ledger.new_round()
        counts: dict[int, int] = {}
        for b in blobs:
            counts[len(b)] = counts.get(len(b), 0) + 1
        for size, count in sorted(counts.items()):
            self.ledger.record("online", PARTIES[sender], PARTIES[1 - sender], count, 8 * size, r)


class InProcessChannel(_Booking):
    """Both parties in one process: messages are booked, nothing moves."""

    def exchange(self, tensors: list[torch.Tensor], bits: list[int] | int = 64,
                 packed: int | None = None) -> None:
        """One round: P0 sends tensors[i][0] to P1 and P1 sends tensors[i][1] to P0, for every i.

        Each tensor has shape (2, ...); `bits` is the width of one element on the wire (packed).
        `packed` = elements when the words carry several fields of `bits` bits (only those bits go on
        the wire, whatever padding the words hold). Returns None: both halves are already here.
        """
        self._book_exchange(tensors, bits, packed)
        return None

    def send_one_way(self, sender: int, tensor: torch.Tensor, bits: int = 64) -> torch.Tensor:
        """One round in which only `sender` sends `tensor` (one party's data) to the other."""
        self._book_one_way(sender, tensor.numel(), bits)
        return tensor

    def send_bytes(self, sender: int, blobs: list[bytes]) -> list[bytes]:
        """One round in which only `sender` sends byte strings (serialised ciphertexts and keys, whose
        lengths are what the ledger books); returns them."""
        self._book_bytes(sender, blobs)
        return blobs


class QueuePipe:
    """One end of an in-memory duplex pipe between two threads (the single-party test harness)."""

    packs = False  # moves objects, not bytes (tls.SocketPipe packs tensors to their ledger width)

    def __init__(self, send_q: queue.Queue, recv_q: queue.Queue, timeout_s: float) -> None:
        self.send_q, self.recv_q, self.timeout_s = send_q, recv_q, timeout_s

    def send(self, obj) -> None:
        self.send_q.put(obj)

    def recv(self):
        try:
            obj = self.recv_q.get(timeout=self.timeout_s)
        except queue.Empty:
            raise PeerError(f"no message from the peer within {self.timeout_s:g} s") from None
        if isinstance(obj, BaseException):
            raise PeerError(f"the peer stopped: {obj}")
        return obj

    @staticmethod
    def pair(timeout_s: float = 120.0) -> tuple["QueuePipe", "QueuePipe"]:
        a, b = queue.Queue(), queue.Queue()
        return QueuePipe(a, b, timeout_s), QueuePipe(b, a, timeout_s)


class PartyChannel(_Booking):
    """One party's end of the P0-P1 link."""

    def __init__(self, rank: int, ledger: Ledger, pipe) -> None:
        super().__init__(ledger)
        self.rank = rank
        self.pipe = pipe
        # view recording (security tests): a list receives (bits, sent halves, received halves) per exchange
        # (sent halves None for a one-way message)
        self.recorder: list | None = None
        self.socket_bytes: dict[str, int] = {}   # payload bytes this party sent per ledger stage (socket pipes)
        self.link_wait_s: dict[str, float] = {}  # seconds spent in the pipe's send/recv per stage (shaper sleep,
        #                                          transfer, waiting for the peer): the measured side of comm_s

    def _waited(self, t0: float) -> None:
        stage = self.ledger._labels.get("stage", "")
        self.link_wait_s[stage] = self.link_wait_s.get(stage, 0.0) + time.perf_counter() - t0

    def _recv(self):
        t0 = time.perf_counter()
        try:
            return self.pipe.recv()
        finally:
            self._waited(t0)

    def _send(self, obj, bits, packed: int | None = None) -> None:
        t0 = time.perf_counter()
        try:
            self._send_now(obj, bits, packed)
        finally:
            self._waited(t0)

    def _send_now(self, obj, bits, packed: int | None = None) -> None:
        if not getattr(self.pipe, "packs", False):
            self.pipe.send(obj)
            return
        n = self.pipe.send(obj, bits=bits, packed=packed)
        stage = self.ledger._labels.get("stage", "")
        self.socket_bytes[stage] = self.socket_bytes.get(stage, 0) + n

    def exchange(self, tensors: list[torch.Tensor], bits: list[int] | int = 64,
                 packed: int | None = None) -> list[torch.Tensor]:
        """One round: send my half (dim 0 of size 1) of every tensor, receive the peer's halves."""
        self._book_exchange(tensors, bits, packed)
        if tensors and tensors[0].is_meta:
            return [t[0] for t in tensors]
        self._send([t[0] for t in tensors], bits, packed)
        got = self._recv()
        if not isinstance(got, list) or len(got) != len(tensors) or any(
                not isinstance(g, torch.Tensor) or g.shape != t.shape[1:] for g, t in zip(got, tensors)):
            raise PeerError(f"P{1 - self.rank} sent a message that does not match this step "
                            f"(expected {len(tensors)} tensors of shapes {[tuple(t.shape[1:]) for t in tensors]})")
        if self.recorder is not None:
            self.recorder.append((bits, [t[0].clone() for t in tensors], [g.clone() for g in got]))
        return got

    def send_one_way(self, sender: int, tensor: torch.Tensor, bits: int = 64) -> torch.Tensor:
        """One round in which only `sender` sends; the receiver returns what arrived (`tensor` is its own
        slot of the same shape, which the message must match)."""
        self._book_one_way(sender, tensor.numel(), bits)
        if self.rank == sender:
            self._send(tensor, bits)
            return tensor
        got = self._recv()
        if not isinstance(got, torch.Tensor) or got.shape != tensor.shape:
            raise PeerError(f"P{sender} sent a message that does not match this step "
                            f"(expected one tensor of shape {tuple(tensor.shape)})")
        if self.recorder is not None:   # one-way: nothing of this party's was sent, nothing is opened
            self.recorder.append((bits, None, [got.clone()]))
        return got

    def send_bytes(self, sender: int, blobs: list[bytes] | None) -> list[bytes]:
        """One round in which only `sender` sends byte strings (serialised ciphertexts and keys: `blobs`,
        None at the receiver); returns what arrived (the sender: its own). Each is one uint8 tensor on the
        wire, so the payload is their lengths, as booked."""
        if self.rank == sender:
            self._book_bytes(sender, blobs)
            self._send([torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs], None)
            return blobs
        got = self._recv()
        if not isinstance(got, list) or any(not isinstance(g, torch.Tensor) or g.dtype != torch.uint8 or g.dim() != 1
                                            for g in got):
            raise PeerError(f"P{sender} sent a message that does not match this step (expected byte strings)")
        blobs = [g.numpy().tobytes() for g in got]
        self._book_bytes(sender, blobs)
        if self.recorder is not None:
            self.recorder.append((8, None, [g.clone() for g in got]))
        return blobs
