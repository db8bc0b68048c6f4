"""Comet part 2 inside the system: head predictor in MPC, head-group permutation, head-sparse attention
with merged or naive KV refill and prefetch (the protocol and its leakage: comet_core/sparse/heads.py).

A mixin of CometSystem; `heads: false` in conf/system/comet.yaml runs the dense attention instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from comet_core.comm.ledger import Cost
from comet_core.mpc import arith, nonlinear as nl
from comet_core.mpc.engine import AShare
from comet_core.mpc.shuffle import Permutation, permute
from comet_core.sparse.masks import active_bits, reveal_bits
from comet_core.systems import fused


@dataclass
class HeadRequest:
    """One layer's attention weights in the request's permuted group coordinates (group-major)."""

    perm: Permutation
    wqkv: AShare          # (d, Hkv*G*hd + 2*Hkv*hd): [W_q | W_k | W_v], groups permuted (registered)
    wq: AShare            # (Hkv, d, G*hd)
    wk: AShare            # (Hkv, d, hd)
    wv: AShare            # (Hkv, d, hd)
    wo: AShare            # (H*hd, d): rows by permuted group blocks of G*hd (registered)
    bq: AShare | None     # (Hkv, G*hd)
    bk: AShare | None     # (Hkv, hd)
    bv: AShare | None
    p2: AShare            # (r, H) head predictor's second layer, columns in permuted group order
    pb2: AShare           # (H,)


class HeadSparsity:
    """Mixed into CometSystem: everything that concerns attention heads."""

    # -- deployment ----------------------------------------------------------------------------------
    def _prepare_heads(self, mpc, model_cfg, L: int, ps) -> None:
        from comet_core.sparse.predictors import head_mask_model, shared_head_predictor_shapes

        public = getattr(self, "_public", None)   # a tcp party: the owner's public ranks and thresholds
        if mpc.is_cost:
            plain = shared_head_predictor_shapes(model_cfg, self.cfg, L)
            self.head_thresholds = [0.0] * L
            self.head_masks = head_mask_model(model_cfg, self.cfg, L)
            self.head_reactivation = self.head_masks.reactivation
        elif public is not None:   # data-free shapes; the shares come from the owner process
            from comet_core.sparse.predictors import reactivation_model
            from comet_core.sparse.predictors import public_rank_shapes

            plain = public_rank_shapes(public["head"], int(model_cfg.hidden_size), int(model_cfg.num_heads))
            self.head_thresholds = [float(p["threshold"]) for p in public["head"]]
            self.head_reactivation = reactivation_model(model_cfg, self.cfg)
        else:
            self.plain_head_predictors = ps.head[:L]
            plain = [dict(w1=p.w1.weight.detach().t().double(), b1=p.w1.bias.detach().double(),
                          w2=p.w2.weight.detach().t().double(), b2=p.w2.bias.detach().double())
                     for p in ps.head[:L]]
            self.head_thresholds = [float(p.threshold) for p in ps.head[:L]]
            from comet_core.sparse.predictors import reactivation_model
            self.head_reactivation = reactivation_model(model_cfg, self.cfg)
        with mpc.label(stage="setup", op="attn.predictor_weights"):
            self.head_predictors = [{k: mpc.register_weight(mpc.share(v, owner="model_owner", phase="setup"))
                                     for k, v in layer.items()} for layer in plain]

    # -- per request: permute the head groups ----------------------------------------------------------
    def _permute_heads(self, mpc, lw: dict, meta: dict, layer: int) -> HeadRequest:
        H, Hkv, hd = meta["num_heads"], meta["num_kv_heads"], meta["head_dim"]
        G = H // Hkv
        pred = self.head_predictors[layer]
        d = lw["wq"].shape[0]
        r = pred["w2"].shape[0]
        # every tensor as (Hkv, m): the group axis first
        parts = {
            "wq": lw["wq"].reshape(d, Hkv, G * hd).permute(1, 0, 2),
            "wk": lw["wk"].reshape(d, Hkv, hd).permute(1, 0, 2),
            "wv": lw["wv"].reshape(d, Hkv, hd).permute(1, 0, 2),
            "wo": lw["wo"].reshape(Hkv, G * hd, d),
            "p2": pred["w2"].reshape(r, Hkv, G).permute(1, 0, 2),
            "pb2": pred["b2"].reshape(Hkv, G),
        }
        for k in ("bq", "bk", "bv"):
            if k in lw:
                parts[k] = lw[k].reshape(Hkv, -1)
        shapes = {k: tuple(v.shape) for k, v in parts.items()}
        flat = AShare.cat([v.reshape(Hkv, -1) for v in parts.values()], 1)
        perm = Permutation(mpc, Hkv, source=self.correlations)
        out = permute(flat, 0, perm)                                     # [M]: (Hkv, m) permuted groups
        o, got = 0, {}
        for k, shp in shapes.items():
            m = math.prod(shp[1:])
            got[k] = out[:, o:o + m].reshape(*shp)
            o += m
        cat2d = lambda t, m: t.permute(1, 0, 2).reshape(d, Hkv * m)  # noqa: E731  (Hkv, d, m) -> (d, Hkv m)
        once = not getattr(self, "per_request_weights", True)   # permuted once per deployment (system.permutation)
        wqkv = mpc.register_weight(AShare.cat([cat2d(got["wq"], G * hd), cat2d(got["wk"], hd),
                                               cat2d(got["wv"], hd)], 1), per_request=not once)
        return HeadRequest(perm=perm, wqkv=wqkv, wq=got["wq"], wk=got["wk"], wv=got["wv"],
                           wo=mpc.register_weight(got["wo"].reshape(H * hd, d), per_request=not once),
                           bq=got.get("bq"), bk=got.get("bk"), bv=got.get("bv"),
                           p2=got["p2"].permute(1, 0, 2).reshape(r, H), pb2=got["pb2"].reshape(H))

    # -- the attention operator ------------------------------------------------------------------------
    def attention(self, dec, x: AShare, lw: dict, layer: int, cache, start: int) -> AShare:
        if not self.heads:
            return super().attention(dec, x, lw, layer, cache, start)
        mpc, meta = x.mpc, dec.meta
        T, d = x.shape
        H, Hkv, hd = meta["num_heads"], meta["num_kv_heads"], meta["head_dim"]
        G = H // Hkv
        req = self.state.heads[layer]
        hc = self.state.kv[layer]
        pred = self.head_predictors[layer]
        # 1. which groups: predictor in MPC, union over tokens and the G heads of a group, reveal
        with mpc.label(op="attn.predict"):
            z = arith.matmul(arith.matmul(x, pred["w1"]) + pred["b1"], req.p2) + req.pb2    # (T, H)
        with mpc.label(op="attn.reveal"):
            zr = z.reshape(T, Hkv, G).permute(0, 2, 1).reshape(T * G, Hkv)
            bits = active_bits(zr, self.head_thresholds[layer])
            want = self.head_masks(layer, self.state.step, T) if mpc.is_cost else None
            mask = reveal_bits(mpc, bits, 0)
            if want is not None:
                mask = want
        A = torch.nonzero(mask).flatten()
        self._record_heads(mpc, x, layer, mask, req, G)
        # 2. cache bookkeeping: new positions, misses of the active groups, prefetch decision
        past = hc.length
        hc.grow(mpc, x, hd)
        cur = torch.arange(past, past + T)
        miss = {int(g): torch.nonzero(~hc.valid[g, :past]).flatten() for g in A}
        hc.stats["hits"] += int(hc.valid[A, :past].sum()) if past else 0
        hc.stats["misses"] += sum(int(m.numel()) for m in miss.values())
        B = self._prefetch(mpc, mask, layer, T, d, hd)
        hc.stats["prefetched"] += int(B.numel()) * T
        # 3. q (active groups, current rows), k / v (active groups: current + refilled rows; prefetched
        #    groups: current rows) in one product, truncated together
        U = torch.unique(torch.cat([m for m in miss.values()] or [torch.zeros(0, dtype=torch.long)]))
        merged = self.kv_refill == "merged"
        U = U if merged else U[:0]                     # naive: refills run separately, below
        q, kA, vA, kB, vB = self._qkv(mpc, x, hc, req, A, B, U, G, hd, lw)
        rows_pos = torch.cat([cur, U])
        family, theta = dec.family, meta.get("rope_theta")
        shift = fused.score_shift(hd)              # 1/sqrt(hd) as a shift of the scores' truncation, or
        fac = 1.0 if shift is not None else 1.0 / math.sqrt(hd)    # a factor of q's tables (systems/fused.py)
        with mpc.label(op="attn.rope" if family == "llama" else "attn.scale"):
            if family == "llama":              # q, k of the active, refilled and prefetched rows: one truncation
                q, kA, kB = fused.rope_scale([(q, cur, fac), (kA, rows_pos, 1.0), (kB, cur, 1.0)], hd, theta)
            elif shift is None:
                (q,) = fused.rope_scale([(q, None, fac)], hd, None)
        # 4. fill the cache: only entries that did not exist
        pos_index = {int(p): i for i, p in enumerate(rows_pos)}
        if mpc.is_cost:          # no values: only the validity bitmap changes (same decisions as exact)
            for g in A.tolist():
                hc.valid[g, torch.cat([cur, miss[g]]) if merged else cur] = True
            hc.valid[B[:, None], cur[None, :]] = True
            A_fill = []
        else:
            A_fill = A.tolist()
        for i, g in enumerate(A_fill):
            need = torch.cat([cur, miss[g]]) if merged else cur
            idx = torch.tensor([pos_index[int(p)] for p in need], dtype=torch.long)
            hc.fill(g, need, kA[i].index_select(0, idx), vA[i].index_select(0, idx))
        for j, g in enumerate(B.tolist() if not mpc.is_cost else []):
            hc.fill(g, cur, kB[j], vB[j])
        if not merged:
            self._naive_refill(mpc, hc, req, A, miss, hd, family, theta)
        # 5. attention of the active groups over all their (now complete) positions
        S = hc.length
        if A.numel() == 0:
            zeros = torch.zeros((T, lw["wo"].shape[1]), dtype=torch.int64, device=mpc.device)
            out = AShare(mpc.public_share(zeros), mpc, mpc.frac_bits)
            return out + lw["bo"] if "bo" in lw else out
        a = A.numel()
        k_all, v_all = hc.k.index_select(0, A), hc.v.index_select(0, A)          # (a, S, hd)
        qg = q.reshape(a, G * T, hd)                                               # rows g*T + t
        with mpc.label(op="attn.scores"):
            scores = fused.scaled_scores(qg, k_all.transpose(1, 2), hd, shift)    # (a, G*T, S)
        mask_ts = None
        if T > 1:
            pos_q = cur[:, None]
            mask_ts = (torch.arange(S)[None, :] <= pos_q).to(torch.int64).repeat(G, 1)   # (G*T, S)
        probs = self.softmax(scores, mask_ts)
        with mpc.label(op="attn.context"):
            ctx = arith.matmul(probs, v_all)                                      # (a, G*T, hd)
        ctx = ctx.reshape(a, G, T, hd).permute(2, 0, 1, 3).reshape(T, a * G * hd)
        rows_o = (A[:, None] * (G * hd) + torch.arange(G * hd)[None, :]).reshape(-1)
        with mpc.label(op="attn.out"):
            out = arith.matmul(ctx, req.wo, select=(0, rows_o))                   # SIMM by head block
            return out + lw["bo"] if "bo" in lw else out

    def _qkv(self, mpc, x, hc, req, A, B, U, G, hd, lw):
        """One Beaver matmul [x; h_U] @ [Wq_A | Wk_(A,B) | Wv_(A,B)], truncated together (steps 3)."""
        T, d = x.shape
        a, b = A.numel(), B.numel()
        K = torch.cat([A, B])
        rows = AShare.cat([x, hc.inputs.index_select(0, U)], 0) if U.numel() else x     # (R, d)
        R = rows.shape[0]
        Hkv = req.wq.shape[0]
        block = lambda base, idx, m: (base + idx[:, None] * m + torch.arange(m)[None, :]).reshape(-1)  # noqa: E731
        cols = torch.cat([block(0, A, G * hd), block(Hkv * G * hd, K, hd), block(Hkv * (G + 1) * hd, K, hd)])
        nq, nk = a * G * hd, (a + b) * hd
        with mpc.label(op="attn.qkv"):
            if cols.numel() == 0:
                e = AShare(mpc.public_share(torch.zeros((0,), dtype=torch.int64, device=mpc.device)), mpc, mpc.frac_bits)
                return (e.reshape(0, T, hd),) + (e.reshape(0, R, hd),) * 2 + (e.reshape(0, T, hd),) * 2
            raw = arith.matmul(rows, req.wqkv, out_frac=rows.frac + req.wqkv.frac, select=(1, cols))   # no truncation yet
            pieces = [raw[:T, :nq],                                               # q: current rows
                      raw[:, nq:nq + a * hd], raw[:T, nq + a * hd:nq + nk],       # k: A all rows, B current
                      raw[:, nq + nk:nq + nk + a * hd], raw[:T, nq + nk + a * hd:]]
            flat = AShare.cat([p.reshape(-1) for p in pieces], 0)
            flat = arith.truncate(flat, raw.frac - mpc.frac_bits)
            outs, o = [], 0
            for p in pieces:
                n = p.numel()
                outs.append(flat[o:o + n].reshape(*p.shape))
                o += n
        q, kA, kB, vA, vB = outs
        if req.bq is not None:
            q = q + req.bq.index_select(0, A).reshape(-1)
            kA = kA + req.bk.index_select(0, A).reshape(-1)
            vA = vA + req.bv.index_select(0, A).reshape(-1)
            kB = kB + req.bk.index_select(0, B).reshape(-1)
            vB = vB + req.bv.index_select(0, B).reshape(-1)
        # group-major layouts: q (a*G, T, hd); k/v (groups, rows, hd)
        q = q.reshape(T, a * G, hd).transpose(0, 1)
        kA, vA = (t.reshape(R, a, hd).transpose(0, 1) for t in (kA, vA))
        kB, vB = (t.reshape(T, b, hd).transpose(0, 1) for t in (kB, vB))
        return q, kA, vA, kB, vB

    def _naive_refill(self, mpc, hc, req, A, miss, hd: int, family: str, theta) -> None:
        """One extra matmul per active group with misses: its missing rows times its own [W_k | W_v]
        (its own round and truncation, its weight slice masked again)."""
        for g in A.tolist():
            m = miss[g]
            if not m.numel():
                continue
            with mpc.label(op="attn.refill"):
                w = AShare.cat([req.wk[g], req.wv[g]], 1)                         # (d, 2hd)
                kv = arith.matmul(hc.inputs.index_select(0, m), w)                # (|m|, 2hd)
                if req.bk is not None:
                    kv = kv + AShare.cat([req.bk[g], req.bv[g]], 0)
                k, v = kv[:, :hd], kv[:, hd:]
                if family == "llama":
                    k = _rope(k.unsqueeze(0), m, hd, theta)[0]
            hc.fill(g, m, k, v)

    def _prefetch(self, mpc, mask: torch.Tensor, layer: int, T: int, d: int, hd: int) -> torch.Tensor:
        """Inactive groups whose K/V of this step are computed now (public inputs only)."""
        inactive = torch.nonzero(~mask).flatten()
        if self.kv_prefetch == "never" or inactive.numel() == 0:
            return inactive[:0]
        if self.kv_prefetch == "always":
            return inactive
        remaining = max(0, self.state.total_steps - self.state.step - 1)
        if remaining == 0:
            return inactive[:0]
        p = self.head_reactivation(layer, remaining)
        now, later = prefetch_costs(mpc, T, d, hd)
        return inactive if p * later.online_bytes > now.online_bytes else inactive[:0]

    def _record_heads(self, mpc, x, layer, mask, req, G) -> None:
        from comet_core.systems.step_record import StepRecord

        rec = StepRecord(layer, self.state.step, int(mask.sum()), int(mask.numel()), kind="head",
                         revealed="0b" + "".join("1" if b else "0" for b in mask.tolist()))
        if mpc.simulated and not mpc.is_cost:
            pi = req.perm.composed().cpu()
            real = torch.zeros_like(mask)
            real[pi[mask]] = True
            rec.real_mask = real.cpu()
            p = self.plain_head_predictors[layer] if self.plain_head_predictors else None
            if p is None:   # no float predictor to compare with (hand-built systems in tests)
                self.state.records.append(rec)
                return
            with torch.no_grad():
                scores = p(mpc.peek(x).float())                                   # (T, H) real heads
            thr = float(p.threshold)
            fgroup = (scores > thr).reshape(scores.shape[0], -1, G).any(-1).any(0)
            flipped = fgroup != rec.real_mask
            rec.flips = int(flipped.sum())
            if rec.flips:
                margin = (scores - thr).abs().reshape(scores.shape[0], -1, G).amin(-1).amin(0)
                rec.max_flip_margin = float(margin[flipped].max())
        self.state.records.append(rec)


def _rope(t: AShare, positions: torch.Tensor, hd: int, theta: float) -> AShare:
    """RoPE on (groups, rows, hd) with each row's own position (one truncation)."""
    return fused.rope_scale([(t, positions, 1.0)], hd, theta)[0]


