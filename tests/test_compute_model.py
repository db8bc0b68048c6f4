"""The compute model (docs/compute-model.md): work counters (comm/work.py), `comet calibrate`'s profile,
and cost mode's modelled compute_s. That the counters are the same in cost and exact mode, for every
system: tests/test_baselines_run.py and tests/test_comet.py (mask trace)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from comet_core.comm.ledger import Ledger
from comet_core.comm.work import KINDS, register_kind, work_table
from comet_core.errors import CometError
from comet_core.results import compute_model as cm

REPO = Path(__file__).resolve().parent.parent
CONF = str(REPO / "conf")


def _cfg(tmp_path, *over):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[f"output_dir={tmp_path}", "save_ledger=false", "model=tiny-opt",
                                            "model.layers=2", "prompt_len=5", "gen_tokens=2", "seed=1", *over])


def _profile(path: Path, units: dict, host=None) -> Path:
    path.write_text(json.dumps(dict(format=cm.FORMAT, units_s=units, host=host or {"cpu_model": "test"},
                                    device="cpu")))
    return path


def test_work_counts_follow_the_labels_and_the_ledger_rows():
    led = Ledger()
    with led.label(stage="prefill", layer=0, op="ffn.fc1"):
        led.work.add("matmul_mac", 10)
        led.work.add("matmul_mac", 5)
        r = led.new_round()
        led.record_exchange(3, 64, r)     # 3 words each way
        led.record_exchange(128, 1, r)    # 128 one-bit fields each way: 2 words
        led.record("offline", "dealer", "P1", 4, 64, -1)
        with led.protocol("matmul"):   # a Beaver matmul's words are its own kind
            led.record_exchange(8, 64, led.new_round())
    with led.label(stage="decode", layer=1, op="attn.softmax"):
        r = led.new_round()
        led.record("online", "P0", "P1", 10, 20, r, cost_source="model")   # an ideal functionality's: no local work
    w = work_table(led.frame(), led.work).set_index(["stage", "op", "kind"]).amount
    assert w[("prefill", "ffn.fc1", "matmul_mac")] == 15
    assert w[("prefill", "ffn.fc1", "round")] == 2
    assert w[("prefill", "ffn.fc1", "matmul_word_small")] == 16
    assert w[("prefill", "ffn.fc1", "open_word")] == 6
    assert w[("prefill", "ffn.fc1", "bit_word")] == 4
    assert w[("prefill", "ffn.fc1", "dealer_word")] == 4
    assert "decode" not in w.index.get_level_values("stage")


def test_unknown_and_conflicting_kinds_are_refused():
    with pytest.raises(KeyError, match="register it"):
        Ledger().work.add("no_such_kind", 1)
    register_kind("round", KINDS["round"].unit, KINDS["round"].doc)   # the same definition again: fine
    with pytest.raises(ValueError, match="already registered"):
        register_kind("round", "something else", "")


def test_calibrate_quick_writes_a_valid_profile(tmp_path):
    out = tmp_path / "p.json"
    r = subprocess.run([sys.executable, "-m", "cli.main", "calibrate", "--quick", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == str(out.resolve())
    d = json.loads(out.read_text())
    cm.validate_profile(d, str(out))
    assert set(KINDS) <= set(d["units_s"]), "every registered kind is priced"
    assert d["units_s"]["round"] > 0 and d["quick"] is True and d["clock"] == "wall"
    assert {"cpu_model", "flags", "threads", "torch", "numpy"} <= set(d["host"])
    assert all(b["seconds"] > 0 and math.isfinite(b["fit_ratio"]) for b in d["benchmarks"])
    before = out.read_bytes()
    for flag in ([], ["--no-overwrite"]):   # the default refuses too: an existing profile is never replaced silently
        r = subprocess.run([sys.executable, "-m", "cli.main", "calibrate", "--quick", "--out", str(out), *flag],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "exists" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert out.read_bytes() == before


def test_cost_mode_fills_compute_s_from_the_counters(tmp_path, monkeypatch):
    """compute_s = sum of count x unit cost per stage, labelled modelled; total_s = compute_s + comm_s; comm_s
    alone is the communication-only time."""
    from experiments.run import run

    units = {k: (i + 1) * 1e-9 for i, k in enumerate(sorted(KINDS))}
    monkeypatch.setenv(cm.ENV, str(_profile(tmp_path / "p.json", units)))
    out = tmp_path / "run"
    run(_cfg(out, "mode=cost"), out)
    m = pd.read_csv(out / "metrics.csv")
    w = pd.read_csv(out / "work.csv")
    assert (m.compute_source == "modelled").all() and m.compute_profile.str.startswith("env:").all()
    for stage in ("prefill", "decode"):
        want = sum(units[k] * a for k, a in zip(w[w.stage == stage].kind, w[w.stage == stage].amount))
        row = m[(m.network == "lan") & (m.phase == stage)].iloc[0]
        assert want > 0 and row.compute_s == pytest.approx(want, rel=1e-12)
        assert row.compute_modelled_s == row.compute_s
    tot = m[m.phase == "total"]
    assert (tot.total_s == tot.compute_s + tot.comm_s).all() and (tot.compute_s > 0).all()
    assert w.modelled_s.sum() == pytest.approx(tot.compute_s.iloc[0], rel=1e-12)


def test_exact_mode_keeps_measured_compute_beside_the_model(tmp_path, monkeypatch):
    from experiments.run import run

    monkeypatch.setenv(cm.ENV, str(_profile(tmp_path / "p.json", {k: 1e-9 for k in KINDS})))
    out = tmp_path / "run"
    run(_cfg(out, "gen_tokens=1"), out)
    m = pd.read_csv(out / "metrics.csv")
    tot = m[(m.network == "lan") & (m.phase == "total")].iloc[0]
    assert tot.compute_source == "measured" and tot.compute_s > 0
    assert tot.compute_modelled_s == pytest.approx(pd.read_csv(out / "work.csv").amount.sum() * 1e-9)
    # compute_ops.csv: the same model op by op beside the time measured under each op's labels, which adds
    # up to the stages' measured time (the op clock charges every interval of a stage to one op)
    ops = pd.read_csv(out / "compute_ops.csv")
    assert list(ops.columns) == ["stage", "layer", "op", "measured_s", "measured_cpu_s", "modelled_s", "modelled_over_wall"]
    assert {"embed", "lm_head", "ffn.fc1"} <= set(ops.op)
    assert ops.modelled_s.sum() == pytest.approx(tot.compute_modelled_s, rel=1e-9)
    import gc

    assert gc.get_freeze_count() == 0, "private_generate unfreezes what it froze"
    for stage in ("prefill", "decode"):
        want = m[(m.network == "lan") & (m.phase == stage)].compute_s.sum()
        assert ops[ops.stage == stage].measured_s.sum() == pytest.approx(want, rel=0.05, abs=5e-3)


def test_exact_mode_only_has_an_op_clock(tmp_path):
    from experiments.run import run

    out = tmp_path / "run"
    run(_cfg(out, "gen_tokens=1", "mode=cost"), out)
    assert (out / "work.csv").exists() and not (out / "compute_ops.csv").exists()


def _kinds(f, mode="cost", **config):
    """{kind: amount} of the work counted by f(mpc) on a fresh engine."""
    from comet_core.mpc.engine import MPC, EngineConfig

    mpc = MPC(EngineConfig(**config), seed=0, mode=mode)
    with mpc.label(stage="decode", layer=0, op="x"):
        f(mpc)
    w = work_table(mpc.ledger.frame(), mpc.ledger.work)
    return w.groupby(["stage", "kind"]).amount.sum().to_dict()


def test_product_kinds_follow_the_engines_shape_rules():
    """A product's multiply-accumulates and words are counted in the class of kernel the engine picks for its
    shapes (mpc/matmul.py): whole-matrix steps up to blocked.BLOCK_ELEMENTS weight elements, blocked above,
    full matmuls past FEW_ROWS rows; a shared-by-public product of few rows apart; the weight slice of a
    select; a kept mask's first use once (in stage deploy under weight_masks=deployment)."""
    import torch

    from comet_core.comm.work import MATMUL_BLOCK
    from comet_core.mpc import arith
    from comet_core.mpc.blocked import BLOCK_ELEMENTS
    from comet_core.mpc.shape import Shape

    assert MATMUL_BLOCK == BLOCK_ELEMENTS
    sh = lambda m, *s: m.share(Shape(s, torch.float64))   # noqa: E731
    small = _kinds(lambda m: arith.matmul(sh(m, 1, 256), sh(m, 256, 1024)))
    big = _kinds(lambda m: arith.matmul(sh(m, 1, 512), sh(m, 512, 1024)))
    rows = _kinds(lambda m: arith.matmul(sh(m, 4, 256), sh(m, 256, 1024)))
    assert small[("decode", "matmul_mac_few_small")] == 256 * 1024 and ("decode", "matmul_mac_few") not in small
    assert big[("decode", "matmul_mac_few")] == 512 * 1024 and ("decode", "matmul_word") in big
    assert rows[("decode", "matmul_mac")] == 4 * 256 * 1024
    assert ("decode", "matmul_word") not in small and small[("decode", "matmul_word_small")] > 256 * 1024
    sel = _kinds(lambda m: arith.matmul(sh(m, 1, 256), sh(m, 256, 1024), select=(1, torch.arange(100))))
    assert sel[("decode", "select_elem")] == 256 * 100 and sel[("decode", "matmul_mac_few_small")] == 256 * 100
    pub = _kinds(lambda m: arith.matmul_public(sh(m, 1, 64), torch.zeros(64, 8)))
    pub4 = _kinds(lambda m: arith.matmul_public(sh(m, 4, 64), torch.zeros(64, 8)))
    assert pub[("decode", "public_mac_few")] == 2 * 64 * 8 and pub4[("decode", "public_mac")] == 2 * 4 * 64 * 8

    def twice(m, **k):
        w = m.register_weight(sh(m, 64, 32))
        for _ in range(2):
            arith.matmul(sh(m, 1, 64), w, **k)
    assert ("decode", "kept_mask_word") not in _kinds(twice)        # weight_masks=call: no mask is kept
    assert _kinds(lambda m: twice(m, reuse_mask=True))[("decode", "kept_mask_word")] == 64 * 32   # the first product only
    dep = _kinds(twice, weight_masks="deployment")
    assert dep[("deploy", "kept_mask_word")] == 64 * 32 and ("decode", "kept_mask_word") not in dep


