"""The typed objects a run's config groups become before they cross into comet_core.

The boundary (comet_core/roles/run_config.py, experiments/run.py) composes and checks the Hydra config,
then hands the core these dataclasses, never the raw config: ``system_params(cfg.system)``,
``model_params(cfg.model)``, ``engine_params(cfg.engine)``, ``network_params(cfg.network)``. Modules
below read attributes; every default lives here and in the group's YAML, with the same value.

``to_typed`` is the one converter: it takes a dataclass, a mapping or an OmegaConf node, fills the
dataclass defaults, and refuses a key the dataclass does not declare (or a required key left out) with a
one-line ConfigError listing the valid keys, before any work starts.

Adding a system key: one line in ``DenseParams`` (every system) or ``CometParams`` (Comet only) below,
with its default equal to the YAML's. The model, engine, network and transport groups are the closed
schemas of comet_core/config/schema.py (one line there).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from comet_core.errors import ConfigError


def _plain(data) -> dict:
    """A mapping or an OmegaConf node as a plain dict (interpolations resolved)."""
    if type(data).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf   # only the boundary's nodes come this way

        return OmegaConf.to_container(data, resolve=True)
    return dict(data)


def to_typed(cls, data, where: str):
    """``data`` (None, a ``cls``, a mapping or an OmegaConf node) as a ``cls``; unknown or missing keys: ConfigError."""
    if isinstance(data, cls):
        return data
    values = {} if data is None else _plain(data)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in values if k not in names)
    if unknown:
        raise ConfigError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                          f"valid: {', '.join(names)}")
    values = {k: v for k, v in values.items() if v != "???"}   # OmegaConf's MISSING: the default (or the error below)
    for f in dataclasses.fields(cls):
        nested = _nested_type(cls, f)
        if nested is not None and isinstance(values.get(f.name), dict):
            values[f.name] = to_typed(nested, values[f.name], f"{where}.{f.name}")
    try:
        obj = cls(**values)
    except TypeError as e:   # a field without default left out
        raise ConfigError(f"{where}: {e}; valid keys: {', '.join(names)}") from None
    missing = [f.name for f in dataclasses.fields(cls) if getattr(obj, f.name) == "???"]
    if missing:
        raise ConfigError(f"{where}: missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return obj


def _nested_type(cls, f):
    """The dataclass a field of ``cls`` holds (``Optional[X]`` included), else None."""
    t = typing.get_type_hints(cls).get(f.name, f.type)   # the annotations are strings (postponed evaluation)
    for arg in (t, *typing.get_args(t)):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def to_yaml(obj) -> str:
    """A typed config as YAML (the config.yaml a task writes beside its results)."""
    import yaml

    return yaml.safe_dump(dataclasses.asdict(obj), sort_keys=False)


# -- system (conf/system/<name>.yaml) -------------------------------------------------------------


@dataclass
class DerivedDensity:
    """Comet's cost-mode density for the paper's shapes (conf/system/comet.yaml ``derived``: sources there)."""
    ffn_true_density: float
    recall: float
    precision: float
    union_growth_profile: str        # a profile.json (below the repository) of how the union grows with T
    rank_curve: Optional[str] = None  # a cost_accuracy.csv: predicted / true density by rank / d (predictor_rank set)


@dataclass
class DenseParams:
    """Every system's keys (dense, mpcformer, secformer, puma, iron, bolt; comet adds CometParams')."""
    name: str = "dense"
    linear: str = "beaver"                                          # documentation: the linear layers' protocol
    activations: Dict[str, str] = field(default_factory=dict)       # kind (relu | silu | gelu) -> operator; absent: the system class's
    softmax: Optional[str] = None                                   # null: the system class's softmax
    norm: Optional[str] = None                                      # null: the system class's norm
    params: Dict[str, Any] = field(default_factory=dict)            # the approximations' knobs (systems/operators.py)
    sparsity: str = "none"                                          # documentation: none | ffn+heads
    source: str = ""                                                # documentation: where the definitions come from
    notes: Dict[str, str] = field(default_factory=dict)             # documentation: per operator
    ffn_sparsity: Optional[float] = None                            # cost mode: forced FFN sparsity (Comet; dense: no effect)
    ot: Optional[str] = None                                        # iron, bolt: the OT flavour, iknp | silent (mpc/ideal.py)
    word_elimination: bool = False                                  # bolt: BOLT's word elimination (encoder passes, cost mode)
    he_packing: Optional[str] = None                                # linear=he: bolt's bolt (slot packing) | cheetah; iron's iron (coefficient packing)


@dataclass
class CometParams(DenseParams):
    """conf/system/comet.yaml (comments there)."""
    name: str = "comet"
    sparsity: str = "ffn+heads"
    softmax: Optional[str] = "exact"
    norm: Optional[str] = "exact"
    activation: str = "exact"                                       # documentation: exact ReLU / SiLU on active columns
    indexing: str = "shuffle"                                       # shuffle | oblivious
    correlations: str = "dealer"                                    # dealer | client
    heads: bool = True                                              # part 2: head-sparse attention
    kv_refill: str = "merged"                                       # merged | naive
    kv_prefetch: str = "cost_benefit"                               # cost_benefit | always | never
    head_seed: int = 0                                              # cost mode: head-activity model seed
    head_predictor_rank: Optional[int] = None                       # cost mode without checkpoint (null: d / 8)
    predictor_checkpoint: str = "predictors/{model}/{preset}.pt"
    flip_epsilon: float = 0.05
    profile: str = "auto"                                           # auto | measured | derived
    profile_path: Optional[str] = None                              # null: results/predictor/{model}/profile.json
    mask_trace: Optional[str] = None                                # an exact run's sparsity.csv to replay
    predictor_rank: Optional[int] = None                            # cost mode without checkpoint (null: d / 4)
    derived: Optional[DerivedDensity] = None                        # profile=derived's inputs
    predictor_bits: int = 64                                        # the threshold test on Z_2^bits (mpc/smallring.py)
    predictor_range: int = 7                                        # log2 of the bound on |score - threshold|
    block: int = 1                                                  # neurons per FFN prediction
    permutation: str = "online"                                     # online | preprocessed | deployment
    count_padding: str = "none"                                     # none | bucket | dp (sparse/count_padding.py)
    count_padding_bucket: Optional[int] = None                      # bucket: units per bucket (null: F / 16)
    count_padding_epsilon: float = 1.0                              # dp: epsilon per revealed count
    count_padding_delta: float = 1.0e-6                             # dp: delta (the noise's clip)


# system name -> its params class (a name not here takes DenseParams)
SYSTEM_PARAMS = {"comet": CometParams}


def system_params(data, default: str = "dense"):
    """A system group as its typed params (``data`` without ``name``: ``default``'s class)."""
    if isinstance(data, DenseParams):
        return data
    values = _plain(data) if data is not None else {}
    values["name"] = name = str(values.get("name") or default)
    return to_typed(SYSTEM_PARAMS.get(name, DenseParams), values, f"system '{name}'")


# -- the closed groups (schemas in comet_core/config/schema.py) ------------------------------------


def model_params(data):
    from comet_core.config.schema import ModelSchema

    return to_typed(ModelSchema, data, "model")


def engine_params(data):
    from comet_core.config.schema import EngineSchema

    return to_typed(EngineSchema, data, "engine")


def network_params(data):
    from comet_core.config.schema import NetworkSchema

    return to_typed(NetworkSchema, data, "network")


# -- the training commands (conf/train_predictor.yaml, conf/train_lm.yaml) ---------------------------


def train_predictor_params(data):
    """`comet train-predictor`'s (and `comet predictor-tradeoff`'s) composed config, typed."""
    from comet_core.config.schema import TrainPredictorSchema

    return to_typed(TrainPredictorSchema, data, "train_predictor")


def train_lm_params(data):
    """`comet train-lm`'s composed config, typed."""
    from comet_core.config.schema import TrainLMSchema

    return to_typed(TrainLMSchema, data, "train_lm")
