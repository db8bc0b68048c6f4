"""`comet accuracy`: every system's perplexity and next-token accuracy on the same held-out windows.

One table per model, `results/accuracy/<model>.csv`: the plaintext reference decoder
(comet_core/models/reference.py, float64: the function each private run computes) with

  * dense: the model itself (variant `exact`);
  * comet: the checkpoint's float predictors at their thresholds (comet_core/sparse/masked_decoder.py):
    `ffn` (FFN neurons only), `heads` (KV groups only), `ffn+heads` (both, the default system), and the
    same with the true labels (`oracle ffn`, `oracle heads`, `oracle ffn+heads`); the head masks are the
    toolkit's own definition of head importance (comet_core/predictor/sites.py), not the paper's;
  * each baseline (mpcformer, secformer, puma, iron, bolt): its approximations as configured (variant
    `all`; `--ablations` adds one operator approximated at a time, experiments/baseline_accuracy.py).

Every row is evaluated on the same windows (`windows` x `window_tokens` tokens of the test plays;
`tokens` = predicted positions), and carries `perplexity_dense` (the dense row's, the same text) and
`perplexity_change_pct` against it. A diverging approximation (SecFormer's Goldschmidt inverse square
root outside its range) gives perplexity NaN and accuracy ~0.

    comet accuracy --model shakespeare-opt
    comet accuracy --model smollm2-135m          (8 windows x 256 tokens by default: minutes on 2 CPU cores)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger("comet.accuracy")

COLUMNS = ("system", "variant", "perplexity", "next_token_accuracy", "windows", "tokens")
BASELINES = ("mpcformer", "secformer", "puma", "iron", "bolt")
COMET_VARIANTS = {  # variant -> (ffn mode, head mode)
    "ffn": ("predicted", "dense"), "heads": ("dense", "predicted"), "ffn+heads": ("predicted", "predicted"),
    "oracle ffn": ("oracle", "dense"), "oracle heads": ("dense", "oracle"), "oracle ffn+heads": ("oracle", "oracle"),
}
# windows x tokens per model: SmolLM2 in float64 costs ~25 ms per position on a busy 2-core CPU
WINDOWS = {"smollm2-135m": (8, 256)}
DEFAULT_WINDOWS = (16, 256)
REPO = Path(__file__).resolve().parents[1]


def default_out(model: str) -> Path:
    return REPO / "results" / "accuracy" / f"{model}.csv"


def load_model_cfg(model: str):
    from omegaconf import OmegaConf

    from comet_core.errors import CometError

    path = REPO / "conf" / "model" / f"{model}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
        raise CometError(f"unknown model {model!r}; valid: {', '.join(names)}")
    return OmegaConf.load(path)


def check(model: str, windows: int | None, length: int | None, systems: list[str]) -> None:
    """Bad input before any work: one-line CometError."""
    from comet_core.errors import CometError
    from comet_core.systems import SYSTEMS

    mcfg = load_model_cfg(model)
    if mcfg.get("source") == "random":
        raise CometError(f"model {model} has random weights: its accuracy means nothing (use a trained model)")
    for name, v in (("--windows", windows), ("--length", length)):
        if v is not None and v < 1:
            raise CometError(f"{name} must be a positive integer, got {v}")
    if length is not None and length > int(mcfg.max_positions):
        raise CometError(f"--length {length} exceeds the {mcfg.max_positions} positions of {model}")
    bad = [s for s in systems if s not in SYSTEMS]
    if bad:
        raise CometError(f"unknown system {', '.join(bad)}; valid: {', '.join(SYSTEMS)}")


def plan(systems: list[str], kind: str, ablations: bool):
    """(system, variant, system config, (ffn mode, head mode) or None) in table order; `kind` is the
    model's activation (relu | gelu | silu), which the one-operator ablations keep approximated."""
    from omegaconf import OmegaConf

    from experiments.baseline_accuracy import _variants

    def conf(name):
        return OmegaConf.load(REPO / "conf" / "system" / f"{name}.yaml")

    out = [("dense", "exact", conf("dense"), None)]
    if "comet" in systems:   # Comet's plaintext operators are the dense ones; only its masks differ
        out += [("comet", v, conf("dense"), modes) for v, modes in COMET_VARIANTS.items()]
    for name in systems:
        if name not in ("dense", "comet"):
            out += [(name, v, c, None) for v, c in _variants(conf(name), kind, ablations)]
    return out


