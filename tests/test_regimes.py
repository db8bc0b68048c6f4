"""Deployment regimes as whole runs (cost mode, tiny models): engine.weight_masks and system.permutation
move work between stages without changing it: what deploy / preprocess book is exactly what the online
stages no longer pay (bytes), and the rounds the request loses are the shuffle's."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

CONF = Path(__file__).resolve().parents[1] / "conf"


def run_cost(tmp: Path, name: str, *over: str) -> pd.DataFrame:
    from experiments.run import run

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny-opt", "mode=cost", f"output_dir={tmp / name}", "seed=1",
                                            "gen_tokens=3", "prompt_len=5", *over])
    run(cfg, tmp / name)
    m = pd.read_csv(tmp / name / "metrics.csv")
    return m[m.network == m.network.iloc[0]].set_index("phase")


@pytest.mark.parametrize("system", ["dense", "comet"])
def test_deployment_masks_move_the_first_openings_into_deploy(system, tmp_path):
    base = [f"system={system}"] + (["system.heads=false", "system.permutation=deployment"] if system == "comet" else [])
    req = run_cost(tmp_path, "request", *base, "engine.weight_masks=request")
    dep = run_cost(tmp_path, "deployment", *base, "engine.weight_masks=deployment")
    shuffle = req.at["deploy", "online_bytes"]          # comet: the deployment shuffle; dense: 0
    assert dep.at["deploy", "online_bytes"] - shuffle == req.at["total", "online_bytes"] - dep.at["total", "online_bytes"] > 0
    assert dep.at["total", "rounds"] == req.at["total", "rounds"]          # f was opened beside e
    assert dep.at["total_amortised", "deploy_requests"] == 1000
    want = dep.at["total", "online_bytes"] + round(dep.at["deploy", "online_bytes"] / 1000)
    assert dep.at["total_amortised", "online_bytes"] == want


def test_permutation_timing_moves_the_shuffle(tmp_path):
    base = ["system=comet", "system.heads=false"]
    on = run_cost(tmp_path, "online", *base)
    pre = run_cost(tmp_path, "pre", *base, "system.permutation=preprocessed")
    dep = run_cost(tmp_path, "dep", *base, "system.permutation=deployment")
    shuffle = on.loc["setup", ["online_bytes", "offline_bytes", "rounds"]]
    assert shuffle.online_bytes > 0 and pre.at["setup", "online_bytes"] == dep.at["setup", "online_bytes"] == 0
    assert (pre.loc["preprocess", ["online_bytes", "offline_bytes", "rounds"]] == shuffle).all()
    assert (dep.loc["deploy", ["online_bytes", "offline_bytes", "rounds"]] == shuffle).all()
    for other in (pre, dep):
        assert other.at["total", "online_bytes"] == on.at["total", "online_bytes"] - shuffle.online_bytes
        assert other.at["total", "rounds"] == on.at["total", "rounds"] - shuffle.rounds
    assert pre.at["total_amortised", "online_bytes"] == on.at["total", "online_bytes"]
    assert (on.permutation == "online").all() and (dep.permutation == "deployment").all()


def test_bad_regime_values_fail_before_work(tmp_path):
    from comet_core.errors import CometError

    with pytest.raises(CometError, match="system.permutation must be one of"):
        run_cost(tmp_path, "x", "system=comet", "system.permutation=sometimes")
    with pytest.raises(CometError, match="engine.weight_masks must be one of"):
        run_cost(tmp_path, "y", "engine.weight_masks=forever")
    with pytest.raises(CometError, match="deploy_requests must be a positive integer"):
        run_cost(tmp_path, "z", "deploy_requests=0")