def test_a_missing_profile_is_refused_before_any_work(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "CI": "true", "COMET_CACHE": str(tmp_path / "cache"),
           cm.ENV: str(tmp_path / "none.json")}
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "cli.main", "run-experiment", "model=tiny-opt", "mode=cost",
                        f"output_dir={out}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "none.json does not exist" in r.stderr and "comet calibrate" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


def test_without_a_profile_of_this_machine_the_reference_host_prices_it(tmp_path, monkeypatch, caplog):
    """The documented default: no $COMET_COMPUTE_PROFILE, no cached profile -> the committed reference
    host's profile (and a warning); without that too, compute_s stays empty and compute_source says none."""
    monkeypatch.delenv(cm.ENV, raising=False)
    monkeypatch.setenv("COMET_CACHE", str(tmp_path / "cache"))
    assert cm.REFERENCE_PROFILE.is_file(), "results/calibration/reference-host.json is committed"
    with caplog.at_level("WARNING", logger="comet.compute"):
        p = cm.find_profile("cpu")
    assert p.source == "reference" and "comet calibrate" in caplog.text
    monkeypatch.setattr(cm, "REFERENCE_PROFILE", tmp_path / "gone.json")
    assert cm.find_profile("cpu") is None


def test_a_profile_without_a_counted_kind_says_to_recalibrate(tmp_path):
    p = cm.read_profile(_profile(tmp_path / "p.json", {"round": 1e-6}))
    work = pd.DataFrame(dict(stage=["prefill"], layer=[0], op=["x"], kind=["shuffle_elem"], amount=[3.0]))
    with pytest.raises(CometError, match="prices no shuffle_elem.*comet calibrate"):
        cm.stage_seconds(work, p)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CometError, match="not a compute profile"):
        cm.read_profile(tmp_path / "bad.json")


