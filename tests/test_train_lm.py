import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

from comet_core.models.lm_training import relu_zero_fractions
from comet_core.models.zoo import load_plain_model
from tests.helpers_models import model_cfg, one_thread  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def test_relu_zero_fractions_counts_exact_zeros():
    model, _ = load_plain_model(model_cfg("tiny-opt"), seed=0)
    fr = relu_zero_fractions(model, torch.randint(0, 256, (2, 32)))
    assert len(fr) == 2 and all(0.3 < f < 0.7 for f in fr)  # random weights: about half


def test_train_lm_tiny_end_to_end_through_the_cli(tmp_path):
    env = {**os.environ, "COMET_CACHE": str(tmp_path / "cache"), "CI": "true"}
    out = tmp_path / "lm"
    cmd = [sys.executable, "-m", "cli.main", "train-lm", "lm=tiny", "threads=1", f"output_dir={out}"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == str(out.resolve())
    curve = pd.read_csv(out / "curve.csv")
    assert curve.val_loss.iloc[-1] < curve.val_loss.iloc[0]  # it learned something
    assert (out / "curve.png").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 20 and len(summary["relu_zero_fraction_per_layer"]) == 2
    # the zoo loads what train-lm saved, through the model config
    os.environ["COMET_CACHE"] = env["COMET_CACHE"]
    try:
        model, tok = load_plain_model(model_cfg("shakespeare-opt-tiny"))
    finally:
        del os.environ["COMET_CACHE"]
    ids = torch.tensor([tok.encode("ROMEO.\n")])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], 256)
    # no silent overwrite
    r2 = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r2.returncode != 0 and "overwrite=true" in r2.stderr
