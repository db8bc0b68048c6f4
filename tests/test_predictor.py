import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from comet_core.errors import CometError
from comet_core.models.zoo import load_plain_model
from comet_core.predictor import apply as ap
from comet_core.predictor.checkpoint import PredictorSet, load_predictors, model_signature, save_predictors
from comet_core.predictor.collect import calibrate, recording
from comet_core.predictor.metrics import confusion, scores, threshold_for_recall
from comet_core.predictor.model import LowRankPredictor
from comet_core.predictor.profile import load_profile, reactivation, union_density
from comet_core.predictor.train import TrainSettings, fit
from tests.helpers_models import model_cfg, tiny_llama, one_thread  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def test_predictor_shapes_and_thresholding():
    p = LowRankPredictor(16, 4, 40)
    x = torch.randn(2, 7, 16)
    logits = p(x)
    assert logits.shape == (2, 7, 40)
    assert torch.allclose(logits, p.w2(p.w1(x)))  # no non-linearity between the two low-rank layers
    p.threshold.fill_(0.1)
    assert torch.equal(p.predict(x), logits > 0.1)
    p.threshold.fill_(float("inf"))
    assert not p.predict(x).any()
    assert p.num_params() == 16 * 4 + 4 + 4 * 40 + 40 and p.macs() == 16 * 4 + 4 * 40


def test_recall_precision_on_hand_made_case():
    pred = torch.tensor([1, 1, 0, 0, 1, 0], dtype=torch.bool)
    true = torch.tensor([1, 0, 1, 0, 1, 0], dtype=torch.bool)
    c = confusion(pred, true)
    assert c == {"tp": 2, "fp": 1, "fn": 1, "tn": 2}
    s = scores(c)
    assert s["recall"] == pytest.approx(2 / 3) and s["precision"] == pytest.approx(2 / 3)
    assert s["true_sparsity"] == pytest.approx(3 / 6) and s["predicted_sparsity"] == pytest.approx(3 / 6)


@pytest.mark.parametrize("target", [0.5, 0.9, 0.93, 1.0])
def test_threshold_meets_target_recall_and_is_tightest(target):
    pos = torch.randn(1000)
    d = threshold_for_recall(pos, target)
    assert (pos > d).float().mean() >= target
    # any larger threshold (next positive value up) would miss the target
    above = pos[pos > d].min()
    assert (pos > above).float().mean() < target


def test_fit_learns_a_linear_rule_to_target_recall():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 30, generator=g)
    X = torch.randn(3000, 12, generator=g)
    Y = (X @ w) > 1.0  # low-rank-representable ground truth, ~39% positives
    s = TrainSettings(rank=12, target_recall=0.93, max_epochs=10, batch_size=128, lr=1e-2)
    p, info = fit(X[:2000].numpy(), Y[:2000].numpy(), X[2000:2500].numpy(), Y[2000:2500].numpy(), s)
    sc = scores(confusion(p.predict(X[2500:]), Y[2500:]))
    assert sc["recall"] > 0.9 and sc["precision"] > 0.9
    assert sc["predicted_sparsity"] > sc["true_sparsity"] - 0.05  # skips nearly every inactive unit


def _set(cfg, rank=3):
    d, F, H, L = cfg.hidden_size, cfg.ffn_dim, cfg.num_heads, cfg.num_layers
    return PredictorSet(model=model_signature(cfg), ffn=[LowRankPredictor(d, rank, F) for _ in range(L)],
                        head=[LowRankPredictor(d, rank, H) for _ in range(L)], ffn_tau=[0.0] * L, head_tau=[0.2] * L)


