"""`LocalPeers`' contract over sockets: what a party process asks of the dealer, client and owner processes.

Party side: `RemotePeers(rank, links)` gives a single-party engine (`MPC(party=r, peers=...)`) the same
methods as `LocalPeers` (comet_core/mpc/parties.py), each a request on one TLS link (tls.SocketPipe):
  * `channel(rank, ledger)`: a PartyChannel on the link to the other party;
  * `dealer_view(mpc)`: each dealer call sends (name, args) and receives this party's half of the item
    and the ledger rows the dealer booked for it;
  * `share(rank, x, owner, ...)`: sends only x's shape (the party never holds the value: a weight is a
    data-free Shape, the client's one-hot a placeholder) and receives its share from the owner/client;
  * `reveal(rank, data, to)`: sends its share to the client and gets nothing back (a zero placeholder:
    the parties never learn the tokens);
  * `ideal(...)`: sends its share to the dealer, which plays the trusted party of the ideal functionality.

Service side (one thread per party link, `serve_links`): `DealerService` (a full dealer from the seed, as
LocalPeers runs it: each item made once in the parties' common call order; both parties must ask for
the same item with the same arguments, else both are stopped; only the items in DEALER_ITEMS are served:
`permutation`, the dealer's own knowledge of pi, never is), `OwnerService` (the plaintext weights'
shares, item by item in the order share_weights and the system's setup ask for them, and the system's
public setup in the clear: Comet's predictor ranks and thresholds) and `ClientService` (the prompt, the
one-hot rows of each step, the output shares that it opens into the next token).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time

import torch

from comet_core.comm.channel import PartyChannel, PeerError
from comet_core.comm.ledger import Ledger
from comet_core.comm.wire import encode
from comet_core.mpc import ashare  # noqa: F401 (registers the share type that comm/wire.py sends)

log = logging.getLogger(__name__)


def describe_step(ledger: Ledger) -> str:
    """Where a party is (for error lines): stage, layer, op and protocol of the ledger's labels."""
    lab = ledger._labels
    parts = [f"stage {lab['stage']}" if lab.get("stage") else "", f"layer {lab['layer']}" if lab.get("layer", -1) != -1 else "",
             f"op {lab['op']}" if lab.get("op") else "", f"protocol {'/'.join(ledger._protocol)}" if ledger._protocol else "",
             f"round {ledger.round}"]
    return ", ".join(p for p in parts if p)


# -- party side ----------------------------------------------------------------------------------------


class RemoteDealerView:
    def __init__(self, peers: "RemotePeers", mpc) -> None:
        self.peers, self.mpc = peers, mpc
        self.link = peers.links["dealer"]
        self.link.share_context = mpc

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args, **kwargs):
            self.link.send({"op": "dealer", "name": name, "args": list(args), "kwargs": kwargs})
            got = self.link.recv()
            if not isinstance(got, dict) or "result" not in got or not isinstance(got.get("rows"), list):
                raise PeerError(f"the dealer answered {name} with an unexpected message")
            for row in got["rows"]:
                self.mpc.ledger.record(*row)
            return got["result"]
        return call

    def ideal(self, data: torch.Tensor, frac: int, fn: str, out_frac: int, kwargs: dict):
        self.link.send({"op": "ideal", "data": data[0], "frac": frac, "fn": fn, "out_frac": out_frac, "kwargs": kwargs})
        got = self.link.recv()
        if not isinstance(got, dict) or "result" not in got:
            raise PeerError(f"the dealer answered the ideal {fn} with an unexpected message")
        return got["result"]


