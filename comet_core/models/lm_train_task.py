"""`comet train-lm`: train the toolkit's ReLU OPT model; save the checkpoint (cache) and its metrics (results)."""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
from pathlib import Path

from comet_core.config.typed import to_yaml, train_lm_params

log = logging.getLogger(__name__)


def _git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except Exception:
        return "unknown"


def _plot_curve(curve, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [r["step"] for r in curve]
    a.plot(steps[1:], [r["train_loss"] for r in curve][1:], label="train (EMA)")
    a.plot(steps, [r["val_loss"] for r in curve], label="validation")
    a.set(xlabel="step", ylabel="loss (nats/byte)", title="loss")
    a.legend()
    layers = sorted(k for k in curve[0] if k.startswith("zeros_layer"))
    for k in layers:
        b.plot(steps, [r[k] for r in curve], label=k.replace("zeros_", ""))
    b.set(xlabel="step", ylabel="fraction of zeros after ReLU", title="FFN activation sparsity", ylim=(0, 1))
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def train_lm_task(cfg) -> None:
    """The command's job: ``cfg`` is its composed config (a TrainLMSchema, or what converts to one)."""
    import pandas as pd
    import torch

    from comet_core.errors import CometError
    from comet_core.models.cache import cache_path
    from comet_core.models.lm_training import train_lm

    cfg = train_lm_params(cfg)
    torch.set_num_threads(int(cfg.threads))
    out = Path(cfg.output_dir)
    ckpt = cache_path(cfg.checkpoint)
    if not cfg.overwrite:
        if (ckpt / "config.json").exists():
            raise CometError(f"checkpoint {ckpt} exists; pass overwrite=true to retrain it")
        if (out / "summary.json").exists():
            raise CometError(f"results in {out} exist; pass overwrite=true to replace them")
    res = train_lm(cfg.lm, seed=int(cfg.seed))

    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    res.model.save_pretrained(str(tmp))
    shutil.rmtree(ckpt, ignore_errors=True)
    tmp.rename(ckpt)

    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(res.curve).to_csv(out / "curve.csv", index=False, float_format="%.5g")
    _plot_curve(res.curve, out / "curve.png")
    pd.DataFrame({"layer": range(len(res.sparsity)), "relu_zero_fraction": res.sparsity}).to_csv(
        out / "sparsity.csv", index=False, float_format="%.4f")
    summary = {
        "model": cfg.lm.name, "params": sum(p.numel() for p in res.model.parameters()),
        "steps": res.steps, "train_seconds": round(res.seconds, 1), "stopped_early": res.stopped_early,
        "val_loss_nats_per_byte": res.val_loss, "val_bits_per_byte": res.val_loss / math.log(2),
        "val_ppl_per_byte": math.exp(res.val_loss),
        "val_windows": int(cfg.lm.final_eval_windows), "seq_len": int(cfg.lm.seq_len),
        "relu_zero_fraction_per_layer": [round(z, 4) for z in res.sparsity],
        "layers_ge_70pct_zeros": sum(z >= 0.7 for z in res.sparsity),
        "checkpoint": str(ckpt), "seed": int(cfg.seed), "threads": int(cfg.threads), "git_rev": _git_rev(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "config.yaml").write_text(to_yaml(cfg))
    log.info("val perplexity %.3f per byte; zeros per layer %s", summary["val_ppl_per_byte"],
             summary["relu_zero_fraction_per_layer"])
    print(f"checkpoint: {ckpt}")
    print(out.resolve())
