"""The design-space map (plotting/design_space.py): the FFN-block costs it reads from a run are the cost
formulas (Comet's ffn_step_cost, dense's fc1 + ReLU + fc2), the ratios are dense / Comet under the same
weight-mask lifetime, and the generated section names the best regime."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import experiments.run  # noqa: F401  (registers the config schemas before compose)
from comet_core.comm.network import Network
from comet_core.mpc import arith, compare
from comet_core.mpc.engine import MPC, EngineConfig
from comet_core.systems import comet as C
from plotting import design_space as DS
from plotting.sweeps import Job

CONF = Path(__file__).resolve().parents[1] / "conf"
NETS = [Network("lan", 5e9, 0.8e-3), Network("wan-100m", 1e8, 0.08)]


def _job(tmp: Path, regime: str) -> Job:
    from experiments.run import run

    over = ["+ds_scenario=ffn_block_quick", f"+ds_regime={regime}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*over, "mode=cost", f"output_dir={tmp / regime}", "seed=1",
                                            "save_ledger=false"])
    run(cfg, tmp / regime)
    return Job(tmp / regime, OmegaConf.load(tmp / regime / "config.yaml"), over, True)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ds")
    return {r: _job(tmp, r) for r in ("comet-call-online", "dense-call", "comet-deployment-deployment",
                                      "dense-deployment")}


def test_ffn_block_step_is_the_cost_formula(jobs):
    m = MPC(EngineConfig(), seed=0, mode="cost")
    d, F, r = 64, 256, 16                                             # tiny-opt; predictor rank d / 4
    sp = pd.read_csv(jobs["comet-call-online"].dir / "sparsity.csv")
    k = int(sp[(sp.layer == 0) & (sp.step == 1) & (sp.kind == "ffn")].active.iloc[0])
    assert k == round(0.1 * F) or abs(k - 0.1 * F) < 1
    comet = DS.ffn_block_costs(jobs["comet-call-online"], NETS)[0]
    assert comet["step_bytes"] == C.ffn_step_cost(m, 1, d, F, r, k, False).online_bytes
    assert comet["request_bytes"] == C.setup_cost(m, d, F, r, False).online_bytes   # the online shuffle
    dense = DS.ffn_block_costs(jobs["dense-call"], NETS)[0]
    want = arith.matmul_cost(m, d, d * F, F) + compare.relu_cost(m, F) + arith.matmul_cost(m, F, F * d, d)
    assert dense["step_bytes"] == want.online_bytes and dense["request_bytes"] == 0
    dep = DS.ffn_block_costs(jobs["comet-deployment-deployment"], NETS)[0]
    assert dep["request_bytes"] == 0 and dep["deploy_bytes"] > C.setup_cost(m, d, F, r, False).online_bytes


def test_map_pairs_each_comet_row_with_dense_of_the_same_lifetime(jobs):
    rows = pd.DataFrame([r for j in jobs.values() for r in DS.job_rows(j, NETS)])
    t = DS.map_table(rows)
    assert len(t) == 2 * 2                                            # two Comet jobs x two networks
    for row in t.itertuples():
        d = rows[(rows.system == "dense") & (rows.weight_masks == row.weight_masks) & (rows.network == row.network)]
        assert row.dense_bytes == d.bytes.iloc[0] and row.speedup == pytest.approx(d.time_s.iloc[0] / row.comet_s)
        assert row.relu_bits == 64 and row.dense_relu_bits == 64
    assert set(t.leakage) == {DS.LEAKAGE["online"], DS.LEAKAGE["deployment"]}
    text = DS.pays_off_markdown(t)
    assert text.startswith("Generated from `results/design_space/data.csv`") and "Under per-deployment masks" in text
    assert "| lan | call | masks call, perm online |" in text