class RemotePeers:
    """The dealer, client and owner of one party process, reached over its links."""

    def __init__(self, rank: int, links: dict, pair_key: bytes | None = None) -> None:
        self.rank = rank
        self.links = links          # role -> SocketPipe: "p0"/"p1" (the other party), dealer, client, owner
        self.pair_key = pair_key    # the P0-P1 key (P0 drew it, sent it to P1 in its hello over their TLS link)

    def channel(self, rank: int, ledger: Ledger) -> PartyChannel:
        ch = PartyChannel(rank, ledger, self.links[f"p{1 - rank}"])
        for pipe in self.links.values():
            pipe.where = lambda: describe_step(ledger)
        return ch

    def dealer_view(self, mpc) -> RemoteDealerView:
        return RemoteDealerView(self, mpc)

    def share(self, rank: int, x, owner: str, frac: int, phase: str, to_p0: bool = False) -> torch.Tensor:
        link = self.links["client" if owner == "client" else "owner"]
        shape = list(x.shape)
        link.send({"op": "share", "owner": owner, "shape": shape, "frac": int(frac), "phase": phase,
                   "to_p0": bool(to_p0)})
        got = link.recv()
        data = got.get("share") if isinstance(got, dict) else None
        if not isinstance(data, torch.Tensor) or list(data.shape) != shape or data.dtype != torch.int64:
            raise PeerError(f"the {link.peer} sent a share that does not match the requested shape {shape}")
        return data.unsqueeze(0)

    def owner_public(self, name: str):
        """The model owner's public setup for `name` (a system: e.g. Comet's predictor ranks and thresholds),
        sent in the clear; a party holds no plaintext model to compute it from."""
        link = self.links["owner"]
        link.send({"op": "public", "name": str(name)})
        got = link.recv()
        if not isinstance(got, dict) or "public" not in got:
            raise PeerError(f"the model owner answered the public setup of {name!r} with an unexpected message")
        return got["public"]

    def reveal(self, rank: int, data: torch.Tensor, to: str, frac: int = 0) -> torch.Tensor:
        self.links["client"].send({"op": "reveal", "to": to, "data": data[0], "frac": int(frac)})
        return torch.zeros_like(data[0])   # the party learns nothing: a placeholder



# -- service side -------------------------------------------------------------------------------------


def _digest(obj) -> str:
    return hashlib.sha256(encode(obj).body).hexdigest()[:16]


