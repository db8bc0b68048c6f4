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

    sig = {k: getattr(model_cfg, k) for k in SHAPE_KEYS}
    sig["name"] = model_cfg.name
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


def train_hint(model_cfg) -> str:
    return f"comet train-predictor model={model_cfg.name}"


def read_checkpoint(path: Path, hint: str) -> dict:
    """The checkpoint's contents as plain data. torch's weights-only unpickler builds only tensors,
    containers, numbers and strings, so a crafted file cannot run code on load (a full pickle could);
    anything else, and a file without the layout save_predictors writes, is one CometError line."""
    import pickle

    corrupt = f"predictor checkpoint {path} is corrupt or not a {FORMAT} file"
    fix = f"recreate it with: {hint} overwrite=true"
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CometError(f"{corrupt} (it holds objects other than tensors and plain data: refused, loading it "
                         f"could run code); {fix}") from None
    except Exception as e:  # noqa: BLE001 - truncated, not a zip or pickle, unreadable: one line
        raise CometError(f"{corrupt} ({type(e).__name__}); {fix}") from None
    lists = ("ffn", "head", "ffn_tau", "head_tau")
    if not (isinstance(blob, dict) and blob.get("format") == FORMAT and isinstance(blob.get("model"), dict)
            and all(isinstance(blob.get(k), list) for k in lists)
            and all(isinstance(e, dict) and "shape" in e and "state" in e for k in ("ffn", "head") for e in blob[k])):
        raise CometError(f"{corrupt}; {fix}")
    return blob


def checkpoint_rank(path: Path, model_cfg, kind: str) -> int:
    """The rank of the first `kind` (ffn | head) predictor of a checkpoint (cost mode's shapes)."""
    blob = read_checkpoint(path, train_hint(model_cfg))
    try:
        return int(blob[kind][0]["shape"][1])
    except (IndexError, TypeError, ValueError):
        raise CometError(f"predictor checkpoint {path} has no {kind} predictor shape; "
                         f"recreate it with: {train_hint(model_cfg)} overwrite=true") from None


def load_predictors(path: Path, model_cfg) -> PredictorSet:
    """Load and check against ``model_cfg``; keeps the first ``layers`` predictors if the config truncates."""
    path = Path(path)
    name = model_cfg.name
    hint = train_hint(model_cfg)
    if not path.is_file():
        raise CometError(f"predictor checkpoint {path} not found; create it with: {hint}")
    blob = read_checkpoint(path, hint)
    have, want = blob["model"], model_signature(model_cfg)
    if have.get("name") != want["name"]:
        raise CometError(f"predictor checkpoint {path} was trained for model '{have.get('name')}', not '{name}'; "
                         f"train one with: {hint}")
    diff = [f"{k}={have.get(k)} (model has {want[k]})" for k in SHAPE_KEYS if str(have.get(k)) != str(want[k])]
    if not isinstance(have.get("num_layers"), int) or want["num_layers"] > have["num_layers"]:
        diff.append(f"num_layers={have['num_layers']} (model runs {want['num_layers']})")
    if diff:
        raise CometError(f"predictor checkpoint {path} does not fit model '{name}': {', '.join(diff)}; "
                         f"retrain with: {hint} overwrite=true")
    n = want["num_layers"]
    try:
        ps = PredictorSet(model=have, ffn=_build(blob["ffn"][:n]), head=_build(blob["head"][:n]),
                          ffn_tau=list(blob["ffn_tau"][:n]), head_tau=list(blob["head_tau"][:n]),
                          settings=blob.get("settings", {}))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:   # torch's state-dict errors span lines
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CometError(f"predictor checkpoint {path}: its predictors do not load ({first}); "
                         f"retrain with: {hint} overwrite=true") from None
    d, H = int(want["hidden_size"]), int(want["num_heads"])
    units = int(want["ffn_dim"]) // int((ps.settings or {}).get("block", 1) or 1)   # one output per block of neurons
    for l, (f, h) in enumerate(zip(ps.ffn, ps.head)):
        if f.shape[0] != d or f.shape[2] != units or h.shape[0] != d or h.shape[2] != H:
            raise CometError(f"predictor checkpoint {path}: layer {l} predictor shapes {f.shape}/{h.shape} "
                             f"do not fit model '{name}'; retrain with: {hint} overwrite=true")
    return ps