def accuracy_table(model_cfg, plain, tok, windows, systems: list[str], ablations: bool = False,
                   predictors=None):
    """The table for one model: every planned row evaluated on `windows` (n, L)."""
    import pandas as pd

    from comet_core.models.perplexity import evaluate
    from comet_core.models.reference import PlainDecoder
    from comet_core.models.weights import extract
    from comet_core.results.tables import git_revision
    from comet_core.sparse.masked_decoder import SparsePlainDecoder
    from comet_core.systems import load_system

    weights = extract(plain, model_cfg.family, model_cfg.activation)
    kind = "gelu" if str(model_cfg.activation).startswith("gelu") else str(model_cfg.activation)
    rows = []
    for system, variant, scfg, modes in plan(systems, kind, ablations):
        sysm = load_system(scfg)
        if modes is None:
            dec = PlainDecoder(weights, sysm)
        else:
            dec = SparsePlainDecoder(weights, sysm, predictors, ffn=modes[0], heads=modes[1])
        t0 = time.perf_counter()
        r = evaluate(dec, windows)
        rows.append(dict(system=system, variant=variant, perplexity=r["perplexity"],
                         next_token_accuracy=r["next_token_acc"], windows=len(windows), tokens=r["positions"],
                         model=model_cfg.name, window_tokens=int(windows.shape[1]), split="test",
                         cross_entropy_nats=r["cross_entropy_nats"],
                         activation_protocol=sysm.act_names[kind], softmax_protocol=sysm.softmax_name,
                         norm_protocol=sysm.norm_name,
                         ffn_density=dec.density("ffn") if modes else 1.0,
                         head_density=dec.density("head") if modes else 1.0,
                         seconds=round(time.perf_counter() - t0, 1)))
        log.info("%s %s %s: ppl %.4g, acc %.4f (%.0f s)", model_cfg.name, system, variant, r["perplexity"],
                 r["next_token_acc"], rows[-1]["seconds"])
    df = pd.DataFrame(rows)
    dense = float(df[(df.system == "dense")].perplexity.iloc[0])
    df.insert(df.columns.get_loc("tokens") + 1, "perplexity_dense", dense)
    df.insert(df.columns.get_loc("perplexity_dense") + 1, "perplexity_change_pct", 100 * (df.perplexity / dense - 1))
    df["git_rev"] = git_revision()
    return df


def run(model: str, windows: int | None = None, length: int | None = None, systems=None, ablations: bool = False,
        out: Path | None = None, overwrite: bool = False, threads: int = 2, max_chars: int | None = None) -> Path:
    """Check, evaluate, write atomically (never over an existing table without `overwrite`)."""
    import torch

    from comet_core.errors import CometError
    from comet_core.models.perplexity import held_out_windows
    from comet_core.models.zoo import load_plain_model
    from comet_core.results.machine import refuse_existing

    systems = list(systems or ["dense", "comet", *BASELINES])
    check(model, windows, length, systems)
    out = Path(out) if out is not None else default_out(model)
    if out.exists() and not overwrite:
        raise CometError(f"{out} exists; pass --overwrite to replace it, or --out for another file")
    n, L = WINDOWS.get(model, DEFAULT_WINDOWS)
    n, L = windows or n, length or L
    mcfg = load_model_cfg(model)
    predictors = None
    if "comet" in systems:   # the trained predictors first: a missing checkpoint fails before the model loads
        from omegaconf import OmegaConf

        from comet_core.config.typed import model_params, system_params
        from comet_core.sparse.predictors import load_for_system

        predictors = load_for_system(model_params(mcfg), system_params(OmegaConf.load(REPO / "conf" / "system" / "comet.yaml")))
    torch.set_num_threads(threads)
    plain, tok = load_plain_model(mcfg, seed=0)
    win = held_out_windows(tok, n, L, max_chars=max_chars)
    df = accuracy_table(mcfg, plain, tok, win, systems, ablations, predictors)
    if refuse_existing(out, overwrite):    # (a second writer meanwhile)
        raise CometError(f"{out} appeared meanwhile; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    df.to_csv(tmp, index=False, float_format="%.6g")
    tmp.replace(out)
    return out
