"""How long a secret weight's Beaver mask lives: `engine.weight_masks=call|request|deployment`.

A Beaver product x @ W of a secret activation x and a secret weight W opens e = x - a and f = W - B.
  * call (the published systems' default, CrypTen's): every product draws a fresh B and opens f.
  * request: B is drawn and f opened at W's first product of a request and reused by its later
    products (the mask dies with the request: MPC.inference).
  * deployment: B is drawn and f = W - B opened once per deployment, in the `deploy` stage (its own row
    in metrics.csv, amortised over `deploy_requests`); every later product, in every request, opens only
    a fresh e = x - a and uses the same B (fixed-operand correlations: the dealer makes c = a @ B
    with a fresh a each time).
A weight that itself lives one request (Comet's per-request permuted weights, MPC.register_weight
`per_request`) keeps its mask at most for that request under either reuse policy.

Why reusing B for a fixed W is safe (docs/threat-model.md "Weight-mask lifetime"): f = W - B is one
one-time-pad encryption of W, opened once; every later opening is of x - a with a fresh uniform a, so
the transcript of k products is (f, e_1, ..., e_k) with the e_i uniform and independent of everything
else, the same distribution as with one product. The servers learn nothing about W beyond f, which is
uniform to each of them (each holds one share of B). What must never be reused: a mask of a value that
changes (an activation, a KV entry, a weight that is re-permuted or re-shared), because f - f' =
W - W' then opens the difference; and the activation mask a (e - e' = x - x'). Hence: only registered
weights are keyed, their masks are dropped when the weight itself is replaced (per-request weights at the
end of the request), and a is always fresh.

Cost of the deploy opening of one weight of n elements: 2 * 8 n bytes online, 1 round, 0 offline (both
halves of B come from the dealer's streams with P0 and P1).
"""

from __future__ import annotations

import logging
import warnings

import torch

from comet_core.comm.ledger import Cost
from comet_core.errors import require
from comet_core.mpc import ring
from comet_core.mpc.ashare import AShare

log = logging.getLogger(__name__)

LIFETIMES = ("call", "request", "deployment")
DEPLOY_STAGE = "deploy"


def resolve_lifetime(weight_masks: str, reuse_weight_masks: bool | None) -> str:
    """engine.weight_masks, with the deprecated engine.reuse_weight_masks (true = request, false = call)
    mapped onto it (a DeprecationWarning); both set and disagreeing is an error."""
    require(weight_masks in LIFETIMES,
            f"engine.weight_masks must be one of {', '.join(LIFETIMES)}; got {weight_masks!r}")
    if reuse_weight_masks is None:
        return weight_masks
    old = "request" if reuse_weight_masks else "call"
    log.warning("engine.reuse_weight_masks is deprecated: use engine.weight_masks=%s", old)
    warnings.warn("engine.reuse_weight_masks is deprecated: use engine.weight_masks=call|request|deployment "
                  f"(reuse_weight_masks={str(bool(reuse_weight_masks)).lower()} is weight_masks={old})",
                  DeprecationWarning, stacklevel=3)
    require(weight_masks in ("call", old),
            f"engine.reuse_weight_masks={str(bool(reuse_weight_masks)).lower()} contradicts "
            f"engine.weight_masks={weight_masks}; drop the deprecated reuse_weight_masks")
    return old


def mask_key(mpc, y, reuse: bool | None = None):
    """The reuse key of y's mask in this product (its weight id), or None for a fresh mask. `reuse`
    (arith.matmul's reuse_mask) overrides the policy's yes/no for one call."""
    reuse = mpc.config.weight_masks != "call" if reuse is None else reuse
    return y.uid if reuse else None


def lives_per_deployment(mpc, key) -> bool:
    return key is not None and mpc.config.weight_masks == "deployment" and key not in mpc.request_weights


