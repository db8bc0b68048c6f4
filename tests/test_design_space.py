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


# -- predictor points (issue 25): measured density, the strongest dense, the accuracy join -------------------

def _row(**kw) -> pd.Series:
    base = dict(scenario="ffn_block", network="lan", weight_masks="call", permutation="preprocessed",
                predictor_rank=512, predictor_bits=64, block=1, count_padding="none", relu_bits=64,
                predictor="curve", hidden_size=2048)
    return pd.Series({**base, **kw})


def test_strongest_dense_takes_the_reduced_bit_relu_only_beside_the_same_bits():
    dense = pd.DataFrame([dict(scenario="ffn_block", network="lan", weight_masks="call", relu_bits=b, time_s=t)
                          for b, t in ((64, 3.0), (16, 2.0), (8, 2.5))]
                         + [dict(scenario="ffn_block", network="lan", weight_masks="deployment", relu_bits=8, time_s=0.1)])
    assert DS.strongest_dense(dense, _row()).relu_bits == 64                       # 64-bit Comet: 64-bit dense
    assert DS.strongest_dense(dense, _row(predictor_bits=8)).relu_bits == 8        # 8 bits: the 8-bit ReLU
    assert DS.strongest_dense(dense, _row(predictor_bits=16)).relu_bits == 16
    assert DS.strongest_dense(dense, _row(predictor_bits=12)).relu_bits == 64      # no 12-bit dense: 64
    slow = dense.assign(time_s=[3.0, 2.0, 9.0, 0.1])
    assert DS.strongest_dense(slow, _row(predictor_bits=8)).relu_bits == 64        # only where it is faster


def test_accuracy_join_reads_the_same_predictor_by_rank_over_d_bits_and_block():
    curve = pd.DataFrame([dict(labels="cats", rank=8, bits=64, block=1, recall=0.93, perplexity=6.0,
                               perplexity_dense=5.0),
                          dict(labels="cats", rank=64, bits=8, block=1, recall=0.95, perplexity=5.5,
                               perplexity_dense=5.0),
                          dict(labels="cats", rank=64, bits=64, block=16, recall=0.931, perplexity=5.1,
                               perplexity_dense=5.0),
                          dict(labels="product", rank=64, bits=64, block=1, recall=0.9, perplexity=9.0,
                               perplexity_dense=5.0)])
    default = pd.DataFrame([dict(variant="predicted-ffn", ppl_change_pct=0.09, recall=0.931)])
    a = DS.accuracy_of(_row(predictor_rank=64), curve, default)                    # 64 / 2048 = 8 / 256
    assert a["accuracy_change"] == pytest.approx(20.0) and a["recall"] == 0.93 and "rank 8" in a["accuracy_source"]
    a = DS.accuracy_of(_row(predictor_rank=1024, hidden_size=4096, predictor_bits=8), curve, default)
    assert a["accuracy_change"] == pytest.approx(10.0) and "bits 8" in a["accuracy_source"]
    assert DS.accuracy_of(_row(block=16), curve, default)["accuracy_change"] == pytest.approx(2.0)
    for missing in (_row(), _row(predictor_bits=12), _row(predictor_rank=100)):    # not measured: blank
        a = DS.accuracy_of(missing, curve, default)
        assert pd.isna(a["accuracy_change"]) and a["accuracy_source"] == ""
    a = DS.accuracy_of(_row(predictor="default"), curve, default)
    assert a["accuracy_change"] == 0.09 and "accuracy.csv" in a["accuracy_source"]
    assert pd.isna(DS.accuracy_of(_row(predictor="default"), curve, None)["accuracy_change"])


def test_committed_curve_has_every_accuracy_row_the_map_asks_for():
    """The sweep's predictor points all find their measurement (rank d/32..d/4, bits 64|16|12|8, block 1|4|16|64)."""
    curve, default = DS.load_accuracy()
    for rank, bits, block in [(r, 64, 1) for r in (64, 128, 256, 512)] + [(512, b, 1) for b in (16, 12, 8)] \
            + [(512, 64, b) for b in (4, 16, 64)]:
        a = DS.accuracy_of(_row(predictor_rank=rank, predictor_bits=bits, block=block), curve, default)
        assert not pd.isna(a["accuracy_change"]) and a["recall"] >= 0.9, (rank, bits, block)
    assert not pd.isna(DS.accuracy_of(_row(predictor="default"), curve, default)["accuracy_change"])


