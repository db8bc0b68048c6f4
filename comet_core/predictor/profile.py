"""Sparsity profiles: what the Comet protocol and cost mode need to know about a model's sparsity.

Written by ``comet train-predictor`` as ``results/predictor/<model>/profile.json`` (plus a flat
``profile.csv`` with the same numbers), measured on the test plays with the predictors at their tuned
thresholds. JSON schema ``comet.sparsity_profile/1``::

    {
      "schema": "comet.sparsity_profile/1",
      "model": {"name", "family", "hidden_size", "ffn_dim", "num_heads", "num_layers", "vocab_size"},
      "source": "predicted",             # masks = predictor output (what the protocol reveals)
      "target_recall": 0.93,             # the thresholds were tuned to this validation recall
      "tokens": int, "seq_len": int,     # test tokens measured, window length
      "block_sizes": [1, 2, 4, ...],     # k for the *_union_density lists
      "horizons": [1, 2, 4, 8, 16],      # w for head_reactivation
      "layers": [{                       # one entry per decoder layer, in order
        "layer": int,
        "ffn_density": float,            # mean fraction of FFN neurons predicted active per token
        "ffn_true_density": float,       # ... truly active (ReLU > 0, or CATS |SiLU(gate)| > tau)
        "head_density": float,           # mean fraction of heads predicted active per token
        "head_true_density": float,
        "ffn_union_density": [float],    # per k: fraction of neurons predicted active for ANY token of a
                                         #   block of k consecutive tokens (what a k-token prefill computes)
        "ffn_true_union_density": [float],
        "head_union_density": [float],   # per k, same for heads
        "head_reactivation": [float],    # per w: P(head predicted active at some step in (t, t+w] |
                                         #   predicted inactive at t): how often its skipped KV is needed
        "ffn_recall": float, "head_recall": float   # on the test tokens
      }]
    }
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from comet_core.errors import CometError

SCHEMA = "comet.sparsity_profile/1"
BLOCK_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
HORIZONS = (1, 2, 4, 8, 16)
LAYER_KEYS = ("layer", "ffn_density", "ffn_true_density", "head_density", "head_true_density",
              "ffn_union_density", "ffn_true_union_density", "head_union_density", "head_reactivation")


def union_density(mask: np.ndarray, k: int) -> float:
    """mask (windows, L, units) bool -> mean over blocks of k consecutive tokens of |union| / units."""
    w, L, u = mask.shape
    nb = L // k
    if nb == 0:
        return float("nan")
    blocks = mask[:, : nb * k].reshape(w, nb, k, u).any(axis=2)
    return float(blocks.mean())


def reactivation(mask: np.ndarray, w: int) -> float:
    """P(active at some step in (t, t+w] | inactive at t), over t with a full horizon."""
    n, L, u = mask.shape
    if L <= w:
        return float("nan")
    later = np.zeros((n, L - w, u), dtype=bool)
    for j in range(1, w + 1):
        later |= mask[:, j: L - w + j]
    inactive = ~mask[:, : L - w]
    total = inactive.sum()
    return float((later & inactive).sum() / total) if total else 0.0


def layer_profile(layer: int, ffn_pred, ffn_true, head_pred, head_true, seq_len: int) -> dict:
    """Profile entry from (tokens, units) bool masks of consecutive windows of ``seq_len`` tokens."""
    fp, ft = ffn_pred.reshape(-1, seq_len, ffn_pred.shape[-1]), ffn_true.reshape(-1, seq_len, ffn_true.shape[-1])
    hp, ht = head_pred.reshape(-1, seq_len, head_pred.shape[-1]), head_true.reshape(-1, seq_len, head_true.shape[-1])
    ks = [k for k in BLOCK_SIZES if k <= seq_len]
    return {
        "layer": layer,
        "ffn_density": float(fp.mean()), "ffn_true_density": float(ft.mean()),
        "head_density": float(hp.mean()), "head_true_density": float(ht.mean()),
        "ffn_union_density": [union_density(fp, k) for k in ks],
        "ffn_true_union_density": [union_density(ft, k) for k in ks],
        "head_union_density": [union_density(hp, k) for k in ks],
        "head_reactivation": [reactivation(hp, w) for w in HORIZONS],
        "ffn_recall": float((fp & ft).sum() / max(1, ft.sum())),
        "head_recall": float((hp & ht).sum() / max(1, ht.sum())),
    }


@dataclass
class SparsityProfile:
    data: dict

    @property
    def layers(self) -> list[dict]:
        return self.data["layers"]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def ffn_density(self, layer: int) -> float:
        return self.layers[layer]["ffn_density"]

    def head_density(self, layer: int) -> float:
        return self.layers[layer]["head_density"]

    def _at(self, values: list[float], sizes: list[int], n: int) -> float:
        """Value at n, linear in log2(n) between measured sizes; clamped at the ends."""
        xs = np.log2(np.asarray(sizes[: len(values)], dtype=float))
        return float(np.interp(np.log2(max(1, n)), xs, np.asarray(values, dtype=float)))

    def ffn_union_density(self, layer: int, n_tokens: int) -> float:
        """Fraction of FFN neurons active for any of n_tokens consecutive tokens (prefill of n tokens)."""
        return self._at(self.layers[layer]["ffn_union_density"], self.data["block_sizes"], n_tokens)

    def head_union_density(self, layer: int, n_tokens: int) -> float:
        return self._at(self.layers[layer]["head_union_density"], self.data["block_sizes"], n_tokens)

    def head_reactivation(self, layer: int, horizon: int) -> float:
        """P(a head skipped at step t is needed within the next `horizon` steps)."""
        return self._at(self.layers[layer]["head_reactivation"], self.data["horizons"], horizon)

    def to_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.data, indent=1) + "\n")

    def to_frame(self):
        """Tidy table: layer, kind, metric, size, value."""
        import pandas as pd

        rows = []
        for e in self.layers:
            for kind in ("ffn", "head"):
                rows.append((e["layer"], kind, "density", None, e[f"{kind}_density"]))
                rows.append((e["layer"], kind, "true_density", None, e[f"{kind}_true_density"]))
                rows.append((e["layer"], kind, "recall", None, e.get(f"{kind}_recall")))
                for k, v in zip(self.data["block_sizes"], e[f"{kind}_union_density"]):
                    rows.append((e["layer"], kind, "union_density", k, v))
            for k, v in zip(self.data["block_sizes"], e["ffn_true_union_density"]):
                rows.append((e["layer"], "ffn", "true_union_density", k, v))
            for w, v in zip(self.data["horizons"], e["head_reactivation"]):
                rows.append((e["layer"], "head", "reactivation", w, v))
        return pd.DataFrame(rows, columns=["layer", "kind", "metric", "size", "value"])


def validate(data: dict) -> None:
    if data.get("schema") != SCHEMA:
        raise CometError(f"not a sparsity profile ({SCHEMA}): schema={data.get('schema')!r}")
    for e in data.get("layers", []):
        missing = [k for k in LAYER_KEYS if k not in e]
        if missing:
            raise CometError(f"sparsity profile layer {e.get('layer')} lacks {missing}")


def default_path(model_name: str) -> Path:
    from comet_core.models.cache import REPO_ROOT

    return REPO_ROOT / "results" / "predictor" / model_name / "profile.json"


def load_profile(path_or_model: str | Path, model_cfg=None) -> SparsityProfile:
    """Load a profile by path or by model name (results/predictor/<name>/profile.json); with
    ``model_cfg``, refuse a profile made for another model or shape."""
    p = Path(path_or_model)
    if not p.suffix:
        p = default_path(str(path_or_model))
    if not p.is_file():
        name = model_cfg.get("name") if model_cfg is not None else p.parent.name
        raise CometError(f"sparsity profile {p} not found; create it with: comet train-predictor model={name}")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CometError(f"sparsity profile {p} is not valid JSON ({e.msg})") from e
    validate(data)
    if model_cfg is not None:
        m = data["model"]
        for k in ("name", "hidden_size", "ffn_dim", "num_heads"):
            if str(m.get(k)) != str(model_cfg.get(k)):
                raise CometError(f"sparsity profile {p} is for {k}={m.get(k)}, model has {model_cfg.get(k)}; "
                                 f"run: comet train-predictor model={model_cfg.get('name')}")
        from comet_core.models.zoo import n_layers

        if n_layers(model_cfg) > len(data["layers"]):
            raise CometError(f"sparsity profile {p} covers {len(data['layers'])} layers, model runs "
                             f"{n_layers(model_cfg)}")
    return SparsityProfile(data)
