"""Transport between the two computing servers, with every message booked in the ledger.

`InProcessChannel` runs both parties in one process in lock-step: a party's "send" is its half of a
share tensor laid along dim 0 (shape (2, ...)), and one `exchange` is one round in which each party
sends its half of every listed tensor to the other. A TCP transport implements the same two calls.
"""

from __future__ import annotations

import torch

from comet_core.comm.ledger import Ledger

PARTIES = ("P0", "P1")


class InProcessChannel:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def exchange(self, tensors: list[torch.Tensor], bits: list[int] | int = 64) -> list[torch.Tensor]:
        """One round: P0 sends tensors[i][0] to P1 and P1 sends tensors[i][1] to P0, for every i.

        Each tensor has shape (2, ...); `bits` is the width of one element on the wire (packed).
        Returns what each party holds afterwards (in-process: the same tensors).
        """
        if isinstance(bits, int):
            bits = [bits] * len(tensors)
        r = self.ledger.new_round()
        for t, b in zip(tensors, bits):
            n = t[0].numel()
            self.ledger.record("online", "P0", "P1", n, b, r)
            self.ledger.record("online", "P1", "P0", n, b, r)
        return tensors

    def exchange_packed(self, tensors: list[torch.Tensor], elements: int, bits: int) -> list[torch.Tensor]:
        """One round like `exchange`, for packed words that carry `elements` fields of `bits` bits
        each (only those bits go on the wire, whatever padding the words hold)."""
        r = self.ledger.new_round()
        for _ in tensors:
            self.ledger.record("online", "P0", "P1", elements, bits, r)
            self.ledger.record("online", "P1", "P0", elements, bits, r)
        return tensors

    def send_one_way(self, sender: int, tensor: torch.Tensor, bits: int = 64) -> torch.Tensor:
        """One round in which only `sender` sends `tensor` (one party's data) to the other."""
        r = self.ledger.new_round()
        self.ledger.record("online", PARTIES[sender], PARTIES[1 - sender], tensor.numel(), bits, r)
        return tensor