def test_checkpoint_round_trip_and_mismatch_refusal(tmp_path):
    cfg = model_cfg("tiny-opt")
    ps = _set(cfg)
    ps.ffn[1].threshold.fill_(0.7)
    save_predictors(ps, tmp_path / "p.pt")
    back = load_predictors(tmp_path / "p.pt", cfg)
    assert torch.equal(back.ffn[1].w1.weight, ps.ffn[1].w1.weight) and float(back.ffn[1].threshold) == pytest.approx(0.7)
    assert back.head_tau == ps.head_tau
    assert len(load_predictors(tmp_path / "p.pt", model_cfg("tiny-opt", layers=1)).ffn) == 1
    with pytest.raises(CometError, match="trained for model 'tiny-opt'"):
        load_predictors(tmp_path / "p.pt", model_cfg("tiny-opt", name="other"))
    with pytest.raises(CometError, match="ffn_dim"):
        load_predictors(tmp_path / "p.pt", model_cfg("tiny-opt", ffn_dim=512))
    with pytest.raises(CometError, match="num_layers"):
        load_predictors(tmp_path / "p.pt", model_cfg("tiny-opt", num_layers=3))
    with pytest.raises(CometError, match="not found"):
        load_predictors(tmp_path / "none.pt", cfg)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CometError, match="corrupt"):
        load_predictors(tmp_path / "bad.pt", cfg)


@pytest.mark.parametrize("cfg", [model_cfg("tiny-opt"), tiny_llama()], ids=["opt", "llama"])
def test_masks_oracle_and_extremes(cfg):
    model, _ = load_plain_model(cfg, seed=0)
    x = torch.randint(0, 256, (2, 16))
    relu = cfg.activation == "relu"
    ffn_tau, head_tau = calibrate(model, x.numpy(), None if relu else 0.5, 0.5, batch_size=2)
    assert ffn_tau[0] == 0.0 if relu else ffn_tau[0] > 0
    ps = _set(cfg)
    ps.ffn_tau, ps.head_tau = ffn_tau, head_tau
    with torch.no_grad():
        dense = model(input_ids=x).logits
        with ap.sparsity_applied(model, ps, ffn="oracle") as kept:
            oracle = model(input_ids=x).logits
        for p in ps.ffn + ps.head:
            p.threshold.fill_(-float("inf"))
        with ap.sparsity_applied(model, ps, ffn="predicted", head="predicted") as kept_all:
            all_on = model(input_ids=x).logits
        for p in ps.head:
            p.threshold.fill_(float("inf"))
        with ap.sparsity_applied(model, ps, head="predicted") as kept_none:
            no_heads = model(input_ids=x).logits
    assert torch.allclose(all_on, dense, atol=1e-6) and ap.density(kept_all, "ffn") == 1.0
    assert ap.density(kept_none, "head") == 0.0 and not torch.allclose(no_heads, dense, atol=1e-3)
    if relu:  # ReLU zeros are exact: the oracle mask changes nothing
        assert torch.allclose(oracle, dense, atol=1e-6) and 0.3 < ap.density(kept, "ffn") < 0.7
    else:  # CATS at 50%: about half the neurons are cut and the output moves
        assert abs(ap.density(kept, "ffn") - 0.5) < 0.1 and not torch.allclose(oracle, dense, atol=1e-4)


def test_head_shares_sum_to_one_per_token():
    model, _ = load_plain_model(model_cfg("tiny-opt"), seed=0)
    with torch.no_grad(), recording(model) as rec:
        model(input_ids=torch.randint(0, 256, (1, 9)))
    s = rec[0]["head_share"]
    assert s.shape == (1, 9, 4) and torch.allclose(s.sum(-1), torch.ones(1, 9))


def test_union_and_reactivation_on_hand_made_masks():
    m = np.zeros((1, 4, 3), dtype=bool)
    m[0, 0, 0] = m[0, 1, 1] = m[0, 3, 0] = True
    assert union_density(m, 1) == pytest.approx(3 / 12)
    assert union_density(m, 2) == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert union_density(m, 4) == pytest.approx(2 / 3)
    # w=1: inactive (t, u) with t in {0,1,2}: 2 + 2 + 3 = 7 cases; active at t+1: (0,u1), (2,u0) -> 2/7
    assert reactivation(m, 1) == pytest.approx(2 / 7)
    # w=3 (only t=0 has a full horizon): u1 comes on at t1, u2 never -> 1/2
    assert reactivation(m, 3) == pytest.approx(1 / 2)


