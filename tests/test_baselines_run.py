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


def _outcome(tmp_path, *over):
    from experiments.run import execute

    return execute(_cfg(tmp_path, "seed=1", "prompt_len=5", "gen_tokens=2", *over))


def _ledger(tmp_path, *over):
    return _outcome(tmp_path, *over).ledger


def _per_op(ledger) -> pd.DataFrame:
    """(op, online bytes, online rounds) of a ledger: what a table's bytes and rounds are made of."""
    on = ledger[ledger.phase == "online"]
    return on.groupby("op").agg(bytes=("bytes", "sum"), rounds=("round", "nunique")).reset_index()


@pytest.mark.parametrize("system", ["dense", *BASELINES])
@pytest.mark.parametrize("model", ["tiny-opt", "tiny-llama"])
def test_cost_mode_equals_exact_mode_ledger(tmp_path, system, model):
    """Each system books in cost mode, on shapes only, every message its exact run sends (two layers of an
    OPT and a Llama shape, prefill and decode): a published cost-mode table prices the system's own
    protocols. Comet (counts from the exact run's masks): tests/test_comet.py."""
    common = [f"system={system}", f"model={model}"]
    eo, co = _outcome(tmp_path, *common), _outcome(tmp_path, *common, "mode=cost")
    e, c = eo.ledger, co.ledger
    assert e.layer.nunique() >= 2 and {"prefill", "decode"} <= set(e.stage)
    pd.testing.assert_frame_equal(e, c)
    # the work counters that price cost-mode compute (comm/work.py) are the exact run's, count for count
    assert {"round", "open_word", "matmul_mac", "matmul_mac_few_small", "matmul_call", "matmul_mac_bmm_few",
            "matmul_word_small", "kept_mask_word"} <= set(eo.work.kind)   # small shapes: whole-matrix products
    assert ("float_elem" in set(eo.work.kind)) == (system in ("iron", "bolt"))
    pd.testing.assert_frame_equal(eo.work, co.work)


@pytest.mark.parametrize("model, over", [("tiny-opt", ()), ("tiny-llama", ()),
                                         ("tiny-llama", ("model.activation=relu",))],   # llama2-7b is ReLU-fied
                         ids=["opt", "llama-silu", "llama-relu"])
def test_each_baseline_moves_its_own_ledger(tmp_path, model, over):
    """Every baseline replaces some dense operator by its own protocol, so its per-op bytes and rounds differ
    from dense's on each shape: a table where a baseline equals dense byte for byte priced dense's protocols
    under its name, unless the next test's reason holds."""
    dense = _per_op(_ledger(tmp_path, "system=dense", f"model={model}", "mode=cost", *over))
    for system in BASELINES:
        own = _per_op(_ledger(tmp_path, f"system={system}", f"model={model}", "mode=cost", *over))
        assert not own.equals(dense), f"{system} books dense's ledger on {model} {' '.join(over)}"


@pytest.mark.parametrize("model, over, equal", [("tiny-opt", (), True), ("tiny-llama", ("model.activation=relu",), True),
                                                ("tiny-llama", (), False)], ids=["opt", "llama-relu", "llama-silu"])
def test_puma_costs_dense_on_relu_models_where_both_take_the_tournament(tmp_path, model, over, equal):
    """Why PUMA's column of results/end_to_end equals dense's byte for byte (OPT and ReLU-fied Llama-2-7B,
    128 + 16 tokens): on a ReLU model PUMA's only own operator is its softmax, whose clipped exp costs an ltz
    and a product as the engine's clamped exp (a ReLU) does; it differs from dense only in the maximum, the
    tournament where dense takes all pairs for short rows. Paper-scale rows exceed the pairs budget, so
    both take the tournament there (engine.max_method=tree here): the same ledger. With SiLU (SmolLM2,
    tiny-llama) PUMA's SiLU is its own."""
    led = {s: _per_op(_ledger(tmp_path, f"system={s}", f"model={model}", "mode=cost", "engine.max_method=tree", *over))
           for s in ("dense", "puma")}
    assert led["puma"].equals(led["dense"]) == equal


def test_system_table_is_up_to_date():
    """conf/system/README.md and the README section are generated from the YAML files."""
    from plotting.system_table import main

    assert main(["--check"]) == 0, "run: python -m plotting.system_table"
