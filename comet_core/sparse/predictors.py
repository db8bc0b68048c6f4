"""The predictors Comet runs inside MPC, and the sparsity counts cost mode uses instead of revealed masks.

Exact mode loads the trained checkpoint of the model (`comet train-predictor`). Cost mode has no values:
per layer and step it takes the number of predicted-active neurons from a sparsity profile
(conf/system/comet.yaml `profile`):
  * `measured`: a model's own `profile.json` (comet train-predictor writes results/predictor/<model>/);
  * `derived` (the paper's shapes, which have no trained predictors here): a labelled derivation,
    stated in the config with its sources: true FFN density x (recall / precision of our predictors on
    the ReLU model) per token, and the union over a prefill of T tokens from our measured growth curve
    (mean over layers of union_density(T) / density(1) of the reference profile);
  * `mask_trace`: the counts an exact run revealed (its sparsity.csv), so that exact and cost ledgers
    can be compared for the same masks.
The predictor's shape (rank r) in cost mode: `predictor_rank` when set (it wins over a checkpoint's rank,
and then the counts follow the rank too, `rank_density_factor`), else the checkpoint's rank, else d / 4.
"""

from __future__ import annotations

import json

from pathlib import Path

import torch

from comet_core.errors import CometError
from comet_core.models.cache import REPO_ROOT, resolve_in_cache
from comet_core.mpc.shape import Shape


def predictor_preset(model_cfg) -> str:
    """The conf/predictor preset a model's predictors are trained with (model key `predictor_preset`)."""
    return str(model_cfg.predictor_preset or "default")


def checkpoint_path(model_cfg, system_cfg) -> Path:
    rel = str(system_cfg.predictor_checkpoint)
    return resolve_in_cache(rel.replace("{model}", str(model_cfg.name)).replace("{preset}", predictor_preset(model_cfg)))


def load_for_system(model_cfg, system_cfg):
    """The model's trained predictors (refused with one line if missing or made for another model)."""
    from comet_core.predictor.checkpoint import load_predictors

    path = checkpoint_path(model_cfg, system_cfg)
    if not path.is_file():
        raise CometError(missing_predictors_message(model_cfg, system_cfg))
    return load_predictors(path, model_cfg)


def missing_predictors_message(model_cfg, system_cfg) -> str:
    return (f"system=comet needs trained predictors for model '{model_cfg.name}' "
            f"({checkpoint_path(model_cfg, system_cfg)} not found); create them with: "
            f"comet train-predictor model={model_cfg.name}"
            f"{'' if predictor_preset(model_cfg) == 'default' else ' predictor=' + predictor_preset(model_cfg)}  (or price the run without them: mode=cost)")


def _predictor_shapes(model_cfg, system_cfg, n_layers: int, kind: str, rank_key: str, rank: int,
                      units: int) -> list[dict]:
    """Data-free weights of the `kind` (ffn | head) predictors for cost mode: the checkpoint's rank if one
    exists (so cost and exact ledgers agree), else `rank`; system_cfg[rank_key], when set, wins (a what-if of
    another rank: the counts follow it through the measured rank curve, `rank_density_factor`)."""
    d = int(model_cfg.hidden_size)
    r = getattr(system_cfg, rank_key)
    explicit = r is not None
    r = int(r) if explicit else rank
    path = checkpoint_path(model_cfg, system_cfg)
    if path.is_file() and not explicit:
        from comet_core.predictor.checkpoint import checkpoint_rank

        r = checkpoint_rank(path, model_cfg, kind)
    f = lambda *s: Shape(s, torch.float32)  # noqa: E731
    return [dict(w1=f(d, r), b1=f(r), w2=f(r, units), b2=f(units)) for _ in range(n_layers)]


def public_rank_shapes(rows: list[dict], d: int, units: int) -> list[dict]:
    """Data-free predictor weights from the owner's public ranks: W1 (d, r), b1 (r,), W2 (r, units), b2."""
    f = lambda *s: Shape(s, torch.float32)  # noqa: E731
    return [dict(w1=f(d, int(p["rank"])), b1=f(int(p["rank"])), w2=f(int(p["rank"]), units), b2=f(units)) for p in rows]


