"""Fewer, larger operations: what a decoder layer can do in one round instead of several.

Per-operation overhead, not bytes, bounds a decode step (about 0.5 ms per round on 2 cores), so the
systems merge the operations that share a round:
  * Fused weights (`fused_weight`): the projections that multiply the same input are one registered
    weight side by side, [W_q | W_k | W_v] (d, (H + 2 Hkv) hd) and [W_gate | W_up] (d, 2F), so x is
    masked and opened once and the products are truncated together: one Beaver matmul (2 rounds)
    instead of three (6) or two (4). Built once per deployment on first use, from the shared weights
    (no messages): the originals in the layer's dict become views of the fused storage, so the
    weights take no extra memory. Their masks are reused like any registered weight's.
  * RoPE and the 1/sqrt(hd) scaling in one truncation (`rope_scale`): every rotated tensor of a step
    (q, and k; Comet's active / refilled / prefetched k too) is formed at scale 2f with the public
    tables cos / sqrt(hd), sin / sqrt(hd) for q (a local product per party) and truncated together:
    1 round instead of 2 per tensor plus 1 for the scaling.
  * Score scaling by a shift (`score_shift`): with a power-of-four head_dim (OPT, SmolLM2: 64),
    1/sqrt(hd) = 2^-s, so the scores product is truncated by s bits more and read at the engine's
    scale (the integers of scores / 2^s): no separate scaling round.
  * The softmax maximum of short rows (nonlinear.softmax, through pairmax.max_last): every pair of a row
    compared in one tree (comet_core/mpc/pairmax.py: 17 rounds instead of 9 per tournament level), chosen
    from public shapes (a decode step's scores; a prefill's stay with the tournament).
Rounds per decode layer of SmolLM2-135M (Llama, 9 heads of 64, 3 KV heads, 33-40 positions): q/k/v 6 -> 2,
RoPE and scaling 5 -> 1, gate/up 4 -> 2, softmax maximum 54 -> 17 (dense_attention_cost, dense_ffn_cost).
"""

from __future__ import annotations

import torch

from comet_core.mpc import arith, ring
from comet_core.mpc.engine import AShare
from comet_core.models.secure import _rotate_half, rope_tables


LAYER_GROUPS = (("wqkv", ("wq", "wk", "wv")), ("bqkv", ("bq", "bk", "bv")), ("w_gate_up", ("w_gate", "w_up")))


def fused_weight(mpc, lw: dict, name: str, parts: tuple[str, ...]) -> AShare:
    """lw[name]: the weights lw[parts] side by side along their last dim, registered once.

    1. On first use: join the parts (local): a view when they already are adjacent columns of one buffer
       (shared that way: models/weights.share_weights), else a cat; register the result (mask reuse),
       and replace each part in lw by a view of its columns (the originals are released: no extra memory
       afterwards).
    2. Later calls return lw[name]. Biases (1-D) are joined the same way but not registered.
    """
    w = lw.get(name)
    if w is not None:
        return w
    ws = [lw[p] for p in parts]
    joined = adjacent_columns([x.data for x in ws]) if len({x.frac for x in ws}) == 1 else None
    w = AShare(joined, ws[0].mpc, ws[0].frac) if joined is not None else AShare.cat(ws, -1)
    if w.dim() > 1:
        mpc.register_weight(w)
    o = 0
    for p, x in zip(parts, ws):
        n = x.shape[-1]
        lw[p] = w[..., o:o + n]
        o += n
    lw[name] = w
    return w


def adjacent_columns(ts: list) -> torch.Tensor | None:
    """The view torch.cat(ts, -1) would equal when the tensors are consecutive column ranges of one
    buffer (same storage, same strides, last dim contiguous, each starting where the previous ends);
    None otherwise (a Shape, another layout)."""
    if not all(isinstance(t, torch.Tensor) for t in ts) or len({(t.dtype, t.device) for t in ts}) != 1:
        return None
    t0 = ts[0]
    lead, strides = tuple(t0.shape[:-1]), t0.stride()
    if t0.dim() == 0 or strides[-1] != 1 or any(tuple(t.shape[:-1]) != lead or t.stride() != strides
                                                 for t in ts):
        return None
    if len({t.untyped_storage().data_ptr() for t in ts}) != 1:
        return None
    o = t0.storage_offset()
    for t in ts:
        if t.storage_offset() != o:
            return None
        o += t.shape[-1]
    width = sum(t.shape[-1] for t in ts)
    if t0.dim() > 1 and strides[-2] < width:      # rows would overlap: not a slice of a wider buffer
        return None
    return t0.as_strided((*lead, width), strides, t0.storage_offset())