def test_a_predictor_point_runs_at_its_measured_density_with_its_accuracy(tmp_path, jobs):
    """comet-call-preprocessed-rank-d32 (tiny-opt d = 64: rank 2 = shakespeare-opt's rank 8 / 256): the decode
    step reveals 10% true density x the curve's predicted / true density at rank 8, not the forced 90%, and
    the map row carries that sparsity, its source and the rank-8 row's perplexity change."""
    from comet_core.config.typed import system_params
    from comet_core.sparse.predictors import rank_density_factor

    job = _job(tmp_path, "comet-call-preprocessed-rank-d32")
    assert int(job.cfg.system.predictor_rank) == 2
    factor = rank_density_factor(system_params(job.cfg.system), 2, 64)
    rows = pd.DataFrame([r for j in (job, jobs["dense-call"]) for r in DS.job_rows(j, NETS)])
    t = DS.map_table(rows)
    r = t.iloc[0]
    assert r.predictor == "curve" and "rank_curve(r=2" in r.sparsity_source
    assert r.predicted_sparsity == pytest.approx(1 - round(256 * 0.1 * factor) / 256)
    curve, _ = DS.load_accuracy()
    m = curve[(curve.labels == "cats") & (curve["rank"] == 8) & (curve.bits == 64) & (curve.block == 1)].iloc[0]
    assert r.accuracy_change == pytest.approx(100 * (m.perplexity / m.perplexity_dense - 1))
    assert "cost_accuracy.csv (cats, rank 8, bits 64, block 1)" in r.accuracy_source
    text = DS.pays_off_markdown(t)
    assert "Predictor points" in text and "Cheapest predictor with recall >= 0.9 under masks per call: rank 2" in text
    brief = DS.pays_off_markdown(t, predictor_tables=False)   # the README's block: the answer, not the table
    assert "Predictor points" not in brief and "| rank |" not in brief
    assert "Cheapest predictor with recall >= 0.9" in brief and "docs/design-space.md" in brief


def test_end_to_end_rows_are_communication_only(tmp_path):
    """The map's times are communication only (its note says so, and the FFN-block rows are): an end_to_end
    job's time is its comm_s, not the total_s that cost mode's modelled compute adds to; compute_s stands
    beside it."""
    from types import SimpleNamespace

    from plotting.design_space import end_to_end_costs

    phases = ["total", "total_amortised", "setup", "preprocess", "deploy"]
    pd.DataFrame(dict(network="lan", phase=phases, online_bytes=[10, 11, 1, 2, 3], rounds=[5, 6, 1, 1, 1],
                      comm_s=[1.0, 1.5, 0.1, 0.1, 0.1], total_s=[9.0, 9.5, 0.2, 0.2, 0.2],
                      compute_s=[8.0, 8.0, 0.1, 0.1, 0.1])
                 ).to_csv(tmp_path / "metrics.csv", index=False)
    (row,) = end_to_end_costs(SimpleNamespace(dir=tmp_path), NETS[:1])
    assert (row["time_s"], row["time_s_amortised"], row["bytes"]) == (1.0, 1.5, 10)
    assert (row["compute_s"], row["compute_s_amortised"]) == (8.0, 8.0)


def test_ffn_block_compute_is_the_blocks_work_per_token(jobs):
    """An FFN-block row's compute is work.csv's modelled seconds of the same operators, formed per token as
    the bytes are (decode step + once-per-request work / PASSES); the map's speedup_with_compute adds it to
    both sides."""
    job = jobs["comet-call-online"]
    w = pd.read_csv(job.dir / "work.csv")
    w = w[(w.layer == 0) & w.op.str.startswith("ffn.") & (w.op != "ffn.norm")]
    by = w.groupby("stage").modelled_s.sum()
    want = by.get("decode", 0) + (by.get("setup", 0) + by.get("prefill", 0) - by.get("decode", 0)) / DS.PASSES
    row = DS.ffn_block_costs(job, NETS)[0]
    assert row["compute_s"] == pytest.approx(want) and row["compute_s"] > 0
    rows = pd.DataFrame([dict(r, scenario="ffn_block", model="m", system=s, mode="cost", weight_masks="call",
                              permutation="online", predictor_rank=16, predictor_bits=64, block=1,
                              count_padding="none", relu_bits=64, predictor="default", hidden_size=64,
                              predicted_sparsity=0.9, sparsity_source="", deploy_requests=1000, job=s, preset="full",
                              git_rev="x")
                         for s, j in (("comet", "comet-call-online"), ("dense", "dense-call"))
                         for r in DS.ffn_block_costs(jobs[j], NETS)])
    t = DS.map_table(rows, accuracy=(None, None))
    lan = t[t.network == "lan"].iloc[0]
    assert lan.speedup_with_compute == pytest.approx((lan.dense_s + lan.dense_compute_s) / (lan.comet_s + lan.comet_compute_s))
    assert lan["mode"] == "cost"