def prefetch_costs(mpc, T: int, d: int, hd: int) -> tuple[Cost, Cost]:
    """(cost now, cost later) of one group's K/V for T positions, for the prefetch rule.

    now: its K/V columns join this step's product: the weight slice (d, 2hd) is masked and opened, and
    T x 2hd products are truncated. later: a merged refill of those T positions at the step the group
    becomes active: the T stored input rows (d each) are opened and T x 2hd products truncated (its weight
    slice is opened anyway at that step).
    """
    W = 8
    trunc = arith.truncate_cost(mpc, T * 2 * hd)
    now = Cost(2 * W * d * 2 * hd, W * T * 2 * hd, 0) + trunc
    later = Cost(2 * W * T * d, W * T * 2 * hd, 0) + trunc
    return now, later


def attention_step_cost(mpc, T: int, d: int, H: int, Hkv: int, hd: int, r: int, a: int, b: int, U: int,
                        S: int, llama: bool, naive_misses: tuple[int, ...] = ()):
    """One layer's head-sparse attention step (HeadSparsity.attention): T new tokens, a active and b
    prefetched groups, U refilled rows merged into the product (naive: the per-group miss counts), S
    positions after the step. Pinned against the ledger by tests/test_comet.py."""
    from comet_core.sparse.masks import active_bits_cost, reveal_bits_cost

    W, G = 8, H // Hkv
    c = arith.matmul_cost(mpc, T * d, d * r, T * r) + arith.matmul_cost(mpc, T * r, r * H, T * H)
    c = c + active_bits_cost(mpc, T * G, Hkv) + reveal_bits_cost(Hkv)
    R = T + U
    ncols = a * G * hd + 2 * (a + b) * hd
    if ncols:
        n_out = T * a * G * hd + 2 * (R * a * hd + T * b * hd)
        c = c + Cost(2 * W * (R * d + d * ncols), W * R * ncols, 1) + arith.truncate_cost(mpc, n_out)
    nq, nka, nkb = a * G * T * hd, a * R * hd, b * T * hd
    if llama:                          # RoPE of q, k (and q / sqrt(hd)): one truncation (fused.rope_scale)
        c = c + fused.rope_scale_cost(mpc, nq + nka + nkb)
    elif fused.score_shift(hd) is None:                                 # q / sqrt(hd)
        c = c + fused.rope_scale_cost(mpc, nq)
    for m in naive_misses:
        if m:
            c = c + arith.matmul_cost(mpc, m * d, d * 2 * hd, m * 2 * hd)
            if llama:
                c = c + fused.rope_scale_cost(mpc, m * hd)
    if a == 0:
        return c
    rows = a * G * T
    c = c + arith.matmul_cost(mpc, rows * hd, a * S * hd, rows * S)
    c = c + nl.softmax_cost(mpc, rows, S)
    c = c + arith.matmul_cost(mpc, rows * S, a * S * hd, rows * hd)
    return c + arith.matmul_cost(mpc, T * a * G * hd, a * G * hd * d, T * d)