def fused_bias(mpc, lw: dict, name: str, parts: tuple[str, ...]) -> AShare | None:
    """The joined biases of `parts` (None when the layer has none, e.g. Llama)."""
    if any(p not in lw for p in parts):
        return None
    return fused_weight(mpc, lw, name, parts)


def fuse_layer(mpc, lw: dict) -> None:
    """Every fused weight of one layer that the dense operators use (LAYER_GROUPS: q/k/v with biases;
    gate/up), each where the layer has its parts."""
    for name, parts in LAYER_GROUPS:
        if all(p in lw for p in parts):
            fused_weight(mpc, lw, name, parts)


def score_shift(hd: int) -> int | None:
    """s with 1/sqrt(hd) = 2^-s (head_dim a power of four), else None."""
    s = (hd.bit_length() - 1) // 2
    return s if hd == 1 << (2 * s) else None


def rope_scale(items: list[tuple[AShare, torch.Tensor | None, float]], hd: int, theta: float | None) -> list[AShare]:
    """RoPE (positions not None) and a public factor per item, all truncated together.

    items: (t, positions, factor) with t of shape (..., rows, hd) at the engine's scale, positions the
    rows' token positions (None: no rotation, the factor only).
    1. Per item, the public tables at frac_bits: cos * factor and sin * factor (Llama's rotary layout,
       rows by position), or the factor alone.
    2. z = t * cos_f + rotate_half(t) * sin_f at scale 2f (each party on its share: local).
    3. One truncation by f of all the z, flattened and joined (1 round).
    Cost: truncate_cost(sum of numel) (nothing when every item is empty).
    """
    live = [(t, pos, fac) for t, pos, fac in items if t.numel()]
    if not live:
        return [t for t, _, _ in items]
    mpc = live[0][0].mpc
    f = mpc.frac_bits
    frac = live[0][0].frac
    assert all(t.frac == frac for t, _, _ in live), "rope_scale: the items must share one scale"
    zs = []
    with mpc.ledger.protocol("mul_public"):
        for t, pos, fac in live:
            if pos is None:
                tab = torch.tensor(float(fac), dtype=torch.float64)
                arith.check_product(t, tab, t.frac + f, what="x * public")
                zs.append(t.data * ring.encode(tab.to(t.data.device), f))
                continue
            cos, sin = rope_tables(pos, hd, theta)                     # (rows, hd) float64
            cos, sin = cos * fac, sin * fac
            arith.check_product(t, cos.abs() + sin.abs(), t.frac + f, what="RoPE x * cos + rot(x) * sin")
            dev = t.data.device
            ce, se = ring.encode(cos.to(dev), f), ring.encode(sin.to(dev), f)
            zs.append(t.data * ce + _rotate_half(t).data * se)
        flat = AShare(torch.cat([z.reshape(z.shape[0], -1) for z in zs], 1), mpc, frac + f)
        flat = arith.truncate(flat, frac)          # one truncation back to scale f (none for integers)
    outs, o = [], 0
    for t, _, _ in items:
        n = t.numel()
        outs.append(flat[o:o + n].reshape(*t.shape) if n else t)
        o += n
    return outs


def rope_scale_cost(mpc, n: int):
    """One truncation of the n rotated / scaled elements of a step (0 when n = 0)."""
    from comet_core.comm.ledger import Cost

    return arith.truncate_cost(mpc, n) if n else Cost()


def scaled_scores(q: AShare, k_t: AShare, hd: int, shift: int | None) -> AShare:
    """q @ k^T (/ sqrt(hd) when `shift` is set: truncated by f + shift and read at scale f)."""
    mpc = q.mpc
    if shift is None:
        return arith.matmul(q, k_t)
    s = arith.matmul(q, k_t, out_frac=mpc.frac_bits - shift)
    return AShare(s.data, mpc, mpc.frac_bits)