def shared_predictor_shapes(model_cfg, system_cfg, n_layers: int) -> list[dict]:
    """FFN predictors: default rank d / 4 (the ratio of our trained predictors, rank 64 at d = 256); one
    output per block of `system.block` neurons."""
    return _predictor_shapes(model_cfg, system_cfg, n_layers, "ffn", "predictor_rank",
                             int(model_cfg.hidden_size) // 4, int(model_cfg.ffn_dim) // int(system_cfg.block or 1))


def _curve_rows(system_cfg, bits: int = 64, block: int = 1):
    """The measured rank curve (`derived.rank_curve`: a cost_accuracy.csv): the cats rows of one model at
    threshold-test width `bits` and block size `block`, sorted by rank, and that model's hidden size."""
    import pandas as pd
    import yaml

    der = system_cfg.derived
    rel = der.rank_curve if der is not None else None
    if not rel:
        raise CometError("system.predictor_rank needs system.derived.rank_curve (a cost_accuracy.csv of "
                         "comet predictor-tradeoff) to price the predicted density at that rank")
    path = Path(str(rel)) if Path(str(rel)).is_absolute() else REPO_ROOT / str(rel)
    if not path.is_file():
        raise CometError(f"system.derived.rank_curve {path} does not exist; make it with comet predictor-tradeoff "
                         "model=shakespeare-opt grid.ranks=[8,16,32,64]")
    df = pd.read_csv(path)
    df = df[(df.labels == "cats") & (df.bits == bits) & (df.block == block)].sort_values("rank")
    if len(df) < 1:
        raise CometError(f"system.derived.rank_curve {path} has no {bits}-bit block-{block} rows (system.predictor_bits"
                         f"={bits}, system.block={block}); measure them with comet predictor-tradeoff "
                         f"grid.blocks=[{block}] grid.bits=[{bits}]")
    model = str(df.model.iloc[0])
    d = int(yaml.safe_load((REPO_ROOT / "conf" / "model" / f"{model}.yaml").read_text())["hidden_size"])
    return df, d


def _test_of(system_cfg) -> tuple[int, int]:
    """(predictor_bits, block) of the system: which rows of the curve price it."""
    return int(getattr(system_cfg, "predictor_bits", 64) or 64), int(getattr(system_cfg, "block", 1) or 1)


def rank_density_factor(system_cfg, rank: int, d: int, bits: int | None = None, block: int | None = None) -> float:
    """Predicted / true FFN density (= recall / precision) of a rank-`rank` predictor at hidden size d, from
    the measured rank curve at the same ratio rank / d, linear in log2(rank / d) between measured ranks
    (clamped at the ends: no extrapolation), on the curve's rows of the threshold test's `bits` and the
    `block` size (default: the system's predictor_bits and block)."""
    import numpy as np

    sb, sk = _test_of(system_cfg)
    df, d_ref = _curve_rows(system_cfg, sb if bits is None else bits, sk if block is None else block)
    x = np.log2(df["rank"].to_numpy(dtype=float) / d_ref)
    y = (1 - df.predicted_sparsity.to_numpy(dtype=float)) / (1 - df.true_sparsity.to_numpy(dtype=float))
    return float(np.interp(np.log2(rank / d), x, y))


def _profile_path(model_cfg, system_cfg) -> Path:
    p = system_cfg.profile_path or f"results/predictor/{model_cfg.name}/profile.json"
    p = Path(str(p).replace("{model}", str(model_cfg.name)))
    return p if p.is_absolute() else REPO_ROOT / p


def cost_counts(model_cfg, system_cfg, n_layers: int):
    """counts(layer, step, n_tokens) -> number of neurons revealed active, and how it was chosen."""
    from comet_core.predictor.profile import SparsityProfile

    F = int(model_cfg.ffn_dim)
    forced = system_cfg.ffn_sparsity
    if forced is not None:
        if not 0.0 <= float(forced) <= 1.0:
            raise CometError(f"system.ffn_sparsity must be in [0, 1], got {forced}")
        return lambda layer, step, n: int(round(F * (1.0 - float(forced))))
    trace = system_cfg.mask_trace
    if trace:
        import pandas as pd

        df = pd.read_csv(trace)
        df = df[df.kind == "ffn"]
        table = {(int(r.layer), int(r.step)): int(r.active) for r in df.itertuples()}

        def from_trace(layer: int, step: int, n: int) -> int:
            if (layer, step) not in table:
                raise CometError(f"mask_trace {trace} has no FFN count for layer {layer}, step {step}; "
                                 f"rerun the exact run with at least as many layers and tokens")
            return table[(layer, step)]
        return from_trace
    kind = str(system_cfg.profile)
    path = _profile_path(model_cfg, system_cfg)
    d = int(model_cfg.hidden_size)
    rank = system_cfg.predictor_rank
    if kind in ("auto", "measured") and path.is_file():
        prof = SparsityProfile(json.loads(path.read_text()))
        if prof.num_layers < n_layers:
            raise CometError(f"sparsity profile {path} has {prof.num_layers} layers, the run needs {n_layers}")
        scale = 1.0   # another rank than the profile's predictors: the measured curve's density ratio
        if rank is not None:
            ckpt = checkpoint_path(model_cfg, system_cfg)
            if ckpt.is_file():
                from comet_core.predictor.checkpoint import checkpoint_rank

                r0 = checkpoint_rank(ckpt, model_cfg, "ffn")
            else:
                r0 = d // 4
            # the profile was measured with the checkpoint's float test on single neurons (64 bits, block 1)
            scale = rank_density_factor(system_cfg, int(rank), d) / rank_density_factor(system_cfg, r0, d, 64, 1)
        return lambda layer, step, n: int(round(F * min(1.0, scale * (prof.ffn_density(layer) if n == 1
                                                                       else prof.ffn_union_density(layer, n)))))
    if kind == "measured":
        raise CometError(f"system.profile=measured but {path} does not exist; make it with "
                         f"comet train-predictor model={model_cfg.name}, or use system.profile=derived")
    der = system_cfg.derived
    if der is None:
        raise CometError("system.profile=derived needs system.derived (true density, recall, precision)")
    ref = SparsityProfile(json.loads((REPO_ROOT / str(der.union_growth_profile)).read_text()))
    per_token = float(der.ffn_true_density) * (float(der.recall) / float(der.precision) if rank is None
                                                else rank_density_factor(system_cfg, int(rank), d))

    def growth(n: int) -> float:
        vals = [ref.ffn_union_density(l, n) / max(ref.ffn_density(l), 1e-9) for l in range(ref.num_layers)]
        return sum(vals) / len(vals)

    def derived(layer: int, step: int, n: int) -> int:
        dens = min(1.0, per_token * (1.0 if n == 1 else growth(n)))
        return int(round(F * dens))
    return derived


def density_note(model_cfg, system_cfg) -> str:
    """One line saying where cost mode's counts came from (written into sparsity.csv's source column)."""
    if system_cfg.ffn_sparsity is not None:
        return f"forced:ffn_sparsity={system_cfg.ffn_sparsity}"
    if system_cfg.mask_trace:
        return f"mask_trace:{system_cfg.mask_trace}"
    path = _profile_path(model_cfg, system_cfg)
    rank = system_cfg.predictor_rank
    bits, block = _test_of(system_cfg)
    curve = f" x rank_curve(r={rank}, bits={bits}, block={block})" if rank is not None else ""
    if str(system_cfg.profile) in ("auto", "measured") and path.is_file():
        return f"measured:{path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}{curve}"
    return f"derived:conf/system/comet.yaml{curve}"





# ---- attention heads (part 2) ---------------------------------------------------------------------

def shared_head_predictor_shapes(model_cfg, system_cfg, n_layers: int) -> list[dict]:
    """Head predictors: default rank d / 8 (the ratio of our trained head predictors, rank 32 at d = 256)."""
    return _predictor_shapes(model_cfg, system_cfg, n_layers, "head", "head_predictor_rank",
                             max(1, int(model_cfg.hidden_size) // 8), int(model_cfg.num_heads))


def _head_profile(model_cfg, system_cfg):
    """(profile, measured?) for head statistics: the model's own if it exists, else the reference one."""
    from comet_core.predictor.profile import SparsityProfile

    path = _profile_path(model_cfg, system_cfg)
    if str(system_cfg.profile) in ("auto", "measured") and path.is_file():
        return SparsityProfile(json.loads(path.read_text())), True
    der = system_cfg.derived
    ref = der.union_growth_profile if der is not None else None
    if ref and (REPO_ROOT / str(ref)).is_file():
        return SparsityProfile(json.loads((REPO_ROOT / str(ref)).read_text())), False
    return None, False


def reactivation_model(model_cfg, system_cfg):
    """p(layer, horizon): P(a head skipped now is needed within `horizon` steps), from the profile (the
    model's own, else the reference model's mean over layers; 1.0 without any profile). Public input."""
    prof, measured = _head_profile(model_cfg, system_cfg)
    if prof is None:
        return lambda layer, horizon: 1.0
    if measured:
        return lambda layer, horizon: prof.head_reactivation(min(layer, prof.num_layers - 1), horizon)
    return lambda layer, horizon: sum(prof.head_reactivation(l, horizon) for l in range(prof.num_layers)) / prof.num_layers


class HeadMaskModel:
    """Cost mode's KV-group masks: replayed from an exact run (`mask_trace`), or drawn from a seeded
    two-state Markov model of the profile per layer: per-head density pi and reactivation p01 at horizon 1;
    a group of G heads is taken active with probability 1 - (1 - pi)^G (heads independent: an assumption,
    stated), staying active with p11 = 1 - p01 (1 - pi_g) / pi_g so that pi_g is stationary. The prefill
    of T tokens draws round(H_kv * group union density(T)) groups at random. Paper shapes use the reference
    model's profile averaged over layers (labelled `derived`)."""

    def __init__(self, model_cfg, system_cfg, n_layers: int) -> None:
        self.Hkv = int(model_cfg.num_kv_heads)
        self.G = int(model_cfg.num_heads) // self.Hkv
        self.gen = torch.Generator().manual_seed(int(system_cfg.head_seed))
        self.prev: dict[int, torch.Tensor] = {}
        self.reactivation = reactivation_model(model_cfg, system_cfg)
        self.trace = None
        trace = system_cfg.mask_trace
        if trace:
            import pandas as pd

            df = pd.read_csv(trace, dtype={"revealed": str})
            df = df[df.kind == "head"]
            self.trace = {(int(r.layer), int(r.step)): torch.tensor([c == "1" for c in str(r.revealed).removeprefix("0b")])
                          for r in df.itertuples()}
        self.prof, self.measured = _head_profile(model_cfg, system_cfg)

    def _stat(self, name: str, layer: int, *arg) -> float:
        if self.prof is None:
            return 1.0
        fn = getattr(self.prof, name)
        if self.measured:
            return fn(min(layer, self.prof.num_layers - 1), *arg)
        return sum(fn(l, *arg) for l in range(self.prof.num_layers)) / self.prof.num_layers

    def __call__(self, layer: int, step: int, n_tokens: int) -> torch.Tensor:
        if self.trace is not None:
            if (layer, step) not in self.trace:
                raise CometError(f"mask_trace has no head mask for layer {layer}, step {step}")
            return self.trace[(layer, step)]
        g = lambda p: 1.0 - (1.0 - p) ** self.G  # noqa: E731
        if layer not in self.prev or n_tokens > 1:
            u = g(self._stat("head_union_density", layer, n_tokens) if n_tokens > 1 else self._stat("head_density", layer))
            k = int(round(u * self.Hkv))
            m = torch.zeros(self.Hkv, dtype=torch.bool)
            m[torch.randperm(self.Hkv, generator=self.gen)[:k]] = True
        else:
            pi = min(max(g(self._stat("head_density", layer)), 1e-6), 1.0)
            p01 = min(max(self._stat("head_reactivation", layer, 1), 0.0), 1.0)
            p11 = min(max(1.0 - p01 * (1.0 - pi) / pi, 0.0), 1.0)
            r = torch.rand(self.Hkv, generator=self.gen)
            prev = self.prev[layer]
            m = torch.where(prev, r < p11, r < p01)
        self.prev[layer] = m
        return m


def head_mask_model(model_cfg, system_cfg, n_layers: int) -> HeadMaskModel:
    return HeadMaskModel(model_cfg, system_cfg, n_layers)