def open_for_deployment(mpc, y, key) -> None:
    """weight_masks=deployment: at a deployment weight's first product, draw its B and open f = W - B
    in the `deploy` stage (one round of its own, outside the request's rounds); later products find f
    kept (MPC.weight_masks) and the dealer's B kept (Dealer.weight_mask). Nothing for other weights."""
    if not lives_per_deployment(mpc, key) or key in mpc.weight_masks:
        return
    with mpc.label(stage=DEPLOY_STAGE), mpc.ledger.protocol("weight_mask"):
        b = mpc.dealer.weight_mask(tuple(y.shape), key)
        (f,) = mpc.open_masked((y.data, b.data))
    mpc.weight_masks[key] = f
    log.debug("deploy: weight %d's mask opened once (%d elements)", key, y.numel())


def deploy_opening_cost(n: int) -> Cost:
    """The deploy-stage opening of one weight of n elements."""
    return Cost(2 * ring.BYTES_PER_ELEMENT * n, 0, 1)


# Kept (reused) weight masks stay in memory as tensors (True), or on the CPU only as the dealer's stream
# positions they were drawn at, read again at each use (False: StreamMask; tests switch it to compare)
KEEP_MASKS_IN_MEMORY = False


class StreamMask:
    """A kept weight mask b (2, k, n) that is not held in memory: where its halves were drawn from the
    dealer's streams with P0 and P1 (word positions), read again at each use (PRG.fill_at_). The same words
    as the kept tensor, so every share and ledger row is unchanged; it costs one keystream of b per use
    (AES-CTR at several GB/s) and saves b's 16 bytes per weight element for the inference (the embedding's
    and LM head's masks: 0.9 GB for SmolLM2-135M)."""

    def __init__(self, dealer, shape, start0: int, start1: int) -> None:
        self.dealer, self.shape, self.start = dealer, tuple(shape), (start0, start1)

    def rows(self, r0: int, out: torch.Tensor) -> torch.Tensor:
        """Rows r0 .. r0 + out.shape[1] of both halves into out (2, h, n)."""
        n = self.shape[-1]
        self.dealer.gen_p0.fill_at_(self.start[0] + r0 * n, out[0])
        self.dealer.gen_p1.fill_at_(self.start[1] + r0 * n, out[1])
        return out

    def share(self) -> AShare:
        return AShare(self.rows(0, torch.empty((2, *self.shape), dtype=torch.int64)), self.dealer.mpc, 0)


class Reopened:
    """A kept opening f = (y0 - b0) + (y1 - b1) of a reused mask, held in a simulation as its operands: the
    weight's shares (which the model holds anyway) and the dealer's StreamMask (its stream positions), and
    computed again where a product needs it (the blocked kernel does it block by block: y in place of f).
    The same words as the opened f, so nothing a party sees or the ledger books changes; it saves f's 8
    bytes per weight element for the inference. A weight changed in place since (its version) is refused:
    its f would no longer be the one opened."""

    def __init__(self, y, stream) -> None:
        self.y, self.stream, self.version = y, stream, y._version   # y: (2, k, n) int64 shares

    def check(self) -> None:
        if self.y._version != self.version:
            raise RuntimeError("a reused mask's weight was changed in place after its opening")

    def tensor(self, b=None):
        """f in full; `b` (2, k, n): the mask's halves when the caller has them (else read from the streams)."""
        self.check()
        b = self.stream.share().data if b is None else b
        return (self.y[0] - b[0]).add_(self.y[1]).sub_(b[1])


def keep_opening(mpc, key, y, f):
    """What MPC.weight_masks keeps for `key` after its opening f of the weight shares y (2, k, n): f, or in a
    simulation whose dealer streams the mask (StreamMask) a Reopened."""
    entry = getattr(mpc.dealer, "_reused", {}).get(key) if mpc.rank is None else None
    if entry is not None and isinstance(entry[0], StreamMask) and y.dim() == 3:
        return Reopened(y, entry[0])
    return f


def kept_opening(kept, b=None):
    """A kept f as a tensor (a Reopened computed again, with the mask's halves `b` if the caller has them)."""
    return kept.tensor(b) if isinstance(kept, Reopened) else kept
