"""One ledger of every message: who sent how many bytes to whom, in which phase and round.

Phases: `online` (P0 <-> P1), `offline` (dealer -> parties: correlated randomness), `input`
(client / model owner -> parties: sharing), `output` (parties -> client: revealing).
A round is one communication step of the online phase; messages both parties send in the same
step share one round index.
`cost_source` says where a row's size comes from: `measured` (the default: a protocol that ran on shares
and sent these bytes) or `model` (an ideal functionality priced by a published per-element formula,
comet_core/mpc/ideal.py: Iron's and BOLT's OT-based protocols).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import pandas as pd

from comet_core.comm.work import Work

COLUMNS = [
    "phase", "stage", "layer", "op", "protocol", "sender", "receiver",
    "elements", "bits", "bytes", "round", "cost_source",
]


@dataclass(frozen=True)
class Cost:
    """What a protocol costs, for a cost formula to be checked against the ledger.

    online_bytes: both directions between P0 and P1; offline_bytes: dealer to both parties;
    rounds: online rounds.
    """

    online_bytes: int = 0
    offline_bytes: int = 0
    rounds: int = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.online_bytes + other.online_bytes, self.offline_bytes + other.offline_bytes,
                    self.rounds + other.rounds)

    def __mul__(self, k: int) -> "Cost":
        return Cost(self.online_bytes * k, self.offline_bytes * k, self.rounds * k)

    __rmul__ = __mul__


def wire_bytes(elements: int, bits: int) -> int:
    """Bytes of `elements` values of `bits` bits each, packed densely (what a transport sends)."""
    return (elements * bits + 7) // 8


class Ledger:
    """Append-only record of messages plus the labels (stage, layer, op) that model code sets."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.round = 0  # online rounds so far
        self._labels = {"stage": "", "layer": -1, "op": ""}
        self._protocol: list[str] = []
        self.work = Work(self)   # local work counts beside the messages (comm/work.py)
        # measured compute per (stage, layer, op): [wall s, process CPU s], from start_op_clock (exact mode)
        self.op_seconds: dict[tuple, list] | None = None
        self._clock = (0.0, 0.0)

    # -- labels -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def label(self, **labels):
        """Set stage/layer/op labels for the messages inside the block (model-level tags)."""
        old = dict(self._labels)
        if self.op_seconds is not None:
            self._charge()
        self._labels.update({k: v for k, v in labels.items() if v is not None})
        try:
            yield
        finally:
            if self.op_seconds is not None:
                self._charge()
            self._labels = old

    def start_op_clock(self) -> None:
        """From now on, charge the wall and process CPU time between label changes to the labels current
        until the change: the measured side of compute_ops.csv, per op beside the compute model's seconds.
        Exclusive: an op's time is what ran under its own labels, not under a nested label."""
        if self.op_seconds is None:
            self.op_seconds = {}
        self._clock = (time.perf_counter(), time.process_time())

    def _charge(self) -> None:
        now = (time.perf_counter(), time.process_time())
        lab = self._labels
        acc = self.op_seconds.setdefault((lab["stage"], lab["layer"], lab["op"]), [0.0, 0.0])
        acc[0] += now[0] - self._clock[0]
        acc[1] += now[1] - self._clock[1]
        self._clock = now

    def op_seconds_frame(self) -> pd.DataFrame | None:
        """The measured compute per (stage, layer, op) (None without start_op_clock)."""
        if self.op_seconds is None:
            return None
        return pd.DataFrame([(*k, *v) for k, v in self.op_seconds.items()],
                            columns=["stage", "layer", "op", "measured_s", "measured_cpu_s"])

    def protocol(self, name: str) -> "_Protocol":
        """Name the protocol whose messages follow; the outermost protocol name is recorded.
        A context manager (a plain class: entered thousands of times per decode step)."""
        return _Protocol(self._protocol, name)

    def current_protocol(self) -> str:
        return self._protocol[0] if self._protocol else ""

    # -- recording ----------------------------------------------------------------------------
    def record(self, phase: str, sender: str, receiver: str, elements: int, bits: int,
               round_index: int, cost_source: str = "measured") -> None:
        lab, e, b = self._labels, int(elements), int(bits)
        self.rows.append((phase, lab["stage"], lab["layer"], lab["op"], self._protocol[0] if self._protocol else "",
                          sender, receiver, e, b, (e * b + 7) // 8, round_index, cost_source))   # wire_bytes(e, b)

    def record_exchange(self, elements: int, bits: int, round_index: int) -> None:
        """The two rows of one online exchange of `elements` values of `bits` bits: P0 -> P1, then P1 -> P0
        (the same rows as two `record` calls)."""
        lab, e, b = self._labels, int(elements), int(bits)
        head = ("online", lab["stage"], lab["layer"], lab["op"], self._protocol[0] if self._protocol else "")
        tail = (e, b, (e * b + 7) // 8, round_index, "measured")
        self.rows.append((*head, "P0", "P1", *tail))
        self.rows.append((*head, "P1", "P0", *tail))

    def new_round(self) -> int:
        self.round += 1
        return self.round

    # -- views --------------------------------------------------------------------------------
    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)

    def mark(self) -> tuple[int, int]:
        """A position to measure from: (row count, round count)."""
        return len(self.rows), self.round

    def cost_since(self, mark: tuple[int, int] = (0, 0)) -> Cost:
        """Totals since `mark` in the Cost convention (online both directions; offline to both)."""
        online = offline = 0
        for r in self.rows[mark[0]:]:
            if r[0] == "online":
                online += r[9]
            elif r[0] == "offline":
                offline += r[9]
        return Cost(online, offline, self.round - mark[1])

    def signature(self) -> list[tuple]:
        """Everything but labels that vary by mode: used to compare exact and cost mode ledgers."""
        return list(self.rows)


class _Protocol:
    """Ledger.protocol's context: pushes the name on entry, pops it on exit (exceptions included)."""

    __slots__ = ("stack", "name")

    def __init__(self, stack: list, name: str) -> None:
        self.stack, self.name = stack, name

    def __enter__(self) -> None:
        self.stack.append(self.name)

    def __exit__(self, *exc) -> bool:
        self.stack.pop()
        return False
