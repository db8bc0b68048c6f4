"""Save / load a model's full set of predictors (one FFN and one head predictor per layer).

The checkpoint records the model it was made for (name and shape) and the label thresholds; the loader
refuses a checkpoint whose model or shapes differ from the model config it is asked to serve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from comet_core.errors import CometError
from comet_core.predictor.model import LowRankPredictor

FORMAT = "comet.predictor/1"
SHAPE_KEYS = ("family", "hidden_size", "ffn_dim", "num_heads", "vocab_size")


@dataclass
class PredictorSet:
    model: dict                     # name + shape of the model it was trained for
    ffn: list[LowRankPredictor]     # per layer: x (d) -> F neuron logits
    head: list[LowRankPredictor]    # per layer: x (d) -> H head logits
    ffn_tau: list[float]            # label threshold on |act(pre)| (0 for ReLU; CATS otherwise)
    head_tau: list[float]           # label threshold on the head share
    settings: dict = field(default_factory=dict)


def model_signature(model_cfg) -> dict:
    from comet_core.models.zoo import n_layers

    sig = {k: model_cfg.get(k) for k in SHAPE_KEYS}
    sig["name"] = model_cfg.get("name")
    sig["num_layers"] = n_layers(model_cfg)
    return sig


def save_predictors(ps: PredictorSet, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": FORMAT, "model": ps.model, "settings": ps.settings, "ffn_tau": ps.ffn_tau,
            "head_tau": ps.head_tau,
            "ffn": [{"shape": p.shape, "state": p.state_dict()} for p in ps.ffn],
            "head": [{"shape": p.shape, "state": p.state_dict()} for p in ps.head]}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)


def _build(entries) -> list[LowRankPredictor]:
    out = []
    for e in entries:
        p = LowRankPredictor(*e["shape"])
        p.load_state_dict(e["state"])
        out.append(p.eval())
    return out


def load_predictors(path: Path, model_cfg) -> PredictorSet:
    """Load and check against ``model_cfg``; keeps the first ``layers`` predictors if the config truncates."""
    path = Path(path)
    name = model_cfg.get("name")
    hint = f"comet train-predictor model={name}"
    if not path.is_file():
        raise CometError(f"predictor checkpoint {path} not found; create it with: {hint}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
        assert isinstance(blob, dict) and blob.get("format") == FORMAT
    except Exception as e:
        raise CometError(f"predictor checkpoint {path} is corrupt or not a {FORMAT} file; "
                         f"recreate it with: {hint} overwrite=true") from e
    have, want = blob["model"], model_signature(model_cfg)
    if have.get("name") != want["name"]:
        raise CometError(f"predictor checkpoint {path} was trained for model '{have.get('name')}', not '{name}'; "
                         f"train one with: {hint}")
    diff = [f"{k}={have.get(k)} (model has {want[k]})" for k in SHAPE_KEYS if str(have.get(k)) != str(want[k])]
    if want["num_layers"] > int(have["num_layers"]):
        diff.append(f"num_layers={have['num_layers']} (model runs {want['num_layers']})")
    if diff:
        raise CometError(f"predictor checkpoint {path} does not fit model '{name}': {', '.join(diff)}; "
                         f"retrain with: {hint} overwrite=true")
    n = want["num_layers"]
    ps = PredictorSet(model=have, ffn=_build(blob["ffn"][:n]), head=_build(blob["head"][:n]),
                      ffn_tau=list(blob["ffn_tau"][:n]), head_tau=list(blob["head_tau"][:n]),
                      settings=blob.get("settings", {}))
    d, H = int(want["hidden_size"]), int(want["num_heads"])
    for l, (f, h) in enumerate(zip(ps.ffn, ps.head)):
        if f.shape[0] != d or f.shape[2] != int(want["ffn_dim"]) or h.shape[0] != d or h.shape[2] != H:
            raise CometError(f"predictor checkpoint {path}: layer {l} predictor shapes {f.shape}/{h.shape} "
                             f"do not fit model '{name}'; retrain with: {hint} overwrite=true")
    return ps
