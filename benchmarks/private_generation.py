#!/usr/bin/env python3
"""Benchmark: exact-mode private generation with a real model, beside plaintext.

Default: SmolLM2-135M (all 30 layers), a 32-token prompt from a held-out play, 8 new tokens.
Prints one table (wall time, peak memory, online/offline bytes, rounds, plaintext time, whether the
private tokens equal plaintext greedy decoding, max logit error) and writes it as CSV.

    python benchmarks/private_generation.py [--model smollm2-135m] [--prompt-len 32] [--gen 8]
        [--out results/private_generation.csv] [--overwrite] [--threads 2]
Targets (issue 3): under 3 minutes and under 8 GiB on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from comet_core.results.machine import refuse_existing  # noqa: E402
log = logging.getLogger("bench.generation")

DEFAULT_PROMPT = ("Duncan. What bloody man is that? He can report, As seemeth by his plight, of the revolt "
                  "The newest state. Malcolm. This is the sergeant Who like a good and hardy soldier fought")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT, help="text; truncated to --prompt-len tokens")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--gen", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides")
    ap.add_argument("--out", default=str(REPO / "results" / "private_generation.csv"))
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    out = Path(a.out)
    if refuse_existing(out, a.overwrite):
        return 2

    import pandas as pd
    import torch
    from hydra import compose, initialize_config_dir

    from experiments.run import run

    torch.set_num_threads(a.threads)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={a.model}", f"prompt_len={a.prompt_len}", "save_ledger=false",
                                           f"gen_tokens={a.gen}", *a.overrides])
    cfg.prompt = a.prompt  # set directly: Hydra's override grammar would split text at commas
    load_avg = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = run(cfg, Path(tmp) / "run")
        wall = time.perf_counter() - t0
    m = s["metrics"]
    tot = m[(m.network == cfg.network.name) & (m.phase == "total")].iloc[0]
    row = dict(model=a.model, prompt_tokens=len(s["ids"]), new_tokens=a.gen, layers=int(tot.layers),
               wall_s=round(wall, 2), private_compute_s=round(float(tot.compute_s), 2),
               plaintext_s=round(float(tot.plaintext_s), 3),
               peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
               online_bytes=int(tot.online_bytes), offline_bytes=int(tot.offline_bytes), rounds=int(tot.rounds),
               lan_comm_s=round(float(tot.comm_s), 2), tokens_match=bool(s["match"]),
               max_logit_err=float(s["max_logit_err"]), private_text=s["private_text"],
               plaintext_text=s["plaintext_text"], threads=a.threads, load_avg_1m=load_avg,
               truncation=cfg.engine.truncation, frac_bits=cfg.engine.frac_bits, torch=torch.__version__)
    df = pd.DataFrame([row])
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(df.T.to_string(header=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