@pytest.mark.slow
def test_the_model_follows_a_tiny_exact_run_within_a_loose_factor(tmp_path, monkeypatch):
    """Calibrated here (--quick), the model of two tiny exact runs (dense, and mpcformer with its cheaper
    approximations) keeps their ratio within 2x of the measured wall-time ratio, and each within 5x of its
    wall seconds (results/calibration/validation.csv: 0.94-1.07x on a quiet machine; a loaded one inflates
    the measured side). Not a speed assertion: ratios of times taken in one process, with wide bounds.
    Cheaper coverage of the same path: the counter-exactness tests (cost == exact) and
    test_cost_mode_fills_compute_s_from_the_counters."""
    from experiments import calibrate as cal
    from experiments.run import run

    profile = cal.write_profile(cal.calibrate(quick=True), tmp_path / "p.json")
    monkeypatch.setenv(cm.ENV, str(profile))
    tot = {}
    for system in ("dense", "mpcformer"):
        out = tmp_path / system
        run(_cfg(out, f"system={system}", "gen_tokens=4", "model.layers=2"), out)
        tot[system] = pd.read_csv(out / "metrics.csv").query("network == 'lan' and phase == 'total'").iloc[0]
    for t in tot.values():
        assert 1 / 5 < t.compute_modelled_s / t.compute_s < 5, t.compute_modelled_s / t.compute_s
    modelled = tot["mpcformer"].compute_modelled_s / tot["dense"].compute_modelled_s
    measured = tot["mpcformer"].compute_s / tot["dense"].compute_s
    assert 0.5 < modelled / measured < 2, (modelled, measured)