def test_train_predictor_cli_end_to_end(tmp_path):
    env = {**os.environ, "COMET_CACHE": str(tmp_path / "cache"), "CI": "true"}
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "cli.main", "train-predictor", "model=tiny-opt", "predictor=tiny", "threads=1", f"output_dir={out}"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == str(out.resolve())
    met = pd.read_csv(out / "metrics.csv")
    assert {"layer", "kind", "recall", "precision", "true_sparsity", "predicted_sparsity",
            "predictor_params", "flops_ratio"} <= set(met.columns)
    assert set(met.kind) == {"ffn", "head"} and len(met) == 2 * 2
    # thresholds are tuned to the target recall 0.93 on validation windows; the test windows stay near it
    # (measured 0.93-0.96; was "recall within [0, 1]", which no result can fail)
    assert (met.val_recall >= 0.93 - 1e-3).all(), met[["layer", "kind", "val_recall"]]
    assert (met.recall >= 0.8).all(), met[["layer", "kind", "recall"]]
    acc = pd.read_csv(out / "accuracy.csv")
    assert list(acc.variant)[:3] == ["dense", "oracle-ffn", "predicted-ffn"]
    assert pd.read_csv(out / "sweep.csv").target_recall.nunique() == 2
    prof = load_profile(out / "profile.json", model_cfg("tiny-opt"))
    # a union over more tokens covers at least as many neurons (was "within [0, 1]", which cannot fail)
    assert prof.num_layers == 2 and prof.ffn_density(0) - 1e-9 <= prof.ffn_union_density(0, 8) \
        <= prof.ffn_union_density(0, 32) + 1e-9
    assert prof.ffn_union_density(0, 32) >= prof.ffn_density(0) - 1e-9
    ps = load_predictors(tmp_path / "cache" / "predictors" / "tiny-opt" / "tiny.pt", model_cfg("tiny-opt"))
    assert len(ps.ffn) == 2
    r2 = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r2.returncode != 0 and "overwrite=true" in r2.stderr


# -- a checkpoint is data, never code (issue 22, S1) ----------------------------------------------------


class _RunsCode:
    """Pickled into a crafted checkpoint: unpickling it would call open(marker, 'w')."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(tmp_path) -> tuple[Path, Path]:
    from comet_core.predictor.checkpoint import FORMAT

    marker = tmp_path / "ran-code"
    path = tmp_path / "crafted.pt"
    torch.save({"format": FORMAT, "model": _RunsCode(marker)}, path)
    assert not marker.exists()
    return path, marker


def test_a_crafted_checkpoint_runs_no_code_exact_and_cost(tmp_path):
    """A .pt whose pickle would run code is refused with one line, in both the exact loader and the
    cost-mode rank probe; the marker file it would write never appears."""
    from omegaconf import OmegaConf

    from comet_core.sparse.predictors import shared_predictor_shapes

    path, marker = _crafted(tmp_path)
    with pytest.raises(CometError, match="corrupt or not a") as e:
        load_predictors(path, model_cfg("tiny-opt"))
    assert "\n" not in str(e.value) and not marker.exists()
    from comet_core.config.typed import model_params, system_params

    sys_cfg = system_params({"name": "comet", "predictor_checkpoint": str(path)})
    with pytest.raises(CometError, match="corrupt or not a") as e:
        shared_predictor_shapes(model_params(model_cfg("tiny-opt")), sys_cfg, 1)
    assert "\n" not in str(e.value) and not marker.exists()


def test_the_shipped_predictors_load_as_plain_data():
    from omegaconf import OmegaConf

    shipped = ROOT / "models" / "predictors" / "shakespeare-opt" / "default.pt"
    torch.load(shipped, map_location="cpu", weights_only=True)     # tensors and plain data only
    cfg = OmegaConf.load(ROOT / "conf" / "model" / "shakespeare-opt.yaml")
    assert len(load_predictors(shipped, cfg).ffn) == int(cfg.num_layers)


@pytest.mark.parametrize("mode", ["exact", "cost"])
def test_cli_refuses_a_crafted_checkpoint_in_one_line(tmp_path, mode):
    path, marker = _crafted(tmp_path)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "cli.main", "run-experiment", "system=comet", f"mode={mode}",
                        "model=tiny-opt", "model.layers=1", "gen_tokens=1", "prompt=hi",
                        f"system.predictor_checkpoint={path}", f"output_dir={out}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and not marker.exists(), r.stderr
    assert "Traceback" not in r.stderr and "KeyError" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("[")]   # less the log
    assert len(lines) == 1 and lines[0].startswith("error:") and "could run code" in lines[0], r.stderr
    assert not (out / "COMPLETE").exists()
