"""The engine context (additive shares, `AShare`: mpc/ashare.py, re-exported here).

`MPC` ties together the ring settings, the ledger, the channel, the dealer and the generators.
In `cost` mode every tensor is a data-free `Shape` (device `meta`): the same protocol code runs on shapes
only and writes the same ledger as `exact` mode would.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from comet_core.comm.channel import InProcessChannel
from comet_core.comm.ledger import Ledger
from comet_core.errors import RangeError, require
from comet_core.mpc import ring
from comet_core.mpc.ashare import SMALL_NP, AShare, _lift, _np_open, _small_cpu  # noqa: F401 (re-exported)
from comet_core.mpc.matmul import split_digits
from comet_core.mpc.prg import PRG, Keys
from comet_core.mpc.shape import Shape
from comet_core.mpc.sharing import share_into
from comet_core.mpc.xp import NUMPY, TORCH


@dataclass
class FunctionConfig:
    """Iteration counts and input ranges of the function approximations."""

    exp_iterations: int = 8                    # CrypTen's default
    exp_clamp: bool = True                     # relu(1 + x/2^n) so that x < -2^n gives 0 (not in CrypTen)
    reciprocal_nr_iters: int = 4               # from a guess within 2^0.5: error 0.41 -> 8e-7 in 4 steps
    reciprocal_range: tuple = (-8, 24)         # 2^-8 <= x < 2^25 (softmax sums lie in [1, context])
    inv_sqrt_nr_iters: int = 3                 # from a guess within 2^0.25: error 0.19 -> 3e-5 in 3 steps
    inv_sqrt_range: tuple = (-16, 31)          # 2^-16 (one LSB at f=16) <= x < 2^32 (variances)
    # reciprocal and inv_sqrt return their result at scale frac_bits + 12 (nonlinear.hi_frac)
    sigmoid_nr_iters: int = 3                  # CrypTen's default (denominator in (1, 2])


FRAC_BITS_RANGE = (14, 24)  # every non-linear function is tested at both ends (tests/test_protocols.py)


@dataclass
class EngineConfig:
    frac_bits: int = 16
    truncation: str = "dealer"  # dealer (exact, 1 round) | local (CrypTen's, 0 rounds, rare failures)
    weight_masks: str = "call"  # call | request | deployment: how long a weight's Beaver mask lives (mpc/weight_masks.py)
    reuse_weight_masks: bool | None = None   # deprecated: true = weight_masks=request, false = call
    check_ranges: bool = True   # simulation only: raise a RangeError when a secret leaves a protocol's range
    max_method: str = "auto"    # max/argmax along a dim: auto | tree | pairs (comet_core/mpc/pairmax.py)
    comparison: str = "circuit"  # circuit (mpc/compare.py's bit tree, 8 rounds) | fss (mpc/fss.py: DCF keys, 1 round)
    relu_bits: int = 64          # the activation ReLU's sign test on Z_2^relu_bits (mpc/smallring.py); 64: compare.relu
    relu_range: int = 4          # log2 of the public bound on |ReLU input| that the reduced test covers
    functions: FunctionConfig = field(default_factory=FunctionConfig)

    def __post_init__(self) -> None:
        from comet_core.mpc.weight_masks import resolve_lifetime

        self.weight_masks = resolve_lifetime(self.weight_masks, self.reuse_weight_masks)
        self.reuse_weight_masks = None   # consumed: weight_masks says it (dataclasses.replace stays valid)
        require(isinstance(self.frac_bits, int) and not isinstance(self.frac_bits, bool)
                and FRAC_BITS_RANGE[0] <= self.frac_bits <= FRAC_BITS_RANGE[1],
                f"engine.frac_bits must be an integer in {FRAC_BITS_RANGE[0]}..{FRAC_BITS_RANGE[1]} (below "
                f"{FRAC_BITS_RANGE[0]} exp, reciprocal and sigmoid lose all accuracy; above "
                f"{FRAC_BITS_RANGE[1]} products leave the 64-bit ring), got {self.frac_bits}")
        require(self.max_method in ("auto", "tree", "pairs"),
                f"engine.max_method must be one of auto, tree, pairs; got {self.max_method!r}")
        require(self.comparison in ("circuit", "fss"),
                f"engine.comparison must be one of circuit, fss; got {self.comparison!r}")
        require(isinstance(self.relu_bits, int) and 3 <= self.relu_bits <= 64,
                f"engine.relu_bits must be an integer in 3..64, got {self.relu_bits!r}")
        require(isinstance(self.relu_range, int) and 0 <= self.relu_range <= 40,
                f"engine.relu_range (log2 of the ReLU input bound) must be an integer in 0..40, got {self.relu_range!r}")
        require(self.truncation in ("local", "dealer"),
                f"engine.truncation must be one of local, dealer; got {self.truncation!r}")
        require(self.truncation == "dealer" or self.frac_bits <= 20,
                f"engine.frac_bits={self.frac_bits} with truncation=local fails often (probability "
                f"~|x y| 2^(2f-63) per product); use frac_bits <= 20 or truncation=dealer")


class MPC:
    """The 2PC engine: parties P0 and P1, a dealer, one channel and one ledger.

    Two ways to run the same protocol code:
      * simulation (`party=None`, the default): this object holds both parties' shares, stacked on
        dim 0 of every share tensor, and runs them in lock-step in one process;
      * single party (`party=0|1`, SPMD as in CrypTen): this object is one party and holds only its
        own share (dim 0 has size 1); messages go through a two-party channel, correlated randomness
        and input shares come from `peers` (the dealer, the client and the model owner).
    Protocols never index parties directly: the few party-specific steps go through `add_p0_`,
    `xor_p0_` and `per_party`, and openings through `open`/`open_bits`.
    """

    def __init__(self, config: EngineConfig | None = None, seed: int | None = None, device: str = "cpu",
                 mode: str = "exact", ledger: Ledger | None = None, party: int | None = None,
                 peers=None, check_ranges: bool = True) -> None:
        require(mode in ("exact", "cost"), f"mode must be one of exact, cost; got {mode!r}")
        if device == "cuda":
            require(torch.cuda.is_available(), "device=cuda but no CUDA device is available; use device=cpu")
        require(party in (None, 0, 1), f"party must be 0, 1 or None (simulation), got {party!r}")
        require(party is None or peers is not None, "a single party needs `peers` (channel, dealer, inputs)")
        self.config = config or EngineConfig()
        self.check_ranges = bool(check_ranges) and self.config.check_ranges
        self.mode = mode
        self.device = torch.device("meta") if mode == "cost" else torch.device(device)
        self.seed = None if seed is None else int(seed)
        self.keys = Keys.from_os() if seed is None else Keys.from_seed(seed)
        self.ledger = ledger or Ledger()
        self.rank = party
        self.parties = (0, 1) if party is None else (party,)
        self.weight_masks: dict[int, tuple] = {}   # registered weight id -> (mask share, opened masked value)
        self.request_weights: set[int] = set()     # ids of weights made per request (a request's permuted weights)
        self.mask_digits: dict = {}                # (weight id | None, name) -> (source, digits): few-row products
        self._weight_ids = itertools.count()
        self._handles = itertools.count()
        self.weight_abs_max: dict[int, float] = {}  # range check: max |w| per registered weight (simulation)
        from comet_core.mpc.dealer import Dealer  # dealer imports engine types

        if party is None:
            self.channel = InProcessChannel(self.ledger)
            self.dealer = Dealer(self)
            self.peers = None
            self._input_gens = {o: self._generator(o, "P0", "input") for o in ("client", "model_owner")}
        else:
            self.peers = peers
            pair_key = getattr(peers, "pair_key", None)   # P0 and P1 share a key the dealer does not know
            if pair_key is not None:
                self.keys.adopt("P0", "P1", pair_key)
            self.channel = peers.channel(party, self.ledger)
            self.dealer = peers.dealer_view(self)
        self._relabel_gen = None

    @property
    def frac_bits(self) -> int:
        return self.config.frac_bits

    @property
    def fn(self) -> FunctionConfig:
        return self.config.functions

    @property
    def is_cost(self) -> bool:
        return self.mode == "cost"

    @property
    def simulated(self) -> bool:
        """True when this process holds both parties' shares (in-process simulation)."""
        return self.rank is None

    @property
    def checking(self) -> bool:
        """Whether the range check runs: exact-mode simulation (both shares here, so the check costs no
        message) with `check_ranges` on (EngineConfig.check_ranges and the MPC argument). A single party
        holds only its own share and cannot check: there the check is absent."""
        return self.check_ranges and self.simulated and not self.is_cost

    @contextlib.contextmanager
    def ranges_unchecked(self):
        """Suspend the range check inside a protocol step whose out-of-range intermediates are provably
        discarded (multiplied by an exact 0/1 integer share afterwards, e.g. PUMA's clipped exp)."""
        old = self.check_ranges
        self.check_ranges = False
        try:
            yield
        finally:
            self.check_ranges = old

    def secret(self, x: "AShare") -> torch.Tensor:
        """The secret ring elements of x (simulation only: both shares are here; never booked)."""
        assert self.simulated, "only the simulation holds both shares"
        return x.data[0] + x.data[1]

    def range_error(self, what: str, value: float, limit: float, hint: str = "") -> RangeError:
        """A one-line error naming the layer, the operator and the protocol, and the offending value."""
        lab = self.ledger._labels
        where = []
        if lab.get("stage"):
            where.append(f"stage {lab['stage']}")
        where.append(f"layer {lab['layer']}" if lab.get("layer", -1) != -1 else "outside the decoder layers")
        if lab.get("op"):
            where.append(f"op {lab['op']}")
        proto = "/".join(self.ledger._protocol) or "engine"
        msg = (f"value out of range in {', '.join(where)} (protocol {proto}): {what} = {value:.6g}, beyond "
               f"+-{limit:.6g} at frac_bits={self.frac_bits}")
        return RangeError(msg + (f"; {hint}" if hint else "; see docs/ranges.md (lower "
                                 "engine.frac_bits for a wider range, or rescale the input)"))

    def _generator(self, a: str, b: str, stream: str) -> "PRG | None":
        """The keyed stream `stream` of the pair (a, b) (None in cost mode: no data)."""
        if self.device.type == "meta":
            return None
        return self.keys.prg(a, b, stream)

    # -- labels --------------------------------------------------------------------------------
    def label(self, **labels):
        return self.ledger.label(**labels)

    # -- party-specific steps (the only places where P0 and P1 differ) ---------------------------
    def add_p0_(self, data: torch.Tensor, value) -> torch.Tensor:
        """P0 adds a public value to its share (in place); P1 does nothing. Returns data."""
        if 0 in self.parties and not data.is_meta:
            data[0] += value
        return data

    def xor_p0_(self, data: torch.Tensor, value) -> torch.Tensor:
        """P0 XORs a public value into its binary share (in place); P1 does nothing."""
        if 0 in self.parties and not data.is_meta:
            data[0] ^= value
        return data

    def per_party(self, data: torch.Tensor, fn) -> torch.Tensor:
        """Apply fn(rank, my_share) to each locally held share: for steps whose formula differs by party."""
        if data.is_meta:
            return data
        return torch.stack([fn(p, data[i]) for i, p in enumerate(self.parties)])

    def for_parties(self, fn, shape=None) -> torch.Tensor:
        """Stack fn(rank, i) over the locally held parties (i: index in dim 0): a party-specific step
        whose inputs are several party-stacked tensors. `shape` (one share's) is used in cost mode."""
        if self.is_cost:
            return Shape((len(self.parties), *shape))
        return torch.stack([fn(p, i) for i, p in enumerate(self.parties)])

    def send_one_way(self, sender: int, data: torch.Tensor, bits: int = 64) -> torch.Tensor | None:
        """One round in which only `sender` sends its slot of party-stacked `data` to the other party.
        Returns what the receiver holds afterwards (None for a single party that is the sender)."""
        if self.simulated or data.is_meta:
            self.channel.send_one_way(sender, data[0], bits)
            return data[0] if data.is_meta else data[sender]
        got = self.channel.send_one_way(sender, data[0], bits)
        return None if self.rank == sender else got

    def public_share(self, value: torch.Tensor) -> torch.Tensor:
        """Shares of a public ring tensor: P0 holds it, P1 holds 0 (local, no message)."""
        if value.is_meta:
            return Shape((len(self.parties), *value.shape))
        return torch.stack([value if p == 0 else torch.zeros_like(value) for p in self.parties])

    # -- sharing and revealing -----------------------------------------------------------------
    def share(self, x: torch.Tensor, owner: str = "client", frac: int | None = None,
              phase: str = "input", out: torch.Tensor | None = None, to_p0: bool = False) -> "AShare":
        """Secret-share a plaintext tensor held by `owner` (client or model_owner).

        1. The owner draws r from the key it shares with P0 (P0's share, nothing sent).
        2. The owner sends x - r to P1.
        Cost: numel * 64 bits from the owner to P1 (phase `input`; `setup` for model weights,
        shared once per deployment), 0 online rounds. Integer tensors are shared as integers.
        A single party receives its share from the owner (`peers`); only the owner sees x.
        `out` (simulation, exact mode): a party-stacked int64 view (2, *x.shape) that receives the shares,
        e.g. the columns of a fused weight (models/weights.py); the CPU path writes them there directly.
        `to_p0`: P0 holds x itself, P1 a zero share (the owner sends x to P0): the weights of the linear
        layers of a system whose server is the model owner (Iron's and BOLT's `system.linear=he`).
        """
        frac = self.frac_bits if frac is None else frac
        if not x.is_floating_point():
            frac = 0
        receiver = "P0" if to_p0 else "P1"
        if not self.simulated:
            assert out is None, "out: simulation only"
            data = self.peers.share(self.rank, x, owner, frac, phase, to_p0=to_p0)
            self.ledger.record(phase, owner, receiver, data[0].numel(), 64, -1)
            return AShare(data, self, frac)
        if to_p0 and not self.is_cost:
            x = x.to(self.device)
            enc = ring.encode(x, frac) if x.is_floating_point() else x.to(torch.int64)
            data = torch.stack([enc, torch.zeros_like(enc)])
            if out is not None:
                data = out.copy_(data)
            self.ledger.record(phase, owner, receiver, enc.numel(), 64, -1)
            return AShare(data, self, frac)
        assert out is None or not self.is_cost, "out: exact mode only"
        gen = self._input_gens.get(owner, self._input_gens["client"])
        if not self.is_cost and self.device.type == "cpu" and x.is_floating_point() and isinstance(gen, PRG):
            data = share_into(x, frac, gen, out=out)
            self.ledger.record(phase, owner, receiver, x.numel(), 64, -1)
            return AShare(data, self, frac)
        if self.is_cost:
            enc = Shape(x.shape)
        else:
            x = x.to(self.device)
            enc = ring.encode(x, frac) if x.is_floating_point() else x.to(torch.int64)
        r = ring.random_ring(enc.shape, gen, self.device)
        data = torch.stack([r, enc - r])
        if out is not None:
            data = out.copy_(data)
        self.ledger.record(phase, owner, receiver, enc.numel(), 64, -1)
        return AShare(data, self, frac)

    def reveal(self, x: "AShare", to: str = "client", raw: bool = False) -> torch.Tensor:
        """Open `x` to the client: both parties send their share (phase `output`). Returns floats, or
        the ring elements with `raw` (what the client receives; a single party gets it back from the
        simulated client of the harness)."""
        n = x.numel()
        self.ledger.record("output", "P0", to, n, 64, -1)
        self.ledger.record("output", "P1", to, n, 64, -1)
        if self.is_cost:
            return Shape(x.shape, torch.int64 if raw else torch.float64)
        value = self.peers.reveal(self.rank, x.data, to, frac=x.frac) if not self.simulated else x.data[0] + x.data[1]
        return value if raw else ring.decode(value, x.frac)

    def peek(self, x: "AShare") -> torch.Tensor | None:
        """Debug only, never a protocol step: x's value when this process holds both shares (exact-mode
        simulation), None otherwise (a single party, cost mode). Books nothing: used to report the
        logit error of a run whose client receives only the token (output=token)."""
        if not self.simulated or self.is_cost:
            return None
        return ring.decode(x.data[0] + x.data[1], x.frac)

    def open(self, *xs: "AShare") -> list[torch.Tensor]:
        """Open masked values to both parties in one round (each sends its share of each)."""
        return self.open_raw([x.data for x in xs], 64)

    def open_raw(self, tensors: list[torch.Tensor], bits: int = 64, xor: bool = False,
                 packed: int | None = None) -> list[torch.Tensor]:
        """One round that opens party-stacked tensors (additive, or XOR with `xor`): returns the public
        values. `bits` is one element's width on the wire; `packed` = elements when the words pack
        several fields of `bits` bits (only those bits are booked)."""
        peer = self.channel.exchange(tensors, bits, packed=packed)
        if tensors and tensors[0].is_meta:
            return [t[0] for t in tensors]
        if peer is None:  # simulation: both shares are here
            if all(_small_cpu(t) for t in tensors):   # numpy: a fraction of torch's per-call overhead
                return [torch.from_numpy(_np_open(t.numpy(), xor)) for t in tensors]
            return [t[0] ^ t[1] if xor else t[0] + t[1] for t in tensors]
        return [t[0] ^ p if xor else t[0] + p for t, p in zip(tensors, peer)]

    def open_np(self, arrays: list[np.ndarray], bits: int = 64, xor: bool = False,
                packed: int | None = None) -> list[np.ndarray]:
        """`open_raw` of party-stacked int64 numpy arrays (CPU): the same round, messages and values, as
        numpy arrays (the small protocols' local steps run in numpy)."""
        if self.simulated:   # booking needs only the counts: nothing moves
            self.channel.exchange(arrays if packed is not None else [torch.from_numpy(a) for a in arrays],
                                  bits, packed=packed)
            return [_np_open(a, xor) for a in arrays]
        return [v.numpy() for v in self.open_raw([torch.from_numpy(a) for a in arrays], bits, xor, packed)]

    def open_masked(self, *pairs: tuple[torch.Tensor, torch.Tensor], bits: int = 64, xor: bool = False,
                    packed: int | None = None) -> list[torch.Tensor]:
        """Open x - m (x ^ m with `xor`) for party-stacked (x, m) pairs in one round: the same message and
        value as `open_raw([x - m, ...], bits, xor, packed)`.

        In the simulation (both shares here, nothing moves) each value is formed as
        ((x0 - m0) + x1) - m1 in one result buffer: no party-stacked x - m temporary, 4 reads and 1 write
        per element instead of 6 and 3 (what decides the time of a weight-sized opening). Ring arithmetic
        is exact, so the value is bit for bit the same. A single party sends x_p - m_p as always."""
        if self.simulated and pairs and not pairs[0][0].is_meta and all(x.shape == m.shape for x, m in pairs):
            self.channel.exchange([x for x, _ in pairs], bits, packed=packed)   # books it: nothing moves
            small = all(_small_cpu(x) and _small_cpu(m) for x, m in pairs)
            return [self.open_pair(x, m, xor=xor, small=small) for x, m in pairs]
        return self.open_raw([x ^ m if xor else x - m for x, m in pairs], bits, xor=xor, packed=packed)

    @staticmethod
    def open_pair(x: torch.Tensor, m: torch.Tensor, out: torch.Tensor | None = None,
                  xor: bool = False, small: bool = False) -> torch.Tensor:
        """The opened value of party-stacked x - m (x ^ m) from both shares in this process (simulation;
        the caller books the round): ((x0 - m0) + x1) - m1 in one result buffer (`out` if given).
        `small` (CPU tensors of a few elements): in numpy, the same value at a fraction of torch's
        per-call overhead (one definition over either, mpc/xp.py)."""
        xp = NUMPY if small and out is None else TORCH
        xs, ms = xp.arr(x), xp.arr(m)
        if xor:
            v = xp.xor_into(xs[0], ms[0], out)
            v ^= xs[1]
            v ^= ms[1]
        else:
            v = xp.sub_into(xs[0], ms[0], out)
            v += xs[1]
            v -= ms[1]
        return xp.tensor(v)

    def digits(self, key, name: str, t: torch.Tensor):
        """Digits (matmul.split_digits) of a right operand t that several few-row products share: a reused
        weight's mask b and opening f (key = the weight id, kept for the inference), or with key None
        the last fresh mask (the dealer's product and the parties' e @ b use the same b). The entry
        holds t itself, so a match of the fingerprint (storage, shape, strides, version) is t."""
        hit = self.mask_digits.get((key, name))
        if hit is not None and hit[0] is t and hit[1].matches(t):
            return hit[1]
        d = split_digits(t)
        self.mask_digits[(key, name)] = (t, d)
        return d

    def relabel(self, n: int) -> torch.Tensor | None:
        """A permutation of n indices (gather index) that P0 and P1 both know and the dealer does not: drawn
        from the P0-P1 key's `relabel` stream, in the parties' common call order (None in cost mode)."""
        if self.device.type == "meta":
            return None
        if self._relabel_gen is None:
            self._relabel_gen = self._generator("P0", "P1", "relabel")
        return torch.argsort(ring.random_bits((n,), 64, self._relabel_gen, self.device))

    def next_handle(self) -> int:
        """A name for a dealer-held object (a permutation): the same in both parties of an SPMD run."""
        return next(self._handles)

    def register_weight(self, w: "AShare", per_request: bool = False) -> "AShare":
        """Mark a shared model weight whose Beaver mask may be opened once and reused (engine.weight_masks).
        `per_request`: the weight itself lives one request (Comet's per-request permuted weights), so its
        mask lives at most that long whatever the policy."""
        w.uid = next(self._weight_ids)
        if per_request:
            self.request_weights.add(w.uid)
        return w

    @contextlib.contextmanager
    def inference(self):
        """One inference request: weight masks of lifetime `request` (and every per-request weight's) live
        only inside it; with weight_masks=deployment the deployment weights' masks outlive it."""
        try:
            yield self
        finally:
            keep = set() if self.config.weight_masks != "deployment" else \
                {k for k in self.weight_masks if k not in self.request_weights}
            self.weight_masks = {k: v for k, v in self.weight_masks.items() if k in keep}
            self.request_weights.clear()
            self.mask_digits.clear()
            self.dealer.forget_reused(sorted(keep))
