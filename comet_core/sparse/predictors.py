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
The predictor's shape (rank r) in cost mode comes from the config (`predictor_rank`) when no checkpoint
is loaded.
"""

from __future__ import annotations

import json

from pathlib import Path

import torch

from comet_core.errors import CometError
from comet_core.models.cache import REPO_ROOT, resolve_in_cache
from comet_core.mpc.shape import Shape


def checkpoint_path(model_cfg, system_cfg) -> Path:
    rel = str(system_cfg.get("predictor_checkpoint") or f"predictors/{model_cfg.name}/default.pt")
    return resolve_in_cache(rel.replace("{model}", str(model_cfg.name)))


def load_for_system(model_cfg, system_cfg):
    """The model's trained predictors (refused with one line if missing or made for another model)."""
    from comet_core.predictor.checkpoint import load_predictors

    path = checkpoint_path(model_cfg, system_cfg)
    if not path.is_file():
        raise CometError(f"system=comet needs trained predictors for model '{model_cfg.name}' ({path} not found); "
                         f"create them with: comet train-predictor model={model_cfg.name}  "
                         f"(or price the run without them: mode=cost)")
    return load_predictors(path, model_cfg)


def shared_predictor_shapes(model_cfg, system_cfg, n_layers: int) -> list[dict]:
    """Data-free predictor weights for cost mode: rank from the checkpoint if one exists, else the config."""
    d, F = int(model_cfg.hidden_size), int(model_cfg.ffn_dim)
    r = system_cfg.get("predictor_rank")
    r = int(r) if r is not None else d // 4
    path = checkpoint_path(model_cfg, system_cfg)
    if path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=False)
        r = int(blob["ffn"][0]["shape"][1])
    f = lambda *s: Shape(s, torch.float32)  # noqa: E731
    return [dict(w1=f(d, r), b1=f(r), w2=f(r, F), b2=f(F)) for _ in range(n_layers)]


def _profile_path(model_cfg, system_cfg) -> Path:
    p = system_cfg.get("profile_path") or f"results/predictor/{model_cfg.name}/profile.json"
    p = Path(str(p).replace("{model}", str(model_cfg.name)))
    return p if p.is_absolute() else REPO_ROOT / p


def cost_counts(model_cfg, system_cfg, n_layers: int):
    """counts(layer, step, n_tokens) -> number of neurons revealed active, and how it was chosen."""
    from comet_core.predictor.profile import SparsityProfile

    F = int(model_cfg.ffn_dim)
    trace = system_cfg.get("mask_trace")
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
    kind = str(system_cfg.get("profile", "auto"))
    path = _profile_path(model_cfg, system_cfg)
    if kind in ("auto", "measured") and path.is_file():
        prof = SparsityProfile(json.loads(path.read_text()))
        if prof.num_layers < n_layers:
            raise CometError(f"sparsity profile {path} has {prof.num_layers} layers, the run needs {n_layers}")
        return lambda layer, step, n: int(round(F * (prof.ffn_density(layer) if n == 1
                                                     else prof.ffn_union_density(layer, n))))
    if kind == "measured":
        raise CometError(f"system.profile=measured but {path} does not exist; make it with "
                         f"comet train-predictor model={model_cfg.name}, or use system.profile=derived")
    der = system_cfg.get("derived")
    if der is None:
        raise CometError("system.profile=derived needs system.derived (true density, recall, precision)")
    ref = SparsityProfile(json.loads((REPO_ROOT / str(der.union_growth_profile)).read_text()))
    per_token = float(der.ffn_true_density) * float(der.recall) / float(der.precision)

    def growth(n: int) -> float:
        vals = [ref.ffn_union_density(l, n) / max(ref.ffn_density(l), 1e-9) for l in range(ref.num_layers)]
        return sum(vals) / len(vals)

    def derived(layer: int, step: int, n: int) -> int:
        dens = min(1.0, per_token * (1.0 if n == 1 else growth(n)))
        return int(round(F * dens))
    return derived


def density_note(model_cfg, system_cfg) -> str:
    """One line saying where cost mode's counts came from (written into sparsity.csv's source column)."""
    if system_cfg.get("mask_trace"):
        return f"mask_trace:{system_cfg.get('mask_trace')}"
    path = _profile_path(model_cfg, system_cfg)
    if str(system_cfg.get("profile", "auto")) in ("auto", "measured") and path.is_file():
        return f"measured:{path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}"
    return "derived:conf/system/comet.yaml"



