"""`comet run-experiment`: private generation with one model x system x network, as tidy tables.

A Hydra task function (module imports no torch at import time; heavy imports happen inside).
Writes config.yaml, metrics.csv, ops.csv, ledger.csv.gz and generation.csv into the output folder
and prints that folder's absolute path as the last line of stdout.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

log = logging.getLogger("comet.run")

RESULT_FILES = ("metrics.csv", "ops.csv", "generation.csv")


def output_dir(cfg) -> Path:
    from hydra.core.hydra_config import HydraConfig

    try:
        return Path(HydraConfig.get().runtime.output_dir).resolve()
    except ValueError:  # called outside Hydra (tests): use cfg.output_dir
        return Path(cfg.output_dir).resolve()


def validate(cfg, out: Path) -> None:
    """Reject bad values before any work starts (one-line ConfigError)."""
    from comet_core.comm.network import Network
    from comet_core.errors import require
    from comet_core.models.zoo import n_layers

    require(cfg.mode in ("exact", "cost"), f"mode must be exact or cost, got {cfg.mode!r}")
    require(isinstance(cfg.seed, int), f"seed must be an integer, got {cfg.seed!r}")
    require(isinstance(cfg.gen_tokens, int) and 1 <= cfg.gen_tokens <= 1024,
            f"gen_tokens must be an integer in 1..1024 (the paper: 1-16), got {cfg.gen_tokens!r}")
    require(cfg.prompt_len is None or (isinstance(cfg.prompt_len, int) and cfg.prompt_len >= 1),
            f"prompt_len must be a positive integer or null, got {cfg.prompt_len!r}")
    require(cfg.device in ("cpu", "cuda"), f"device must be cpu or cuda, got {cfg.device!r}")
    require(isinstance(cfg.prompt, str) and cfg.prompt.strip() != "", "prompt must be a non-empty string")
    Network.from_cfg(cfg.network)
    engine_config(cfg)
    n_layers(cfg.model)
    existing = [f for f in RESULT_FILES if (out / f).exists()]
    require(not existing or cfg.overwrite,
            f"{out} already holds results ({', '.join(existing)}); choose another output_dir= or pass overwrite=true")


def engine_config(cfg):
    from comet_core.mpc.engine import EngineConfig, FunctionConfig

    e = cfg.engine
    return EngineConfig(
        frac_bits=e.frac_bits, truncation=e.truncation, reuse_weight_masks=bool(e.reuse_weight_masks),
        functions=FunctionConfig(exp_iterations=e.exp_iterations, exp_clamp=bool(e.exp_clamp), reciprocal_nr_iters=e.reciprocal_nr_iters,
                                 reciprocal_range=tuple(e.reciprocal_range), inv_sqrt_nr_iters=e.inv_sqrt_nr_iters,
                                 inv_sqrt_range=tuple(e.inv_sqrt_range), sigmoid_nr_iters=e.sigmoid_nr_iters))


def preset_networks(selected):
    """The selected network first, then every other preset of conf/network (modelled time for each)."""
    import yaml

    from comet_core.comm.network import Network

    nets = [selected]
    conf = Path(__file__).resolve().parent.parent / "conf" / "network"
    for p in sorted(conf.glob("*.yaml")):
        d = yaml.safe_load(p.read_text())
        if d["name"] != selected.name:
            nets.append(Network(d["name"], float(d["bandwidth_bps"]), float(d["latency_s"])))
    return nets


def prompt_ids(tok, cfg) -> list[int]:
    """The client's prompt as token ids; prompt_len repeats the text's tokens to reach that length."""
    from comet_core.models.zoo import check_positions

    ids = tok.encode(cfg.prompt)
    if cfg.prompt_len is not None:
        reps = -(-cfg.prompt_len // max(len(ids), 1))
        ids = (ids * reps)[: cfg.prompt_len]
    check_positions(len(ids), cfg.model, cfg.gen_tokens)
    return ids


def run(cfg, out: Path) -> dict:
    """The experiment itself (plain function: the CLI, tests and sweeps call it)."""
    import torch
    from omegaconf import OmegaConf

    from comet_core.comm.network import Network
    from comet_core.models.generate import plaintext_generate, private_generate
    from comet_core.models.secure import SecureDecoder
    from comet_core.models.tokenizers import load_tokenizer
    from comet_core.models.weights import extract, share_weights, weight_shapes
    from comet_core.models.zoo import load_plain_model, n_layers
    from comet_core.mpc.engine import MPC
    from comet_core.results import tables
    from comet_core.systems import load_system

    validate(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    cost = cfg.mode == "cost"
    tok = load_tokenizer(cfg.model.get("tokenizer", "bytes"))
    ids = prompt_ids(tok, cfg)  # a prompt too long for the model fails here, before any loading
    log.info("loading model %s (%s)", cfg.model.name, "shapes only" if cost else cfg.model.source)
    if cost:  # cost mode: the same protocol code on data-free shapes; no weights are loaded
        plain = None
        plain_weights = weight_shapes(cfg.model, n_layers(cfg.model))
    else:
        plain, tok = load_plain_model(cfg.model, seed=cfg.seed)
        plain_weights = extract(plain, cfg.model.family, cfg.model.activation)
    vocab = int(cfg.model.vocab_size)

    mpc = MPC(engine_config(cfg), seed=cfg.seed, device=cfg.device, mode=cfg.mode)
    system = load_system(cfg.system)
    weights = share_weights(mpc, plain_weights)
    model = SecureDecoder(mpc, weights, system)
    log.info("private generation: %d prompt tokens, %d new tokens, %d layers, mode=%s",
             len(ids), cfg.gen_tokens, model.n_layers, cfg.mode)
    gen = private_generate(mpc, model, ids, cfg.gen_tokens, vocab, output=cfg.get("output", "token"))

    ref = None
    if not cost:
        ref = plaintext_generate(plain, ids, cfg.gen_tokens)

    # -- tables -------------------------------------------------------------------------------------
    ledger = mpc.ledger.frame()
    labels = dict(model=cfg.model.name, system=cfg.system.name, mode=cfg.mode, seed=cfg.seed,
                  frac_bits=cfg.engine.frac_bits, layers=model.n_layers, prompt_tokens=len(ids),
                  gen_tokens=cfg.gen_tokens, device=cfg.device, git_rev=tables.git_revision())
    nets = preset_networks(Network.from_cfg(cfg.network))
    metrics = tables.metrics_table(ledger, gen.stage_seconds, nets, labels, compute_measured=not cost)
    if ref is not None:
        metrics["plaintext_s"] = ref.stage_seconds["total"]
    ops = tables.ops_table(ledger)
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    metrics.to_csv(out / "metrics.csv", index=False)
    ops.to_csv(out / "ops.csv", index=False)
    if cfg.get("save_ledger", True):
        ledger.to_csv(out / "ledger.csv.gz", index=False)
    summary = dict(out=out, metrics=metrics, ids=ids, private=gen.tokens)
    if ref is not None:
        import pandas as pd

        rows = []
        for src, g in (("private", gen), ("plaintext", ref)):
            for step, t in enumerate(g.tokens):
                rows.append(dict(source=src, step=step, token_id=t, text=tok.decode([t])))
        pd.DataFrame(rows).to_csv(out / "generation.csv", index=False)
        errs = [float((a.double() - b.double()).abs().max()) for a, b, p, q in
                zip(gen.logits, ref.logits, gen.tokens, ref.tokens)]
        same_prefix = 0
        for p, q in zip(gen.tokens, ref.tokens):
            if p != q:
                break
            same_prefix += 1
        summary.update(plaintext=ref.tokens, match=gen.tokens == ref.tokens,
                       max_logit_err=max(errs[: same_prefix + 1]) if errs else float("nan"),
                       private_text=tok.decode(gen.tokens), plaintext_text=tok.decode(ref.tokens),
                       prompt_text=tok.decode(ids))
        metrics["tokens_match"] = summary["match"]
        metrics["max_logit_err"] = summary["max_logit_err"]
        metrics.to_csv(out / "metrics.csv", index=False)
    return summary


def _print_summary(s: dict) -> None:
    m = s["metrics"]
    first = m[m.network == m.network.iloc[0]]
    lines = []
    if "plaintext" in s:
        lines += [f"prompt:    {s['prompt_text']!r}",
                  f"private:   {s['private_text']!r}",
                  f"plaintext: {s['plaintext_text']!r}",
                  f"tokens match: {s['match']}   max |logit error| vs plaintext: {s['max_logit_err']:.3g}"]
    cols = ["network", "phase", "online_bytes", "offline_bytes", "rounds", "compute_s", "comm_s", "total_s"]
    lines.append(first[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print("\n".join(lines))


def run_experiment_task(cfg) -> None:
    """Hydra entry point: run, print a summary, and the output folder as the last line."""
    from comet_core.errors import CometError

    out = output_dir(cfg)
    try:
        summary = run(cfg, out)
    except CometError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    _print_summary(summary)
    print(out)
