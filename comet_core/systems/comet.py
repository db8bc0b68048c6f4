"""The `comet` system (Yan et al., S&P 2025): predicted FFN sparsity skipped under 2PC.

Per request (stage `setup`, phase online, counted in `total`):
  1. For every layer, a fresh permutation pi of the FFN's F neurons that neither server knows
     (mpc/shuffle.py), applied obliviously and consistently to every tensor indexed by neuron: the
     columns of W_in (OPT fc1 + b1; Llama gate and up), the rows of W_out (fc2 / down) and the
     predictor's second layer (W2 columns, b2). One `permute` call per layer (all those tensors
     stacked along their neuron axis): 2 rounds and 8 * (numel) bytes each way in total. With
     `system.block = b > 1` pi permutes the F / b blocks of b consecutive neurons (a block moves whole).
Per layer and step (ops `ffn.predict`, `ffn.reveal`, `ffn.somm`, `ffn.act`, `ffn.simm`):
  2. Predictor in MPC on the FFN input h (T, d): [z] = ([h] W1 + b1) W2pi + b2pi (two Beaver
     matmuls): the scores come out already permuted, so no per-step mask shuffle is needed.
  3. [m] = [z > threshold] (union over the T tokens of a prefill), opened as one bit per neuron (per
     block: the predictor has F / b outputs, and S is every neuron of each active block): a public mask S
     in permuted coordinates (sparse/masks.py states the leakage).
  4. SOMM: y = h W_in pi[:, S] (+ b_in pi[S]): one Beaver matmul of (T, d) by (d, |S|), each operand
     masked and opened once (Llama: gate and up side by side, (d, 2|S|), so h is opened once).
  5. Sparse activation: ReLU / SiLU (x up) on the |S| active columns only; the others are exactly 0.
  6. SIMM: out = act(y) W_out pi[S, :] (+ b_out): one Beaver matmul of (T, |S|) by (|S|, d).
With an empty S the FFN outputs b_out (no matmul, nothing opened).

Cost mode runs the same code: the reveal returns the count of the sparsity profile (conf/system/comet.yaml
`profile`) at fixed positions, or the counts of an exact run's `sparsity.csv` (`mask_trace`), so the
two modes' ledgers are equal for the same masks.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from comet_core.comm.ledger import Cost
from comet_core.errors import CometError
from comet_core.mpc import arith, compare, smallring
from comet_core.mpc.engine import AShare
from comet_core.mpc.shuffle import Permutation, permute
from comet_core.sparse import oblivious
from comet_core.sparse.count_padding import CountPadding, padded_mask, real_permuted_mask
from comet_core.sparse.masks import active_bits, reveal_bits
from comet_core.sparse.permutation_timing import PERMUTATION_TIMINGS
from comet_core.systems.comet_heads import HeadSparsity, attention_step_cost  # noqa: F401 (re-exported)
from comet_core.systems.dense import DenseSystem
from comet_core.systems.step_record import StepRecord  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


@dataclass
class LayerRequest:
    """One layer's FFN weights in the request's permuted coordinates, and the permutation."""

    perm: Permutation
    w_in: AShare          # (d, F) or (d, 2F) for Llama [gate | up]
    b_in: AShare | None   # (F,)
    w_out: AShare         # (F, d)
    p2: AShare            # (r, F) predictor second layer
    pb2: AShare           # (F,)


@dataclass
class CometState:
    request: list[LayerRequest] = field(default_factory=list)
    heads: list = field(default_factory=list)       # per layer: HeadRequest (permuted attention weights)
    kv: list = field(default_factory=list)          # per layer: HeadCache
    records: list[StepRecord] = field(default_factory=list)
    step: int = 0
    n_tokens: int = 1
    total_steps: int = 1


class CometSystem(HeadSparsity, DenseSystem):
    name = "comet"

    def __init__(self, cfg=None) -> None:
        super().__init__(cfg)
        cfg = self.cfg   # CometParams (comet_core/config/typed.py)
        self.indexing = str(cfg.indexing)
        if self.indexing not in ("shuffle", "oblivious"):
            raise CometError(f"system.indexing must be shuffle or oblivious, got {self.indexing!r}")
        self.flip_eps = float(cfg.flip_epsilon)
        self.predictor_bits, self.predictor_range = _predictor_bits(cfg)
        self.correlations = str(cfg.correlations)
        if self.correlations not in ("dealer", "client"):
            raise CometError(f"system.correlations must be dealer or client, got {self.correlations!r}")
        self.heads = bool(cfg.heads)
        self.permutation = str(cfg.permutation)
        if self.permutation not in PERMUTATION_TIMINGS:
            raise CometError(f"system.permutation must be one of {', '.join(PERMUTATION_TIMINGS)}, got {self.permutation!r}")
        self.count_padding = CountPadding.from_params(cfg)
        self._shuffled = None                # (FFN LayerRequests, HeadRequests) made in deploy or preprocess
        self.kv_refill = str(cfg.kv_refill)
        self.kv_prefetch = str(cfg.kv_prefetch)
        if self.kv_refill not in ("merged", "naive"):
            raise CometError(f"system.kv_refill must be merged or naive, got {self.kv_refill!r}")
        if self.kv_prefetch not in ("cost_benefit", "always", "never"):
            raise CometError(f"system.kv_prefetch must be cost_benefit, always or never, got {self.kv_prefetch!r}")
        if self.count_padding.active and self.indexing != "shuffle":
            raise CometError("system.count_padding pads the shuffled FFN masks; use it with system.indexing=shuffle")
        if self.count_padding.active and (int(cfg.block) != 1 or self.predictor_bits != 64):
            raise CometError("system.count_padding pads per-neuron masks of the full-ring threshold test; use it "
                             "with system.block=1 and system.predictor_bits=64")
        if self.heads and self.indexing == "oblivious":
            raise CometError("system.indexing=oblivious covers the FFN only; set system.heads=false with it")
        self.block = cfg.block
        if isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 1:
            raise CometError(f"system.block must be a positive integer (neurons per prediction), got {self.block!r}")
        if self.block > 1 and self.indexing == "oblivious":
            raise CometError("system.block > 1 needs system.indexing=shuffle (the oblivious variant selects neurons)")
        self.state = CometState()
        self.predictors: list[dict] = []     # per layer: shared W1 (d, r), b1 (r,), W2 (r, F), b2 (F,)
        self.thresholds: list[float] = []
        self.plain_predictors = None         # float predictors (exact mode; flips check)
        self.plain_head_predictors = None
        self.counts = None                   # cost mode: (layer, step, n_tokens) -> active count

    def validate(self, mode: str, model, gen_tokens: int = 1) -> None:
        """Exact mode needs the model's trained predictors (checked here, before the model loads); a forced
        ffn_sparsity only prices cost mode."""
        if int(model.ffn_dim) % self.block:
            raise CometError(f"system.block={self.block} must divide the {model.ffn_dim} FFN neurons of "
                             f"{model.name}")
        if mode != "exact":
            return
        if self.cfg.ffn_sparsity is not None:
            raise CometError("system.ffn_sparsity forces counts in cost mode only; exact mode reveals the "
                             "predictor's real masks (use mode=cost, or drop system.ffn_sparsity)")
        if getattr(self, "party_role", None) not in (None, "owner"):
            return   # a tcp role other than the owner never reads the predictors (party.py)
        from comet_core.sparse.predictors import checkpoint_path, missing_predictors_message

        if not checkpoint_path(model, self.cfg).is_file():
            raise CometError(missing_predictors_message(model, self.cfg))

    # -- deployment ------------------------------------------------------------------------------------
    def fused_layout(self) -> tuple:
        """Nothing: `prepare` fuses nothing (the sparse FFN selects gate/up rows per layer; q/k/v are joined
        at their first use by a cat, as before)."""
        return ()

    def prepare(self, mpc, weights, model_cfg) -> None:
        """The model owner shares the predictors with the model (phase setup, once per deployment).

        Three ways to get the predictors' shapes and the public thresholds:
          1. cost mode: data-free shapes (the checkpoint's ranks if it exists), thresholds 0;
          2. a party process of transport=tcp (`mpc.peers.owner_public`): data-free shapes from the ranks
             and the thresholds the owner process sends in the clear (`public_setup`); the shares come
             from the owner in the order of `plain` below, no plaintext predictor here (flips: NaN);
          3. otherwise (simulation, run_pair threads, the owner process): the checkpoint itself.
        """
        from comet_core.sparse.predictors import (cost_counts, load_for_system, public_rank_shapes,
                                                  shared_predictor_shapes)

        L = len(weights.layers)
        owner_public = None if mpc.simulated else getattr(mpc.peers, "owner_public", None)
        self._public = None
        if mpc.is_cost:
            shapes = shared_predictor_shapes(model_cfg, self.cfg, L)
            plain = shapes
            self.thresholds = [0.0] * L
            self.counts = cost_counts(model_cfg, self.cfg, L)
        elif owner_public is not None:
            self._public = _check_public(owner_public(self.name), model_cfg, L, self.heads)
            plain = public_rank_shapes(self._public["ffn"], int(model_cfg.hidden_size),
                                       int(model_cfg.ffn_dim) // self.block)
            self.thresholds = [float(p["threshold"]) for p in self._public["ffn"]]
        else:
            ps = load_for_system(model_cfg, self.cfg)
            if int(ps.settings.get("block", 1)) != self.block:
                raise CometError(f"the predictor checkpoint predicts blocks of {ps.settings.get('block', 1)} neurons, "
                                 f"system.block={self.block}: set system.block to match, or train its predictors")
            self._ps = ps
            self.plain_predictors = ps.ffn[:L]
            plain = [dict(w1=p.w1.weight.detach().t().double(), b1=p.w1.bias.detach().double(),
                          w2=p.w2.weight.detach().t().double(), b2=p.w2.bias.detach().double())
                     for p in ps.ffn[:L]]
            self.thresholds = [float(p.threshold) for p in ps.ffn[:L]]
        with mpc.label(stage="setup", op="ffn.predictor_weights"):
            self.predictors = [{k: mpc.register_weight(mpc.share(v, owner="model_owner", phase="setup"))
                                for k, v in layer.items()} for layer in plain]
        if self.heads:
            self._prepare_heads(mpc, model_cfg, L, getattr(self, "_ps", None))

    def public_setup(self) -> dict:
        """What the model owner tells the parties in the clear after `prepare` on the plaintext predictors:
        per layer the rank and threshold of the FFN predictor (and of the head predictor with heads). The
        thresholds are public in our Comet (the parties compare [z] with them in MPC); the ranks are the
        shapes of the shares the parties receive anyway."""
        def rows(preds, thresholds):
            return [dict(rank=int(p["w1"].shape[1]), threshold=float(t)) for p, t in zip(preds, thresholds)]
        out = dict(ffn=rows(self.predictors, self.thresholds))
        if self.heads:
            out["head"] = rows(self.head_predictors, self.head_thresholds)
        return out

    @property
    def per_request_weights(self) -> bool:
        """Whether the permuted weights live one request (their masks then at most one request, whatever
        engine.weight_masks says): all but system.permutation=deployment."""
        return self.permutation != "deployment"

    def deploy(self, mpc, decoder) -> None:
        """system.permutation=deployment: step 1 once per deployment (stage deploy); every request then
        multiplies the same permuted weights (sparse/permutation_timing.py states the leakage)."""
        if self.permutation == "deployment":
            self._shuffled = self._shuffle(mpc, decoder)

    def preprocess(self, mpc, decoder) -> None:
        """system.permutation=preprocessed: step 1 per request, before the prompt arrives (stage preprocess:
        it depends on no input, only on the weights)."""
        if self.permutation == "preprocessed":
            self._shuffled = self._shuffle(mpc, decoder)

    def start_request(self, mpc, decoder, steps: int = 1) -> None:
        """Step 1 (system.permutation=online; else made in deploy or preprocess): one permutation per layer,
        applied to every neuron-indexed tensor in one call (and, with heads, one per layer for the head
        groups)."""
        from comet_core.sparse.heads import HeadCache

        self.state = CometState(total_steps=steps)
        shuffled = self._shuffle(mpc, decoder) if self.permutation == "online" else self._shuffled
        self.state.request, self.state.heads = list(shuffled[0]), list(shuffled[1])
        if self.permutation == "preprocessed":
            self._shuffled = None        # one request's permutation: never reused
        if self.heads:
            self.state.kv = [HeadCache(decoder.meta["num_kv_heads"]) for _ in decoder.w.layers]

    def _shuffle(self, mpc, decoder) -> tuple[list, list]:
        request, heads = [], []
        for layer, lw in enumerate(decoder.w.layers):
            if self.indexing == "shuffle":
                with mpc.label(layer=layer, op="ffn.shuffle"):
                    request.append(self._permute_layer(mpc, lw, self.predictors[layer]))
            if self.heads:
                with mpc.label(layer=layer, op="attn.shuffle"):
                    heads.append(self._permute_heads(mpc, lw, decoder.meta, layer))
        return request, heads

    def _permute_layer(self, mpc, lw: dict, pred: dict) -> LayerRequest:
        llama = "w_gate" in lw
        ins = [lw["w_gate"], lw["w_up"]] if llama else [lw["w1"]]
        F = ins[0].shape[1]
        b = self.block
        nb = F // b
        w_out = lw["w_down"] if llama else lw["w2"]
        rows = [*ins, w_out.transpose(0, 1)] + ([] if llama else [lw["b1"].unsqueeze(0)])
        neurons = AShare.cat(rows, 0)                                      # [N]: (m, F) over Z_2^64
        m = neurons.shape[0]
        if b > 1:   # block j's b neurons as b rows of column j, so one permutation of F / b moves whole blocks
            neurons = neurons.reshape(m, nb, b).transpose(0, 1).reshape(nb, m * b).transpose(0, 1)   # (m b, F/b)
        perm = Permutation(mpc, nb, source=self.correlations)
        stacked = permute(AShare.cat([neurons, pred["w2"], pred["b2"].unsqueeze(0)], 0), -1, perm)
        neurons, p2, pb2 = stacked[:m * b], stacked[m * b:-1], stacked[-1]
        if b > 1:
            neurons = neurons.transpose(0, 1).reshape(nb, m, b).transpose(0, 1).reshape(m, F)
        parts, o = [], 0
        for r in rows:
            parts.append(neurons[o:o + r.shape[0]])
            o += r.shape[0]
        w_in = AShare.cat(parts[:2], 1) if llama else parts[0]            # (d, F) | (d, 2F)
        k = 2 if llama else 1
        # this request's (or deployment's) weights: their masks may be reused (engine.weight_masks)
        reg = lambda w: mpc.register_weight(w, per_request=self.per_request_weights)  # noqa: E731
        return LayerRequest(perm=perm, w_in=reg(w_in), b_in=None if llama else parts[-1][0],
                            w_out=reg(parts[k].transpose(0, 1)), p2=reg(p2), pb2=pb2)

    def start_step(self, step: int, n_tokens: int) -> None:
        self.state.step, self.state.n_tokens = step, n_tokens

    # -- the FFN ---------------------------------------------------------------------------------------
    def ffn(self, x: AShare, lw: dict, meta: dict, layer: int) -> AShare:
        if self.indexing == "oblivious":
            return self._ffn_oblivious(x, lw, meta, layer)
        mpc = x.mpc
        req = self.state.request[layer]
        pred = self.predictors[layer]
        llama = "w_gate" in lw
        F = req.w_out.shape[0]
        with mpc.label(op="ffn.predict"):
            z = arith.matmul(arith.matmul(x, pred["w1"]) + pred["b1"], req.p2) + req.pb2   # (T, F) permuted
        b = self.block
        keep = None
        with mpc.label(op="ffn.reveal"):
            count = self.counts(layer, self.state.step, x.shape[0]) if mpc.is_cost else None
            if self.count_padding.active:   # sparse/count_padding.py: the padded mask, [m] of the real one
                mask, m_real = padded_mask(mpc, z, self.thresholds[layer], self.count_padding, count)
                real = real_permuted_mask(mpc, m_real, count)
                if real is None:    # a tcp party: it knows the padded mask only
                    real = mask
            else:
                bits = active_bits(z, self.thresholds[layer], self.predictor_bits, self.predictor_range)
                count = -(-count // b) if count is not None else None   # blocks
                mask = real = reveal_bits(mpc, bits, count)                # (F / b,) permuted blocks
        S = torch.nonzero(mask).flatten()
        if b > 1:   # every neuron of each active block (permuted coordinates)
            S = (S[:, None] * b + torch.arange(b, device=S.device)).flatten()
        if self.count_padding.active:
            keep = m_real.index_select(0, S)                               # (|S|,) 0/1: the padded units' 0
        self._record(mpc, x, layer, real, req.perm.composed().cpu() if mpc.simulated and not mpc.is_cost else None,
                     revealed=int(mask.sum()) if self.count_padding.active else None)
        cols = torch.cat([S, S + F]) if llama else S                   # public indices (permuted)
        b_in = None if llama else req.b_in.index_select(0, S)
        return self._sparse_ffn(x, req.w_in, b_in, req.w_out, lw, meta, S.numel(), (1, cols), (0, S), keep=keep)

    def _sparse_ffn(self, x: AShare, w_in: AShare, b_in, w_out: AShare, lw: dict, meta: dict, k: int,
                    in_select=None, out_select=None, keep=None) -> AShare:
        """Steps 4-6 on the k selected neurons: SOMM, sparse activation, SIMM. The selections are public
        slices of the request's permuted weights (None: the operands are the selected weights already).
        `keep` (count padding): [0/1] per selected unit, 0 for a padded unit, whose activation is discarded."""
        mpc = x.mpc
        b_out = lw.get("b2")
        if k == 0:   # nothing active: the FFN adds only its output bias
            zeros = torch.zeros((x.shape[0], w_out.shape[-1]), dtype=torch.int64, device=mpc.device)
            zero = AShare(mpc.public_share(zeros), mpc, mpc.frac_bits)
            return zero + b_out if b_out is not None else zero
        if "w_gate" in lw:
            with mpc.label(op="ffn.somm"):
                gu = arith.matmul(x, w_in, select=in_select)                 # (T, 2k): h opened once
            with mpc.label(op="ffn.act"):
                g = self.activation(gu[:, :k], meta["act"], op="ffn.act")
                h = arith.mul(g, gu[:, k:])
        else:
            with mpc.label(op="ffn.somm"):
                y = arith.matmul(x, w_in, select=in_select) + b_in           # (T, k)
            h = self.activation(y, meta["act"], op="ffn.act")
        if keep is not None:
            with mpc.label(op="ffn.pad_discard"):
                h = arith.mul(h, keep)                                       # (T, k) * (k,): padded units -> 0
        with mpc.label(op="ffn.simm"):
            out = arith.matmul(h, w_out, select=out_select)                  # (T, d)
            return out + b_out if b_out is not None else out

    def _ffn_oblivious(self, x: AShare, lw: dict, meta: dict, layer: int) -> AShare:
        """The oblivious-indexing baseline (no per-request shuffle; leaks k per layer and step only): a fresh
        shuffle-then-reveal compaction per layer and step (steps and cost: sparse/oblivious.py), then
        steps 4-6 on the k compacted neurons. Cost: ffn_oblivious_step_cost."""
        mpc = x.mpc
        pred = self.predictors[layer]
        llama = "w_gate" in lw
        with mpc.label(op="ffn.predict"):
            z = arith.matmul(arith.matmul(x, pred["w1"]) + pred["b1"], pred["w2"]) + pred["b2"]   # (T, F)
        with mpc.label(op="ffn.reveal"):
            u = compare.b2a_bit(mpc, active_bits(z, self.thresholds[layer], self.predictor_bits,
                                                 self.predictor_range))                       # (F,) 0/1
        with mpc.label(op="ffn.select"):
            count = self.counts(layer, self.state.step, x.shape[0]) if mpc.is_cost else None
            S, w_in, b_in, w_out = oblivious.compact(lw, u, self.correlations, count)
        k, F = S.numel(), z.shape[1]
        self._record(mpc, x, layer, None, None, oblivious=(u, k, F))
        cols = torch.cat([S, S + F]) if llama else S
        return self._sparse_ffn(x, w_in, None if llama else b_in.index_select(0, S), w_out, lw, meta, k,
                                (1, cols), (0, S))

    def _record(self, mpc, x: AShare, layer: int, mask, pi, oblivious=None, revealed: int | None = None) -> None:
        """Count what was revealed; in the simulation also the real-coordinate mask (for the masked
        plaintext reference) and the flips against the float predictor on the decoded input."""
        if oblivious is not None:
            u, k, F = oblivious
            rec = StepRecord(layer, self.state.step, k, F)
        else:
            rec = StepRecord(layer, self.state.step, int(mask.sum()) * self.block, int(mask.numel()) * self.block,
                             revealed_count=revealed)
        if mpc.simulated and not mpc.is_cost:
            if oblivious is not None:
                real = mpc.peek(u) > 0.5
            else:
                real = torch.zeros_like(mask)
                real[pi[mask]] = True                    # permuted position j holds real neuron (block) pi[j]
            rec.real_mask = real.cpu().repeat_interleave(self.block)      # (F,) neurons
            real = real.cpu()                            # (F / b,) the flips check's units
            if not self.plain_predictors:
                self.state.records.append(rec)
                return
            p = self.plain_predictors[layer]             # independent check: the float predictor on the
            h = mpc.peek(x).float()                      # decoded input (no message, simulation only)
            with torch.no_grad():
                scores = p(h)                            # (T, F) real coordinates
            thr = float(p.threshold)
            flipped = (scores > thr).any(0) != real
            rec.flips = int(flipped.sum())
            if rec.flips:
                margin = (scores - thr).abs().min(0).values    # closest token's distance, per unit
                rec.max_flip_margin = float(margin[flipped].max())
        self.state.records.append(rec)


def _predictor_bits(cfg) -> tuple[int, int]:
    """system.predictor_bits (64 | 3..63: the threshold test on a reduced ring, sparse/masks.py) and
    system.predictor_range (log2 of the public bound on |score - threshold|), checked."""
    bits, rng = cfg.predictor_bits, cfg.predictor_range
    if isinstance(bits, bool) or not isinstance(bits, int) or not 3 <= bits <= 64:
        raise CometError(f"system.predictor_bits must be an integer in 3..64 (e.g. 64, 16, 12, 8), got {bits!r}")
    if isinstance(rng, bool) or not isinstance(rng, int) or not 0 <= rng <= 40:
        raise CometError(f"system.predictor_range (log2 of the bound on |score - threshold|) must be an integer "
                         f"in 0..40, got {rng!r}")
    return bits, rng


def _check_public(meta, model_cfg, L: int, heads: bool) -> dict:
    """The owner's public setup, checked (one line naming what does not fit this run)."""
    from comet_core.comm.channel import PeerError

    ok = isinstance(meta, dict) and isinstance(meta.get("ffn"), list) and len(meta["ffn"]) == L
    ok = ok and (not heads or (isinstance(meta.get("head"), list) and len(meta["head"]) == L))
    for p in (meta.get("ffn", []) + meta.get("head", [])) if ok else []:
        ok = ok and isinstance(p, dict) and isinstance(p.get("rank"), int) and 0 < p["rank"] <= 1 << 20 \
            and isinstance(p.get("threshold"), (int, float)) and math.isfinite(p["threshold"])
    if not ok:
        raise PeerError(f"the model owner sent predictor metadata that does not fit {L} layers"
                        f"{' with head predictors' if heads else ''} (ranks and thresholds per layer)")
    return meta


# ---- cost formulas (pinned against the ledger by tests/test_comet.py) ------------------------------------

def setup_cost(mpc, d: int, F: int, r: int, llama: bool, block: int = 1):
    """Step 1 for one layer: one permute of the stacked neuron-indexed tensors, (rows, F), and of the
    predictor's W2 and b2, (r + 1, F / block)."""
    from comet_core.mpc.shuffle import permute_cost

    rows = (2 * d if llama else d) + d + (0 if llama else 1)
    return permute_cost(mpc, rows * F + (r + 1) * (F // block))


def sparse_ffn_cost(mpc, T: int, d: int, k: int, llama: bool):
    """Steps 4-6 (CometSystem._sparse_ffn) on k > 0 selected neurons: SOMM, activation, SIMM."""
    from comet_core.mpc import nonlinear as nl

    w = 2 * k if llama else k
    c = arith.matmul_cost(mpc, T * d, d * w, T * w)
    if llama:
        c = c + nl.silu_cost(mpc, T * k) + arith.mul_cost(mpc, T * k, T * k, T * k)
    else:
        c = c + smallring.activation_relu_cost(mpc, T * k)
    return c + arith.matmul_cost(mpc, T * k, k * d, T * d)


def ffn_step_cost(mpc, T: int, d: int, F: int, r: int, k: int, llama: bool, bits: int = 64, block: int = 1,
                  pad: CountPadding | None = None):
    """Steps 2-6 for one layer and step of T tokens with k revealed-active neurons (a multiple of block:
    the predictor and its threshold test cover F / block units; the test on Z_2^bits: system.predictor_bits;
    with `pad`: k is the padded count, the reveal is count_padding's and the padded units are discarded)."""
    from comet_core.sparse.count_padding import discard_cost, padded_reveal_cost
    from comet_core.sparse.masks import active_bits_cost, reveal_bits_cost

    u = F // block
    c = arith.matmul_cost(mpc, T * d, d * r, T * r) + arith.matmul_cost(mpc, T * r, r * u, T * u)
    if pad is not None and pad.active:
        c = c + padded_reveal_cost(mpc, T, F, pad)
    else:
        c = c + active_bits_cost(mpc, T, u, bits) + reveal_bits_cost(u)
    if k == 0:
        return c
    c = c + sparse_ffn_cost(mpc, T, d, k, llama)
    return c + (discard_cost(mpc, T, k) if pad is not None and pad.active else Cost())


def ffn_oblivious_step_cost(mpc, T: int, d: int, F: int, r: int, k: int, llama: bool, bits: int = 64):
    """The oblivious-indexing baseline's step (CometSystem._ffn_oblivious, sparse/oblivious.py)."""
    from comet_core.comm.ledger import Cost, wire_bytes
    from comet_core.mpc.shuffle import permute_cost
    from comet_core.sparse.masks import active_bits_cost, reveal_bits_cost
    from comet_core.sparse.oblivious import stacked_rows

    c = arith.matmul_cost(mpc, T * d, d * r, T * r) + arith.matmul_cost(mpc, T * r, r * F, T * F)
    c = c + active_bits_cost(mpc, T, F, bits) + Cost(2 * wire_bytes(F, 1), 8 * F + wire_bytes(F, 1), 1)   # b2a
    c = c + permute_cost(mpc, stacked_rows(d, llama) * F) + reveal_bits_cost(F)
    if k == 0:
        return c
    return c + sparse_ffn_cost(mpc, T, d, k, llama)