def test_an_ideal_functionalitys_unrun_ots_are_no_fit_error():
    """ideal_silu counts the OTs of the protocol it stands for (priced later by ot_iknp, a real IKNP extension)
    but runs none: they explain none of its time, and its fit_ratio is of the float work it runs (before, the
    summary reported it as the worst fit, at ~3000x). Positive control: counted as run, the ratio explodes."""
    from experiments import calibrate as cal

    rows = [dict(name="ideal_silu", seconds=1e-3, counts={"float_elem": 1000.0, "ot": 1e6}, unrun=["ot"]),
            dict(name="ot_iknp", seconds=2e-3, counts={"ot": 1e4}, unrun=[])]
    units = cal.fit_units(rows, ["float_elem", "ot"])
    assert units == pytest.approx({"float_elem": 1e-6, "ot": 2e-7})
    cal.set_fit_ratios(rows, units)
    assert [r["fit_ratio"] for r in rows] == pytest.approx([1.0, 1.0])
    profile = dict(host=dict(cpu_model="x", flags="", threads=1, torch="t", numpy="n"), load_avg_before=[0.1],
                   load_avg_after=[0.1], units_s=units, kinds={}, benchmarks=rows)
    assert "worst benchmark" in cal.summary_lines(profile)[-1] and "1.00x" in cal.summary_lines(profile)[-1]
    rows[0]["unrun"] = []   # the control: the unrun OTs priced as if run
    cal.set_fit_ratios(rows, units)
    assert rows[0]["fit_ratio"] > 100 and "ideal_silu" in cal.summary_lines(profile)[-1]


def test_a_busy_machine_does_not_publish_a_profile(tmp_path, monkeypatch):
    """Under results/ (the published reference profile) a load above BUSY_LOAD is refused before any timing
    unless --allow-busy; elsewhere (the cache, --out in /tmp) it only warns and marks the profile busy."""
    import os

    from typer.testing import CliRunner

    from cli.main import app
    from experiments import calibrate as cal

    out = REPO / "results" / "calibration" / "test-busy-profile.json"
    monkeypatch.setattr(os, "getloadavg", lambda: (cal.BUSY_LOAD + 3, 1.0, 1.0))
    monkeypatch.setattr(cal, "calibrate", lambda **k: pytest.fail("timed although refused"))
    r = CliRunner().invoke(app, ["calibrate", "--quick", "--out", str(out)])
    assert r.exit_code == 2 and "--allow-busy" in r.output and not out.exists()
    assert cal.publishing(out) and not cal.publishing(tmp_path / "p.json")
    profile = dict(host=dict(cpu_model="x", flags="", threads=1, torch="t", numpy="n"), load_avg_before=[4.0],
                   load_avg_after=[4.0], units_s={}, kinds={}, busy=True,
                   benchmarks=[dict(name="b", seconds=1.0, fit_ratio=1.0, counts={})])
    assert cal.summary_lines(profile)[-1].startswith("busy: load 4.0")


