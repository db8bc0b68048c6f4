"""Every baseline end to end through experiments.run.run (the CLI's task) on tiny models: private tokens
equal the plaintext reference with the same approximations; cost mode books the same ledger; ops.csv and
metrics.csv split measured and modelled traffic."""

from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from experiments.run import run

CONF = str(Path(__file__).resolve().parent.parent / "conf")
BASELINES = ["mpcformer", "secformer", "puma", "iron", "bolt"]


def _cfg(tmp_path, *over):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[f"output_dir={tmp_path}", "save_ledger=false", *over])


@pytest.mark.parametrize("system", BASELINES)
@pytest.mark.parametrize("model", ["tiny-opt", "tiny-llama"])
def test_baseline_runs_and_matches_its_reference(tmp_path, system, model):
    cfg = _cfg(tmp_path, f"system={system}", f"model={model}", "model.layers=1", "gen_tokens=2", "prompt=To be")
    s = run(cfg, tmp_path)
    assert s["max_logit_err"] < 2e-2, s["max_logit_err"]
    g = pd.read_csv(tmp_path / "generation.csv")
    assert set(g.source) == {"private", "plaintext", "plaintext_dense"} and len(g) == 6
    ops = pd.read_csv(tmp_path / "ops.csv")
    m = pd.read_csv(tmp_path / "metrics.csv")
    tot = m[(m.network == "lan") & (m.phase == "total")].iloc[0]
    assert ops.online_bytes.sum() == tot.online_bytes == tot.online_bytes_measured + tot.online_bytes_model
    modelled = system in ("iron", "bolt")
    assert (tot.online_bytes_model > 0) == modelled
    assert set(ops.cost_source) == ({"measured", "model"} if modelled else {"measured"})


@pytest.mark.parametrize("system", ["secformer", "bolt"])
def test_cost_mode_equals_exact_mode_ledger(tmp_path, system):
    common = [f"system={system}", "model=tiny-opt", "model.layers=1", "gen_tokens=2", "prompt_len=5"]
    run(_cfg(tmp_path / "e", *common, "save_ledger=true"), tmp_path / "e")
    run(_cfg(tmp_path / "c", *common, "mode=cost", "save_ledger=true"), tmp_path / "c")
    e = pd.read_csv(tmp_path / "e" / "ledger.csv.gz")
    c = pd.read_csv(tmp_path / "c" / "ledger.csv.gz")
    pd.testing.assert_frame_equal(e, c)


def test_system_table_is_up_to_date():
    """conf/system/README.md and the README section are generated from the YAML files."""
    from experiments.system_table import main

    assert main(["--check"]) == 0, "run: python experiments/system_table.py"
