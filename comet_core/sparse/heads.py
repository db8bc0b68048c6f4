"""Comet part 2: head-sparse attention with a KV cache that knows which entries exist, refilled on demand.

Unit of sparsity: the **KV group** (a KV head and the G = H / H_kv query heads that share it; G = 1 for
multi-head attention). A group is active at a step iff the head predictor marks any of its query heads
active for any token of the step; all G query heads of an active group are computed. So with
grouped-query attention the servers learn, per layer and step, the number of active groups and (across
the request's steps) which permuted groups are active: nothing per query head and nothing about which
real groups (the permutation of groups is per request, like the FFN's).

Per request and layer the groups are permuted once (with the FFN's tensors' permutation protocol):
W_q / b_q columns and W_o rows by blocks of G * hd, W_k, W_v, b_k, b_v by blocks of hd, and the head
predictor's W2 columns and b2 by blocks of G. The KV cache then lives in permuted group coordinates.

KV cache with validity (`HeadCache`): per layer the K and V of every (group, position) that was
computed, a public validity bitmap (group, position), and the shared attention inputs h_t of every
position (what a refill needs). When a group is active at step t and some of its past entries are
missing, they are refilled:
  * merged (default): every missing position of every active group joins this step's K/V product:
    the rows [x_t; h_missing] times the active groups' [W_q | W_k | W_v] columns in ONE Beaver matmul
    (each weight slice masked once), whose products are truncated together (q only for the current
    rows): the same 2 rounds as the step without refills;
  * naive: one extra matmul per active group with misses (its missing rows times its own [W_k | W_v]),
    each with its own rounds and weight masks.
Prefetch (`kv_prefetch`): computes K/V of inactive groups at the current step so that a later
activation needs no refill. `cost_benefit` prefetches group g iff p_g * C_refill > C_now, where
p_g = P(reactivated within the remaining steps) from the sparsity profile (public, never the
predictor's secret margin), C_now = the bytes that adding g's K/V columns to this step costs and
C_refill = the bytes a later merged refill of this position costs. `always` / `never` force it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from comet_core.mpc.engine import AShare


@dataclass
class HeadCache:
    """One layer's K/V in permuted group coordinates, with validity and the stored attention inputs."""

    groups: int
    k: AShare | None = None          # (groups, S, hd)
    v: AShare | None = None
    valid: torch.Tensor | None = None  # (groups, S) bool, public
    inputs: AShare | None = None     # (S, d): the attention inputs h_t (after the norm)
    stats: dict = field(default_factory=lambda: {"hits": 0, "misses": 0, "prefetched": 0})

    @property
    def length(self) -> int:
        return 0 if self.valid is None else self.valid.shape[1]

    def grow(self, mpc, x: AShare, hd: int) -> None:
        """Append T positions: their inputs are stored, their K/V start invalid (zero shares)."""
        T = x.shape[0]
        zeros = torch.zeros((self.groups, T, hd), dtype=torch.int64, device=mpc.device)
        z = AShare(mpc.public_share(zeros), mpc, mpc.frac_bits)
        vz = torch.zeros((self.groups, T), dtype=torch.bool)
        if self.k is None:
            self.k, self.v, self.valid, self.inputs = z, z._wrap(z.data.clone()), vz, x
        else:
            self.k, self.v = AShare.cat([self.k, z], 1), AShare.cat([self.v, z], 1)
            self.valid = torch.cat([self.valid, vz], 1)
            self.inputs = AShare.cat([self.inputs, x], 0)

    def fill(self, g: int, positions: torch.Tensor, k: AShare, v: AShare) -> None:
        """Write K/V rows (len(positions), hd) of group g (only into entries that are not valid yet)."""
        if positions.numel() == 0:
            return
        if not self.k.data.is_meta:
            self.k.data[:, g, positions] = k.data.to(self.k.data.device)
            self.v.data[:, g, positions] = v.data.to(self.v.data.device)
        self.valid[g, positions] = True