def test_amend_adds_a_kinds_units_and_keeps_the_rest(tmp_path, monkeypatch):
    """`comet calibrate --amend KIND`: only that kind's benchmarks (and the checks that count it) are timed and
    fitted against the profile's other units, which stay as they were; the amendment is recorded; a profile
    of another CPU, an unknown kind and a missing profile are refused."""
    pytest.importorskip("tenseal")
    from typer.testing import CliRunner

    from cli.main import app
    from comet_core.mpc import he_linear  # noqa: F401 (registers the HE kinds)
    from comet_core.results.machine import cpu_info
    from experiments import calibrate as cal

    timed = []
    run = cal.run_benchmark
    monkeypatch.setattr(cal, "run_benchmark", lambda b, *a, **k: timed.append(b.name) or run(b, *a, **k))
    host = dict(cpu_model=cpu_info()[0], flags="", threads=1, torch="t", numpy="n")
    units = {k: 1e-9 for k in KINDS if k != "he_rotate"}
    out = tmp_path / "p.json"
    out.write_text(json.dumps(dict(format=cm.FORMAT, units_s=units, host=host, device="cpu", benchmarks=[], kinds={},
                                   load_avg_before=[0.0], load_avg_after=[0.0])))
    r = CliRunner().invoke(app, ["calibrate", "--quick", "--out", str(out), "--amend", "he_rotate"])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert d["units_s"]["he_rotate"] > 0 and {k: d["units_s"][k] for k in units} == units
    assert d["amended"][-1]["kinds"] == ["he_rotate"] and "git_rev" in d["amended"][-1]
    assert "he_rotate" in timed and "matmul" not in timed and "he_encrypt" not in timed
    assert {b["name"] for b in d["benchmarks"]} >= {"he_rotate", "he_linear_bolt"}   # a check that counts it
    with pytest.raises(CometError, match="amend a profile on the machine that made it"):
        cal.amend(dict(d, host=dict(cpu_model="another CPU")), ["he_rotate"], quick=True)
    with pytest.raises(CometError, match="no benchmark prices nonsense"):
        cal.amend(d, ["nonsense"], quick=True)
    with pytest.raises(CometError, match="at least one work kind"):
        cal.amend(d, [], quick=True)
    import os

    monkeypatch.setattr(os, "getloadavg", lambda: (cal.BUSY_LOAD + 2, 1.0, 1.0))
    busy = cal.amend(d, ["he_rotate"], quick=True, reps=1)
    assert busy["busy"] and busy["amended"][-1]["busy"]     # a busy amendment marks the whole profile
    r = CliRunner().invoke(app, ["calibrate", "--quick", "--out", str(tmp_path / "none.json"), "--amend", "he_rotate"])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_validation_table_is_made_from_the_committed_files():
    """docs/compute-model.md's validation table is `compute_validation.py --table` of the committed file, and
    its per-op file covers the same cases."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cv", REPO / "benchmarks" / "compute_validation.py")
    cv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cv)
    val = REPO / "results" / "calibration" / "validation.csv"
    text = cv.table(val)
    assert text in (REPO / "docs" / "compute-model.md").read_text()
    assert "| shakespeare-opt dense | " in text and "| opt-125m dense | " in text
    ops = pd.read_csv(cv.ops_path(val))
    assert set(ops.case) == set(pd.read_csv(val).case)


def test_without_tenseal_calibrate_leaves_the_he_kinds_unpriced(monkeypatch, caplog):
    """The HE benchmarks need the `he` extra: without TenSEAL they are not registered (a warning says how to
    install it) and every other benchmark still runs."""
    import importlib.util

    from experiments import calibrate as cal

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tenseal" else real(name, *a))
    monkeypatch.setattr(cal, "BENCHMARKS", [])
    with caplog.at_level("WARNING", logger="comet.calibrate"):
        cal._defaults()
    names = {b.name for b in cal.BENCHMARKS}
    assert "ot_iknp" in names and not any(n.startswith("he_") for n in names)
    assert "pip install -e '.[he]'" in caplog.text
