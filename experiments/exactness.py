#!/usr/bin/env python3
"""Private generation vs plaintext greedy decoding on prompts from the held-out (test) plays.

For each of N prompts (prompt_len tokens cut at evenly spread places of the test plays, Hamlet and
Macbeth, which no toolkit model trained on), run `comet run-experiment` in exact mode and record
whether the privately generated tokens equal plaintext greedy decoding and the max |logit error|.

    python experiments/exactness.py --model shakespeare-opt --prompts 5 --gen 8
    python experiments/exactness.py --model smollm2-135m --prompts 5 --gen 8
    python experiments/exactness.py --model shakespeare-opt --prompts 5 --gen 8 --overrides system=comet system.heads=false \
        --out results/exactness/shakespeare-opt-comet.csv   (private vs the plaintext model with the same masks)
Writes results/exactness/<model>.csv (refuses to overwrite without --overwrite).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from comet_core.results.machine import refuse_existing  # noqa: E402
log = logging.getLogger("exactness")


def prompts(tok, n: int, length: int, chars: int = 200_000) -> list[str]:
    """n prompt texts of `length` tokens from evenly spread places of the test plays."""
    from comet_core.models.corpus import split_text

    text = split_text("test")[:chars]
    step = len(text) // (n + 1)
    out = []
    for i in range(1, n + 1):
        ids = tok.encode(text[i * step: i * step + 8 * length])[:length]
        out.append(tok.decode(ids))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shakespeare-opt")
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--gen", type=int, default=8)
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--out", default=None)
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    out = Path(a.out or REPO / "results" / "exactness" / f"{a.model}.csv")
    if refuse_existing(out, a.overwrite):
        return 2

    import pandas as pd
    from hydra import compose, initialize_config_dir

    from comet_core.models.tokenizers import load_tokenizer
    from experiments.run import run

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        base = compose("config", overrides=[f"model={a.model}", *a.overrides])
        tok = load_tokenizer(base.model.tokenizer)
        rows = []
        for i, text in enumerate(prompts(tok, a.prompts, a.prompt_len)):
            cfg = compose("config", overrides=[f"model={a.model}", f"gen_tokens={a.gen}", "save_ledger=false",
                                               f"prompt_len={a.prompt_len}", *a.overrides])
            cfg.prompt = text
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                s = run(cfg, Path(tmp) / "run")
                sp_path = Path(tmp) / "run" / "sparsity.csv"
                sp = pd.read_csv(sp_path) if sp_path.exists() else None
            m = s["metrics"]
            tot = m[(m.network == cfg.network.name) & (m.phase == "total")].iloc[0]
            rows.append(dict(model=a.model, prompt=i, prompt_tokens=len(s["ids"]), new_tokens=a.gen,
                             tokens_match=bool(s["match"]), max_logit_err=float(s["max_logit_err"]),
                             predicted_token_agreement=s.get("predicted_agreement", float("nan")),
                             ffn_jaccard_min=float(sp[sp.kind == "ffn"].jaccard.min()) if sp is not None else float("nan"),
                             private_ids=" ".join(map(str, s["private"])), plaintext_ids=" ".join(map(str, s["plaintext"])),
                             private_text=s["private_text"], plaintext_text=s["plaintext_text"],
                             online_bytes=int(tot.online_bytes), rounds=int(tot.rounds),
                             wall_s=round(time.perf_counter() - t0, 1), truncation=cfg.engine.truncation,
                             frac_bits=cfg.engine.frac_bits, system=cfg.system.name,
                             ffn_decode_density=float(sp[sp.step > 0].density.mean()) if sp is not None else float("nan"),
                             ffn_prefill_density=float(sp[sp.step == 0].density.mean()) if sp is not None else float("nan"),
                             mask_flips=int(sp.flips.sum()) if sp is not None else 0))
            log.info("prompt %d: match=%s max|logit err|=%.3g (%s)", i, s["match"], s["max_logit_err"],
                     repr(s["private_text"]))
    df = pd.DataFrame(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(df[["prompt", "tokens_match", "max_logit_err", "private_text", "plaintext_text", "wall_s"]].to_string(index=False))
    print(f"all match: {bool(df.tokens_match.all())}; max |logit error|: {df.max_logit_err.max():.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
