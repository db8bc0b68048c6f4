"""Typed config schemas (Hydra structured configs) and the toolkit's OmegaConf resolvers.

Each primary config (conf/config.yaml, conf/train_lm.yaml, conf/train_predictor.yaml) lists its schema
first in its defaults list (``- schema/run``, ...), so Hydra checks every value's type while it composes
(``model.layers=1.5``, ``overwrite=maybe`` fail) and refuses keys the schema does not know
(``gen_token=2``). ``check_config`` then catches what composition lets through: keys forced in with
``+key=`` and values whose type is right but whose meaning is not (``seed=-1``, bandwidth ``inf``).

Open and closed groups (the choice, documented in docs/conventions.md):

- closed (every key declared, typed): the primary configs, ``model``, ``network``, ``engine``, ``lm``,
  ``predictor``. A new key in one of their YAML files must be declared here too (one line).
- per family: ``system``. Systems differ in their knobs (``comet``'s predictor and thresholds, ``puma``'s
  approximations, ...), so the schema here requires only ``name`` (a string); the keys of each family are
  declared in comet_core/config/typed.py (``DenseParams`` for every system, ``CometParams`` for comet), and
  the run's config check (comet_core/roles/run_config.py) refuses any other key there (one line listing the valid ones).

Resolvers (registered by ``register()``): ``${comet.run_id:}`` = ``<pid>-<4 hex>``, fixed within a
process (unique run folders); ``${comet.staging:<dir>}`` = the hidden sibling a run of ``<dir>`` is
written into before it is moved into place (comet_core/results/run_folder.py).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from comet_core.errors import ConfigError

SEED_LIMIT = 2 ** 63


@dataclass
class ModelSchema:
    name: str = MISSING
    family: str = MISSING            # opt | llama
    source: str = MISSING            # random | smollm2-gguf | checkpoint
    checkpoint: Optional[str] = None
    checkpoint_hint: Optional[str] = None
    tokenizer: str = "bytes"
    vocab_size: int = MISSING
    hidden_size: int = MISSING
    num_layers: int = MISSING
    ffn_dim: int = MISSING
    num_heads: int = MISSING
    num_kv_heads: int = MISSING
    max_positions: int = MISSING
    activation: str = "relu"
    rope_theta: float = 10000.0      # Llama only (the code's default where a YAML omits it)
    rms_norm_eps: float = 1.0e-5     # Llama only
    tie_word_embeddings: bool = False   # Llama: the LM head is the embedding table, shared once (OPT: both shared)
    predictor_preset: str = "default"   # conf/predictor preset whose checkpoint system=comet loads
    dropout: float = 0.0
    layers: Optional[int] = None     # run only the first n decoder layers (null: all)


@dataclass
class NetworkSchema:
    name: str = MISSING
    bandwidth_bps: float = MISSING
    latency_s: float = MISSING
    convention: str = "one-way latency per round; busiest direction bytes over bandwidth"


@dataclass
class EngineSchema:
    ring_bits: int = 64
    frac_bits: int = 16
    truncation: str = "dealer"
    weight_masks: str = "call"                   # call | request | deployment (comet_core/mpc/weight_masks.py)
    reuse_weight_masks: Optional[bool] = None    # deprecated: true = weight_masks=request, false = call
    exp_iterations: int = 8
    exp_clamp: bool = True
    reciprocal_nr_iters: int = 4
    reciprocal_range: List[int] = field(default_factory=lambda: [-8, 24])
    inv_sqrt_nr_iters: int = 3
    inv_sqrt_range: List[int] = field(default_factory=lambda: [-16, 31])
    sigmoid_nr_iters: int = 3
    check_ranges: bool = True
    max_method: str = "auto"      # auto | tree | pairs (comet_core/mpc/pairmax.py)
    comparison: str = "circuit"   # circuit | fss (comet_core/mpc/fss.py; beyond the paper)
    relu_bits: int = 64           # the FFN ReLU's sign test on Z_2^relu_bits (comet_core/mpc/smallring.py)
    relu_range: int = 4           # log2 of the public bound on |ReLU input| the reduced test covers


@dataclass
class TransportSchema:
    """conf/transport/*.yaml: inprocess (the default) or tcp (comet_core/comm/tls.py, comet_core/roles/party.py)."""
    name: str = "inprocess"
    keys_dir: Optional[str] = None
    hosts: Dict[str, str] = field(default_factory=lambda: {r: "127.0.0.1" for r in ("p0", "p1", "dealer", "client", "owner")})
    ports: Dict[str, int] = field(default_factory=lambda: {"p0": 0, "p1": 0})
    bind: Optional[str] = None
    timeout_s: float = 120.0
    connect_timeout_s: float = 60.0
    max_frame_bytes: int = 1 << 30
    exec_prefix: Dict[str, List[str]] = field(default_factory=lambda: {"p0": [], "p1": []})
    check_inprocess: bool = True
    emulate: str = "none"           # none | netns | shaper: the P0-P1 link emulates network= (comet_core/roles/emulated.py)
    latency_by: str = "auto"        # netns: who adds the one-way latency: auto (netem if the kernel has it) | netem | shaper
    insecure_seed: bool = False     # allow seed=<int> (every role then derives every key: tests and reproducible ledgers only)


@dataclass
class RunSchema:
    """conf/config.yaml (`comet run-experiment`)."""
    model: ModelSchema = MISSING
    system: Dict[str, Any] = MISSING   # open group (module docstring)
    network: NetworkSchema = MISSING
    engine: EngineSchema = MISSING
    mode: str = MISSING
    seed: Optional[int] = MISSING
    model_seed: int = 0
    device: str = "cpu"
    prompt: str = MISSING
    prompt_file: Optional[str] = None
    prompt_len: Optional[int] = None
    gen_tokens: int = MISSING
    deploy_requests: int = 1000                   # requests a deployment's one-off `deploy` stage is amortised over
    output_dir: str = MISSING
    overwrite: bool = False
    save_ledger: bool = True
    force: bool = False
    experiment: Optional[Dict[str, Any]] = None   # paper artifact metadata (conf/experiment/*: name, preset, ...)
    output: str = "token"                         # token | logits: what the client receives per step
    transport: TransportSchema = field(default_factory=TransportSchema)


@dataclass
class LMSchema:
    name: str = MISSING
    hidden_size: int = MISSING
    num_layers: int = MISSING
    ffn_dim: int = MISSING
    num_heads: int = MISSING
    max_positions: int = MISSING
    seq_len: int = MISSING
    batch_size: int = MISSING
    steps: int = MISSING
    lr: float = MISSING
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    eval_every: int = MISSING
    eval_batches: int = MISSING
    final_eval_windows: int = MISSING
    max_minutes: float = MISSING


@dataclass
class TrainLMSchema:
    """conf/train_lm.yaml (`comet train-lm`)."""
    lm: LMSchema = MISSING
    seed: Optional[int] = 0
    threads: int = 2
    checkpoint: str = MISSING
    output_dir: str = MISSING
    overwrite: bool = False


@dataclass
class PredictorSchema:
    name: str = MISSING
    rank: int = MISSING
    head_rank: int = MISSING
    target_recall: float = MISSING
    ffn_target_sparsity: float = MISSING
    head_target_sparsity: float = MISSING
    seq_len: int = MISSING
    train_windows: int = MISSING
    val_windows: int = MISSING
    test_windows: int = MISSING
    forward_batch: int = MISSING
    lr: float = MISSING
    batch_size: int = MISSING
    max_epochs: int = MISSING
    patience: int = MISSING
    pos_weight_max: float = MISSING
    early_stop: str = MISSING
    sweep_recalls: List[float] = MISSING
    labels: str = "cats"             # cats | product (FFN neuron labels of SiLU models; collect.py)
    block: int = 1                   # neurons per FFN prediction (comet predictor-tradeoff; train.py)


@dataclass
class GridSchema:
    """`comet predictor-tradeoff`'s points (experiments/cost_accuracy.py); null: the predictor's own."""
    labels: Optional[List[str]] = None
    ranks: Optional[List[int]] = None
    blocks: Optional[List[int]] = None
    bits: Optional[List[int]] = None  # threshold-test ring widths evaluated on each trained point (null: [64])
    predictor_range: int = 7         # the reduced test's window, log2 (system.predictor_range's default)
    cross: bool = False              # false: one axis at a time around the predictor's own point
    checkpoints: bool = False        # true: also train head predictors and save a checkpoint per block-1 point
    table: str = MISSING             # the cost_accuracy.csv rows are merged into


@dataclass
class TrainPredictorSchema:
    """conf/train_predictor.yaml (`comet train-predictor`)."""
    model: ModelSchema = MISSING
    predictor: PredictorSchema = MISSING
    seed: Optional[int] = 0
    threads: int = 2
    output_dir: str = MISSING
    checkpoint: str = MISSING
    work_dir: str = MISSING
    keep_activations: bool = False
    overwrite: bool = False
    force: bool = False
    experiment: Optional[Dict[str, Any]] = None   # paper artifact metadata (conf/experiment/predictor_accuracy*)
    grid: GridSchema = field(default_factory=GridSchema)


SCHEMAS = {"run": RunSchema, "train_lm": TrainLMSchema, "train_predictor": TrainPredictorSchema}
PRIMARY = {"config": RunSchema, "train_lm": TrainLMSchema, "train_predictor": TrainPredictorSchema}

_registered = False


def preset_dir(model: str, preset: str) -> str:
    """Predictor results folder below results/predictor: `<model>` for the default preset, else `<model>/<preset>`."""
    return str(model) if str(preset) == "default" else f"{model}/{preset}"


def register() -> None:
    """Store the schemas in Hydra's ConfigStore (group `schema`) and register the resolvers (idempotent)."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    from comet_core.results.run_folder import run_token, staging_path

    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(group="schema", name=name, node=node, package="_global_")
    OmegaConf.register_new_resolver("comet.run_id", run_token, replace=True)
    OmegaConf.register_new_resolver("comet.staging", lambda d: str(staging_path(d)), replace=True)
    OmegaConf.register_new_resolver("comet.preset_dir", preset_dir, replace=True)
    # ${comet.div:${model.hidden_size},32}: a size as a fraction of the model's (design_space's rank d / 32)
    OmegaConf.register_new_resolver("comet.div", lambda a, b: int(a) // int(b), replace=True)
    _registered = True


# -- checks after composition -----------------------------------------------------------------------


def _unknown_keys(node: DictConfig, prefix: str = "") -> list[tuple[str, list[str]]]:
    """(dotted key, known keys) for every key of a typed node that its dataclass does not declare."""
    out = []
    typ = OmegaConf.get_type(node)
    known = [f.name for f in dataclasses.fields(typ)] if dataclasses.is_dataclass(typ) else None
    for key in node.keys():
        path = f"{prefix}{key}"
        if known is not None and key not in known:
            out.append((path, known))
            continue
        if OmegaConf.is_missing(node, key):
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none():
            out += _unknown_keys(child, path + ".")
    return out


def check_unknown_keys(cfg: DictConfig) -> None:
    """Refuse keys the schema does not declare (a `+key=` forced in, or a stray YAML key)."""
    for path, known in _unknown_keys(cfg):
        leaf = path.rsplit(".", 1)[-1]
        near = difflib.get_close_matches(leaf, known, n=1)
        hint = f"did you mean {path.rsplit('.', 1)[0] + '.' if '.' in path else ''}{near[0]}=? " if near else ""
        raise ConfigError(f"unknown config key '{path}'; {hint}`comet run-experiment --cfg job` lists the keys "
                          "(a new key must also be declared in comet_core/config/schema.py)")


def check_resolvable(cfg: DictConfig) -> None:
    """Every `${...}` resolves (a prompt holding `${y}` would otherwise fail mid-run)."""
    from omegaconf.errors import InterpolationResolutionError

    for key in cfg.keys():
        try:
            OmegaConf.to_container(cfg[key], resolve=True) if isinstance(cfg[key], DictConfig) else cfg[key]
        except InterpolationResolutionError as e:
            first = str(e).strip().splitlines()[0]
            raise ConfigError(f"{key}: {first}; OmegaConf reads ${{...}} as a reference: write \\${{...}} "
                              "for literal text, or put a prompt in a file and pass prompt_file=") from None


def check_seed(seed) -> None:
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"seed must be null (fresh OS randomness) or an integer in 0..2^63-1, got {seed!r}")


def check_finite(value, what: str) -> None:
    if isinstance(value, (int, float)) and not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")


def check_run_config(cfg: DictConfig) -> None:
    """Schema-level checks of a composed `run-experiment` config (before any work)."""
    for key in ("model", "system", "network", "engine"):
        if key not in cfg or OmegaConf.is_missing(cfg, key) or cfg[key] is None:
            from comet_core.config.groups import group_choices

            raise ConfigError(f"{key}= must name a config; valid choices: {', '.join(group_choices(key))}")
    check_unknown_keys(cfg)
    check_resolvable(cfg)
    check_seed(cfg.seed)
    if "model_seed" in cfg:
        check_seed(cfg.model_seed)
    sys_name = cfg.system.get("name") if isinstance(cfg.system, DictConfig) else None
    if not isinstance(sys_name, str) or not sys_name:
        raise ConfigError("system.name must be a non-empty string (conf/system/<name>.yaml)")
    check_finite(cfg.network.bandwidth_bps, "network.bandwidth_bps")
    check_finite(cfg.network.latency_s, "network.latency_s")


def check_train_config(cfg: DictConfig) -> None:
    """Schema-level checks of a composed `train-lm` / `train-predictor` config."""
    for key in ("model", "predictor", "lm"):
        if key in cfg and (OmegaConf.is_missing(cfg, key) or cfg[key] is None):
            from comet_core.config.groups import group_choices

            raise ConfigError(f"{key}= must name a config; valid choices: {', '.join(group_choices(key))}")
    check_unknown_keys(cfg)
    check_seed(cfg.seed)
