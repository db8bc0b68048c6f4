"""The command-line contract (DESIGN.md section 8): files, columns, last line, and bad input."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
METRIC_COLUMNS = {"model", "system", "network", "mode", "phase", "online_bytes", "offline_bytes", "rounds",
                  "compute_s", "comm_s", "total_s", "seed", "frac_bits"}


def comet(*args, cwd):
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "CI": "true"})


def test_run_experiment_writes_the_contract_files(tmp_path):
    out = tmp_path / "run"
    r = comet("run-experiment", "gen_tokens=2", f"output_dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == str(out.resolve())
    for f in ("config.yaml", "metrics.csv", "ops.csv", "generation.csv", "ledger.csv.gz"):
        assert (out / f).is_file(), f
    m = pd.read_csv(out / "metrics.csv")
    assert METRIC_COLUMNS <= set(m.columns)
    assert {"prefill", "decode", "total"} <= set(m.phase)
    assert "lan" in set(m.network) and len(set(m.network)) >= 4  # every preset is priced
    tot = m[(m.network == "lan") & (m.phase == "total")].iloc[0]
    parts = m[(m.network == "lan") & m.phase.isin(["setup", "prefill", "decode"])]   # total: the request's stages
    assert {"deploy", "preprocess", "total_amortised"} <= set(m.phase)
    assert tot.online_bytes == parts.online_bytes.sum() > 0 and tot.rounds == parts.rounds.sum() > 0
    ops = pd.read_csv(out / "ops.csv")
    assert {"stage", "layer", "op", "online_bytes", "offline_bytes", "rounds"} <= set(ops.columns)
    assert ops.online_bytes.sum() == tot.online_bytes
    g = pd.read_csv(out / "generation.csv")
    assert {"source", "step", "token_id", "text"} <= set(g.columns)
    assert set(g.source) == {"private", "plaintext"} and len(g) == 4

    # existing results are never overwritten silently
    r2 = comet("run-experiment", "gen_tokens=1", f"output_dir={out}", cwd=tmp_path)
    assert r2.returncode == 2 and "overwrite=true" in r2.stderr and len(r2.stderr.strip().splitlines()) == 1


def test_cost_mode_and_overrides(tmp_path):
    out = tmp_path / "cost"
    r = comet("run-experiment", "model=opt-125m", "mode=cost", "model.layers=2", "prompt_len=16", "gen_tokens=2",
              "network=wan-100m", "network.bandwidth_bps=5e7", f"output_dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = pd.read_csv(out / "metrics.csv")
    row = m[(m.network == "custom(50Mbps,80ms)") & (m.phase == "total")].iloc[0]  # labelled by what ran
    assert row.network_preset == "wan-100m" and m.network.iloc[0] == row.network
    assert row.bandwidth_bps == 5e7 and row["mode"] == "cost" and row.layers == 2 and row.prompt_tokens == 16
    assert abs(row.comm_s - (row.rounds * 0.08 + row.busiest_direction_bytes * 8 / 5e7)) < 1e-9 * row.comm_s


@pytest.mark.parametrize("args, needle", [
    (["network=moon"], "valid choices: emu-100m-10ms, emu-1g-1ms, lan, lan-3g, wan-100m, wan-200m"),
    (["system=nope"], "unknown system 'nope'; valid choices:"),
    (["model=gpt-9"], "valid choices:"),
    (["network.bandwidth_bps=-1"], "bandwidth_bps must be > 0"),
    (["network.bandwidth_bps=0"], "bandwidth_bps must be > 0"),
    (["network.latency_s=-0.1"], "latency_s must be >= 0"),
    (["gen_tokens=0"], "gen_tokens must be"),
    (["engine.frac_bits=40"], "frac_bits must be an integer in 14..24"),
    (["mode=fast"], "mode must be exact or cost"),
    (["model.layers=99"], "out of range"),
    (["prompt_len=600"], "exceeds the 512 positions"),
    (["engine.truncation=sloppy"], "engine.truncation must be one of local, dealer"),
    (["engine.comparison=dcf"], "engine.comparison must be one of circuit, fss"),
])
def test_bad_input_fails_fast_with_one_line(tmp_path, args, needle):
    r = comet("run-experiment", *args, f"output_dir={tmp_path / 'x'}", cwd=tmp_path)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "x" / "metrics.csv").exists()


def test_hydra_flags_pass_through(tmp_path):
    r = comet("run-experiment", "--cfg", "job", "network=wan-200m", cwd=tmp_path)
    assert r.returncode == 0 and "bandwidth_bps: 200000000.0" in r.stdout


def test_multirun_sweep(tmp_path):
    r = comet("run-experiment", "-m", "mode=cost", "gen_tokens=1", "network=lan,wan-100m",
              f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "1"]
    nets = {pd.read_csv(tmp_path / "sweep" / j / "metrics.csv").network.iloc[0] for j in ("0", "1")}
    assert nets == {"lan", "wan-100m"}
    # the sweep ends with its jobs side by side (comet compare), then the summary, then the sweep folder
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == str((tmp_path / "sweep").resolve()) and lines[-2].startswith("sweep: 2 of 2 jobs finished")
    assert "baseline b = run 1 (system=dense)" in r.stdout
    assert any(ln.split()[:4] == ["lan", "total", "2", "dense"] and ln.split()[-1] == "1x" for ln in lines)


def test_bad_ring_kernel_setting_fails_before_any_work(tmp_path):
    """COMET_RING_KERNEL (the CPU ring-product kernel) is checked with the config: one line, no model load."""
    r = subprocess.run([sys.executable, "-m", "cli.main", "run-experiment", f"output_dir={tmp_path / 'x'}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "CI": "true", "COMET_RING_KERNEL": "fast"})
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and lines == ["error: COMET_RING_KERNEL must be one of auto, int64, limbs, got 'fast'"], r.stderr
    assert not (tmp_path / "x").exists()


def test_summary_labels_each_text_and_says_whether_private_equals_dense():
    from experiments.run_summary import text_lines

    texts = {"private": ([1, 2, 3], " ab"), "plaintext": ([1, 2, 3], " ab"), "plaintext_dense": ([1, 2, 4], " ac")}
    lines = text_lines(texts, sparse=True, system="comet", max_logit_err=0.02)
    assert [ln.split()[0] for ln in lines] == ["private", "plaintext", "plaintext_dense"]
    assert "private run's masks" in lines[1] and "= private: yes (3 of 3 tokens)" in lines[1] and "0.02" in lines[1]
    assert "unmodified" in lines[2] and "= private: NO (2 of 3 tokens)" in lines[2] and "sparsity changed" in lines[2]
    # a fourth text (the model with its own float predictors) gets its own labelled line when generation.csv has it
    texts["plaintext_predicted"] = ([1, 2, 3], " ab")
    lines = text_lines(texts, sparse=True, system="comet", max_logit_err=None)
    assert lines[3].split()[0] == "plaintext_predicted" and "float predictors" in lines[3] and "yes (3 of 3" in lines[3]
    dense = text_lines({"private": ([5], "x"), "plaintext": ([5], "x")}, sparse=False, system="dense", max_logit_err=0.0)
    assert "unmodified" in dense[1] and "masks" not in dense[1]


def test_summary_notes_an_oversubscribed_machine_and_names_the_token():
    from comet_core.results.run_info import RunInfo
    from experiments.run_summary import load_note, token_note

    assert load_note(1.5, 2) is None and load_note(float("nan"), 2) is None
    assert "load average reached 4.3 on 2 cores" in load_note(4.3, 2)
    assert "byte" in token_note("bytes") and "subword of the smollm2 tokenizer" in token_note("smollm2")
    info = RunInfo.start().finish()
    assert info.load_max >= max(info.load_before[0], info.load_after[0])
    assert info.as_dict()["load_avg_max"] == info.load_max and info.as_dict()["usable_cores"] >= 1


def test_stdout_names_the_run_prices_every_preset_and_says_what_is_modelled(tmp_path):
    out = tmp_path / "run"
    r = comet("run-experiment", "model=tiny-opt", "gen_tokens=2", f"output_dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == str(out.resolve())
    assert lines[0].startswith("system=dense  model=tiny-opt (2 layers)  mode=exact  network=lan")
    assert "a token is one byte of UTF-8 text" in r.stdout
    m = pd.read_csv(out / "metrics.csv")
    for net in set(m.network):
        assert any(ln.split()[:1] == [net] and "total" not in ln for ln in lines), net   # every preset shown
    assert "comm is modelled from the ledger for each network preset" in r.stdout
    tot = m[(m.network == "lan") & (m.phase == "total")].iloc[0]
    assert tot.compute_cpu_s > 0 and "compute is measured on this machine" in r.stdout and " CPU (" in r.stdout


def test_party_help_works_with_and_without_a_role(tmp_path):
    for args in (["party", "--help"], ["party", "--role", "p0", "--help"]):
        r = comet(*args, cwd=tmp_path)
        assert r.returncode == 0 and "--role" in r.stdout and "--keys" in r.stdout, (args, r.stderr)


def test_run_experiment_help_lists_every_key_with_type_and_default(tmp_path):
    import dataclasses
    import typing

    from comet_core.config.schema import RunSchema

    r = comet("run-experiment", "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    groups = {"model", "system", "network", "engine", "transport", "experiment"}
    for name, typ in typing.get_type_hints(RunSchema).items():
        if name in groups:
            assert any(ln.split()[:2] == [name, "default"] for ln in lines), name
            continue
        (line,) = [ln for ln in lines if ln.split()[:1] == [name]]
        assert "default" in line, line
        assert lines[lines.index(line) + 1].startswith("     "), f"{name}: no meaning under it"
    assert next(ln for ln in lines if ln.split()[:1] == ["gen_tokens"]).split()[1:] == ["int", "default", "8"]
    assert next(ln for ln in lines if ln.split()[:1] == ["seed"]).split()[1:] == ["int", "or", "null", "default", "null"]
    assert "choices: bolt, comet, dense" in r.stdout and "model.layers=" in r.stdout
    assert "schema" not in r.stdout and "== Config ==" not in r.stdout and len(lines) < 90
    r = comet("train-lm", "-h", cwd=tmp_path)
    assert r.returncode == 0 and "  lm  default default" in r.stdout and "threads     int" in r.stdout
    assert "prompt" not in r.stdout


def test_unicode_prompt_works_unquoted_or_names_the_real_cause(tmp_path):
    out = tmp_path / "u"
    r = comet("run-experiment", "prompt=héllo wörld ✓", *("model=tiny-opt", "mode=cost", "gen_tokens=1"),
              f"output_dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "prompt: héllo wörld ✓" in (out / "config.yaml").read_text(encoding="utf-8")
    r = comet("run-experiment", "prompt=héllo, it's", f"output_dir={tmp_path / 'x'}", cwd=tmp_path)
    (line,) = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "only ASCII text, and this one has é beside quotes, commas" in line
    assert not (tmp_path / "x").exists()


def test_bad_fewrow_kernel_setting_fails_before_any_work(tmp_path):
    """COMET_FEWROW_KERNEL (mpc/matmul.py rule 5) is checked with the config too: one line, no model load."""
    r = subprocess.run([sys.executable, "-m", "cli.main", "run-experiment", f"output_dir={tmp_path / 'x'}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "CI": "true", "COMET_FEWROW_KERNEL": "fast"})
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and lines == ["error: COMET_FEWROW_KERNEL must be one of auto, on, off, got 'fast'"], r.stderr
    assert not (tmp_path / "x").exists()