class _Service:
    """A role process's state shared by its two party threads."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.failed: BaseException | None = None
        self.cv = threading.Condition()
        self.last_heard = time.monotonic()   # the last message from either party (a link's wait counts from it)

    def fail(self, rank: int, exc: BaseException) -> None:
        with self.cv:
            self.failed = self.failed or exc
            self.cv.notify_all()

    def wait(self, pred, what: str) -> None:
        with self.cv:
            ok = self.cv.wait_for(lambda: pred() or self.failed is not None, timeout=self.timeout_s)
            if self.failed is not None and not pred():
                raise PeerError(f"{what}: {self.failed}")
            if not ok:
                raise PeerError(f"{what}: timed out after {self.timeout_s:g} s")

    def handle(self, rank: int, msg: dict):
        raise NotImplementedError

    def finished(self, rank: int) -> bool:
        """Whether this party may now say goodbye (its work with this role is complete)."""
        return True


# What the dealer process serves (Dealer methods a party engine calls; docs/threat-model.md "What the online dealer
# sees" lists what each one's arguments tell the dealer). Anything else (`permutation`: pi itself; the
# simulation-only blocked_matmul_triple) is refused.
DEALER_ITEMS = frozenset({"mul_triple", "matmul_triple", "square_pair", "trunc_triple", "trunc_square_triple",
                          "compare_mask", "ring_compare_mask", "and_triples", "dabit", "new_permutation",
                          "permute_masks", "fourier_mask", "weight_mask", "forget_reused",
                          "fss_mask", "fss_keys", "ring_fss_mask", "dp_padding"})


class DealerService(_Service):
    """The dealer (and the ideal functionalities' trusted party): a full dealer from the same seed."""

    def __init__(self, engine_cfg, seed, device: str, timeout_s: float) -> None:
        from comet_core.mpc.parties import LocalPeers

        super().__init__(timeout_s)
        self.local = LocalPeers(engine_cfg, seed=seed, device=device, timeout_s=timeout_s)
        self.items = {0: 0, 1: 0}

    def fail(self, rank, exc):
        super().fail(rank, exc)
        self.local.fail(rank, exc)

    def handle(self, rank: int, msg: dict):
        from comet_core.mpc.parties import _my_half

        op = msg.get("op")
        if op == "dealer":
            name, args, kwargs = msg.get("name"), msg.get("args", []), msg.get("kwargs", {})
            from comet_core.mpc.dealer import Dealer

            if not isinstance(name, str) or name not in DEALER_ITEMS or not callable(getattr(Dealer, name, None)):
                raise PeerError(f"P{rank} asked the dealer for {name!r}, which it does not serve (it serves "
                                f"{', '.join(sorted(DEALER_ITEMS))})")
            k = self.items[rank]
            self.items[rank] += 1
            result, rows = self._call(rank, name, args, kwargs)
            return {"result": _my_half(result, rank, None), "rows": [list(r) for r in rows], "k": k}
        if op == "ideal":
            data, frac, fn, out_frac, kwargs = msg["data"], msg["frac"], msg["fn"], msg["out_frac"], msg.get("kwargs", {})
            from comet_core.mpc.ideal import FUNCTIONS

            if fn not in FUNCTIONS:
                raise PeerError(f"P{rank} asked for an unknown ideal functionality {fn!r}")
            full = self.local.full
            result = self.local.ideal(rank, data.unsqueeze(0),
                                      lambda both: full.dealer.ideal(both, frac, fn, out_frac, kwargs))
            return {"result": _my_half(result, rank, None)}
        raise PeerError(f"P{rank} sent the dealer an unknown request {op!r}")

    def _call(self, rank: int, name: str, args, kwargs):
        """Item k: made once by the first party to ask; the other must ask for the same item with the same
        arguments (the name and a digest of the arguments are compared), else both are stopped."""
        full = self.local.full
        key = f"{name}:{_digest([args, kwargs])}"

        def make():
            start = len(full.ledger.rows)
            result = getattr(full.dealer, name)(*args, **kwargs)
            rows = [(r[0], r[5], r[6], r[7], r[8], r[10], r[11]) for r in full.ledger.rows[start:]]
            return result, rows
        return self.local._dealer.get(rank, key, make)


class OwnerService(_Service):
    """The model owner: the shares of every weight, in the order the parties ask for them."""

    def __init__(self, items: list, timeout_s: float, weights_sha256: str, public: dict | None = None) -> None:
        super().__init__(timeout_s)
        self.items = items          # [(data (2, ...) int64, frac, phase, to_p0)] in share order
        self.weights_sha256 = weights_sha256
        self.public = dict(public or {})   # {system name: public setup}, sent in the clear on request
        self.next = {0: 0, 1: 0}

    def handle(self, rank: int, msg: dict):
        if msg.get("op") == "public":
            name = msg.get("name")
            if name not in self.public:
                raise PeerError(f"P{rank} asked the model owner for the public setup of {name!r}, but it has "
                                f"{sorted(self.public) or 'none'}: the parties run another system")
            return {"public": self.public[name]}
        if msg.get("op") != "share" or msg.get("owner") != "model_owner":
            raise PeerError(f"P{rank} sent the model owner an unexpected request {msg.get('op')!r}")
        k = self.next[rank]
        if k >= len(self.items):
            raise PeerError(f"P{rank} asked the model owner for share {k}, but the model has {len(self.items)}")
        data, frac, phase, to_p0 = self.items[k]
        if list(data.shape[1:]) != list(msg.get("shape", [])) or int(msg.get("frac", -1)) != frac:
            raise PeerError(f"P{rank} asked the model owner for weight {k} of shape {msg.get('shape')} at frac "
                            f"{msg.get('frac')}, but it has shape {list(data.shape[1:])} at frac {frac}: the "
                            "parties build another model")
        if bool(msg.get("to_p0", False)) != to_p0:
            raise PeerError(f"P{rank} asked the model owner for weight {k} {'held by P0' if msg.get('to_p0') else 'shared'}, "
                            f"but it {'holds it for P0' if to_p0 else 'shares it'}: the parties run another system.linear")
        self.next[rank] += 1
        return {"share": data[rank]}

    def finished(self, rank: int) -> bool:
        return self.next[rank] == len(self.items)


class ClientService(_Service):
    """The client: shares the one-hot rows of each step, opens the output shares, picks the next token."""

    def __init__(self, engine_cfg, seed, device: str, timeout_s: float, prompt_ids: list[int], vocab: int,
                 gen_tokens: int, output: str) -> None:
        from comet_core.mpc.engine import MPC

        super().__init__(timeout_s)
        self.full = MPC(engine_cfg, seed=seed, device=device, mode="exact")
        self.ids = list(prompt_ids)
        self.vocab, self.gen_tokens, self.output = int(vocab), int(gen_tokens), output
        self.tokens: list[int] = []
        self.logits: list[torch.Tensor] = []
        self.shares: dict[int, list] = {}               # step -> [(2, T, V) shares of the one-hot rows, ranks served]
        self.reveals: dict[int, dict] = {}              # step -> {rank: share}
        self.n_share = {0: 0, 1: 0}
        self.n_reveal = {0: 0, 1: 0}
        self.stage_seconds: dict = {}

    def handle(self, rank: int, msg: dict):
        from comet_core.models.generate import one_hot

        op = msg.get("op")
        if op == "share":
            k = self.n_share[rank]
            if k >= self.gen_tokens:
                raise PeerError(f"P{rank} asked the client for input {k}, but the run has {self.gen_tokens} steps")
            self.wait(lambda: len(self.tokens) >= k, f"the client waits for token {k - 1} before step {k}")
            with self.cv:
                if k not in self.shares:
                    new = self.ids if k == 0 else [self.tokens[-1]]
                    self.shares[k] = [self.full.share(one_hot(new, self.vocab, self.full.device), owner="client").data, set()]
                data, taken = self.shares[k]
                if list(msg.get("shape", [])) != list(data.shape[1:]):
                    raise PeerError(f"P{rank} asked the client for input {k} of shape {msg.get('shape')}, "
                                    f"but it is {list(data.shape[1:])}")
                taken.add(rank)
                if len(taken) == 2:
                    del self.shares[k]     # both halves handed out: the client keeps nothing
            self.n_share[rank] += 1
            return {"share": data[rank]}
        if op == "reveal":
            k = self.n_reveal[rank]
            if k >= self.gen_tokens:
                raise PeerError(f"P{rank} revealed output {k}, but the run has {self.gen_tokens} steps")
            self.n_reveal[rank] += 1
            with self.cv:
                slot = self.reveals.setdefault(k, {})
                slot[rank] = (msg["data"], int(msg.get("frac", 0)))
                self.cv.notify_all()
            self.wait(lambda: len(self.reveals.get(k, {})) == 2 or len(self.tokens) > k,
                      f"the client waits for P{1 - rank}'s output share {k}")
            with self.cv:
                if len(self.tokens) == k:
                    self._open(k)
                self.cv.notify_all()
            return None
        raise PeerError(f"P{rank} sent the client an unknown request {op!r}")

    def _open(self, k: int) -> None:
        from comet_core.mpc import ring

        slot = self.reveals.pop(k)
        (d0, f0), (d1, f1) = slot[0], slot[1]
        if d0.shape != d1.shape or f0 != f1:
            raise PeerError(f"the parties' output shares {k} differ in shape or scale")
        value = ring.decode(d0 + d1, f0)
        if self.output == "logits":
            plain = value.reshape(-1, self.vocab)[0] if value.dim() > 1 else value
            self.logits.append(plain.float())
            tok = int(torch.argmax(plain))
        else:
            tok = int(torch.round(value.reshape(-1)[0]))
        self.tokens.append(tok)
        self.ids.append(tok)
        log.info("client: token %d of %d", k + 1, self.gen_tokens)

    def finished(self, rank: int) -> bool:
        return self.n_reveal[rank] == self.gen_tokens


def serve_links(service: _Service, links: dict) -> None:
    """Serve P0 and P1 (links 'p0', 'p1') in two threads until each says goodbye; the first error stops both
    links (each party is told why, also one that sends nothing: its thread stops waiting within
    tls.STOP_POLL_S) and is re-raised here."""
    errors: list = []

    def body(rank: int) -> None:
        pipe = links[f"p{rank}"]
        pipe.stop = lambda: str(service.failed) if service.failed is not None else None   # the other link failed
        # a party that waits for the other party sends us nothing meanwhile: a link's timeout counts from the
        # last message of either party, so the waiting party's own timeout, which names the silent one, ends first
        pipe.since = lambda: service.last_heard
        try:
            while True:
                msg = pipe.recv()
                service.last_heard = time.monotonic()
                if not isinstance(msg, dict):
                    raise PeerError(f"P{rank} sent a message that is not a request")
                if service.failed is not None:   # the other party's link failed: tell this one why
                    raise PeerError(str(service.failed))
                if msg.get("op") == "bye":
                    if not service.finished(rank):
                        raise PeerError(f"P{rank} said goodbye before its work with this role was done")
                    return
                reply = service.handle(rank, msg)
                if reply is not None:
                    pipe.send(reply)
        except BaseException as e:  # noqa: BLE001 - reported once, below
            errors.append(e)
            service.fail(rank, e)
            pipe.send_error(str(e))   # only this thread's own link (an SSL socket is not shared by threads)

    threads = [threading.Thread(target=body, args=(r,), name=f"serve-P{r}", daemon=True) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        first = next((e for e in errors if not (isinstance(e, PeerError) and "stopped" in str(e))), errors[0])
        raise first
