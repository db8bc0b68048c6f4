"""Results are never lost or mislabelled (issue 14): unique atomic run folders, refused runs that touch
nothing, wholesale overwrite, Ctrl-C, sweeps that survive a failing job, memory checks, run records."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from comet_core import memory
from comet_core.errors import CometError
from comet_core.results.run_folder import MARKER, RunFolder, check_destination
from tests.helpers_load import scaled

REPO = Path(__file__).resolve().parent.parent
COST = ("mode=cost", "model=tiny-opt", "gen_tokens=1")


def env(**extra):
    return {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "CI": "true", **extra}


def comet(*args, cwd, **extra):
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env(**extra))


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def one_line(stderr: str) -> list[str]:
    return [ln for ln in stderr.strip().splitlines() if ln.strip() and not ln.startswith("[")]


def test_parallel_runs_get_their_own_folders(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "cli.main", "run-experiment", *COST], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env()) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    folders = {o[0].strip().splitlines()[-1] for o in outs}
    assert len(folders) == 3
    for f in folders:
        assert (Path(f) / "metrics.csv").is_file() and (Path(f) / MARKER).is_file()


def test_refused_run_touches_nothing_and_overwrite_replaces_wholesale(tmp_path):
    out = tmp_path / "run"
    r = comet("run-experiment", "model=tiny-opt", "gen_tokens=1", f"output_dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert {"generation.csv", "ledger.csv.gz", "run_info.json", MARKER, ".hydra/config.yaml"} <= set(snapshot(out))
    before = snapshot(out)
    for args in (["gen_tokens=2"], ["overwrite=no"]):  # refused by the folder check, and by the preflight
        r = comet("run-experiment", *COST, *args, f"output_dir={out}", cwd=tmp_path)
        assert r.returncode == 2 and len(one_line(r.stderr)) == 1, r.stderr
        assert snapshot(out) == before, args  # .hydra/config.yaml and overrides.yaml included
    assert leftovers(tmp_path) == []

    exact_cols = set(pd.read_csv(out / "metrics.csv").columns)
    peak = json.loads((out / "run_info.json").read_text())["peak_rss_bytes"]  # the exact run's measured peak
    r = comet("run-experiment", *COST, "save_ledger=false", "overwrite=true", f"output_dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    files = set(snapshot(out))
    assert "generation.csv" not in files and "ledger.csv.gz" not in files  # nothing stale from the exact run
    assert "mode: cost" in (out / "config.yaml").read_text()
    assert "mode=cost" in (out / ".hydra" / "overrides.yaml").read_text().replace("- ", "")
    cost = pd.read_csv(out / "metrics.csv")
    assert set(cost.columns) == exact_cols  # same columns in both modes
    assert cost.max_logit_err.isna().all() and cost.compute_cpu_s.isna().all()
    assert (cost.compute_source == "modelled").all() and (cost[cost.phase == "total"].compute_s > 0).all()
    info = json.loads((out / "run_info.json").read_text())
    assert peak <= memory.exact_run_bytes(OmegaConf.load(REPO / "conf/model/tiny-opt.yaml"), 2, 77 + 1) <= 4 * peak
    assert {"torch", "transformers"} <= set(info["packages"]) and info["git_revision"] and info["host"]
    assert info["torch_threads"] >= 1 and len(info["load_avg_before"]) == 3 and len(info["load_avg_after"]) == 3
    assert leftovers(tmp_path) == []


def test_ctrl_c_keeps_earlier_results_and_says_so(tmp_path):
    out = tmp_path / "run"
    r = comet("run-experiment", *COST, f"output_dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    before = snapshot(out)
    p = subprocess.Popen([sys.executable, "-m", "cli.main", "run-experiment", "model=opt-125m", "model.layers=2",
                          "prompt_len=32", "gen_tokens=4", "overwrite=true", f"output_dir={out}"], cwd=tmp_path,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env())
    # SIGINT inside the private generation: on its log line, not after a fixed sleep (on a busy machine the
    # model load alone can take minutes)
    lines_seen, generating = [], threading.Event()

    def read_stderr():
        for line in p.stderr:
            lines_seen.append(line)
            if "private generation:" in line:
                generating.set()
    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    assert generating.wait(scaled(120)), "".join(lines_seen)
    assert any(n.startswith(".run.tmp-") for n in leftovers(tmp_path))     # the run is staging its folder
    p.send_signal(signal.SIGINT)
    p.wait(scaled(120))
    reader.join(scaled(10))
    err = "".join(lines_seen)
    # 130, or killed by SIGINT once the message is out (a library thread still running at exit can turn the
    # exit into the signal's): the shell reports 130 either way
    assert p.returncode in (130, -signal.SIGINT), err
    lines = one_line(err)
    assert len(lines) == 1 and "interrupted" in lines[0], err
    assert snapshot(out) == before and leftovers(tmp_path) == []


SWALLOWED_CTRL_C = """
import os, signal, sys, time
import experiments.run as R

class Finalized:                      # a library object whose finalizer runs when the Ctrl-C arrives
    def __del__(self):
        print("finalizer: sent SIGINT", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)               # KeyboardInterrupt is raised here and dropped by Python

real = R.write_results
def write_results(*a, **k):
    Finalized()                       # collected at once: its __del__ swallows the Ctrl-C
    return real(*a, **k)
R.write_results = write_results
from cli.main import app
sys.argv = ["comet", "run-experiment", *sys.argv[1:]]
app()
"""


def test_ctrl_c_that_a_library_swallows_still_interrupts_the_run(tmp_path):
    """issue 22: a Ctrl-C raised inside a finalizer (a __del__, a GC callback) is printed as "Exception
    ignored" and dropped by Python, and the run went on to publish its results and exit 0 without the
    interrupted line (the race behind test_ctrl_c_keeps_earlier_results_and_says_so failing under load).
    Now SIGINT also sets a flag that publishing checks: exit 130, the one line, nothing published."""
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-c", SWALLOWED_CTRL_C, *COST, f"output_dir={out}"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600, env=env())
    lines = [ln for ln in one_line(p.stderr) if not ln.startswith("finalizer: ")]
    assert "finalizer: sent SIGINT" in p.stderr, p.stderr
    assert p.returncode in (130, -signal.SIGINT), p.stderr
    assert len(lines) == 1 and lines[0].startswith("interrupted"), p.stderr   # no "Exception ignored" traceback
    assert not out.exists() and leftovers(tmp_path) == []


def test_run_folder_publish_and_failure(tmp_path):
    dest = tmp_path / "a"
    with pytest.raises(RuntimeError):
        with RunFolder(dest) as f:
            (f.staging / "metrics.csv").write_text("half")
            raise RuntimeError("crash while writing")
    assert not dest.exists() and leftovers(tmp_path) == []
    with RunFolder(dest) as f:
        (f.staging / "metrics.csv").write_text("one")
        assert f.publish() == dest
    with RunFolder(dest) as f:  # a parallel run took dest meanwhile: nothing is lost
        (f.staging / "metrics.csv").write_text("two")
        assert f.publish() == tmp_path / "a-2"
    assert (dest / "metrics.csv").read_text() == "one" and (tmp_path / "a-2" / MARKER).is_file()
    with pytest.raises(CometError, match="already holds results"):
        check_destination(dest, overwrite=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(CometError, match="not a comet run"):
        check_destination(tmp_path / "mine", overwrite=True)


def test_sweep_runs_every_job_reports_failures_and_aggregates(tmp_path):
    sweep = tmp_path / "sweep"
    # job 0 fails at run time (no trained checkpoint in an empty cache), job 1 must still run
    r = comet("run-experiment", "-m", "model=shakespeare-opt-tiny,tiny-opt", "gen_tokens=1",
              f"hydra.sweep.dir={sweep}", cwd=tmp_path, COMET_CACHE=str(tmp_path / "cache"))
    assert r.returncode == 1, r.stderr
    assert (sweep / "1" / "metrics.csv").is_file() and not (sweep / "0" / "metrics.csv").exists()
    assert (sweep / "0" / ".hydra" / "overrides.yaml").is_file()  # the failed job keeps its config and log
    assert leftovers(sweep) == []
    assert "1 of 2 sweep jobs failed: job 0 (" in r.stderr and "comet train-lm" in r.stderr
    agg = pd.read_csv(sweep / "metrics.csv")
    assert set(agg.job) == {1} and "model=tiny-opt" in agg.overrides.iloc[0]
    assert r.stdout.strip().splitlines()[-1] == str(sweep.resolve())

    # a bad value in any job is refused before the first job: tests/test_config_schema.py


def test_paper_scale_exact_run_is_refused_before_allocating(tmp_path):
    t0 = time.time()
    r = comet("run-experiment", "model=opt-6.7b", f"output_dir={tmp_path / 'x'}", cwd=tmp_path)
    assert r.returncode == 2 and time.time() - t0 < scaled(60)   # refused before allocating ~100 GiB
    (line,) = one_line(r.stderr)
    assert "mode=cost" in line and "force=true" in line and "GiB" in line
    assert "model.layers=" in line   # the largest that fits, or that not even one layer does


def test_memory_refusal_names_the_largest_layer_count_that_fits(monkeypatch):
    from hydra import compose, initialize_config_dir

    from comet_core.config.schema import register
    from comet_core.roles import run_config as run_mod

    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["model=opt-1.3b", "prompt_len=16", "gen_tokens=2"])
    opts = dict(int64_kernel=False)
    monkeypatch.setattr(run_mod, "reference_needs_run", lambda system: True)
    from comet_core.mpc import matmul

    monkeypatch.setattr(matmul, "int64_gemm_faster", lambda: False)
    need = lambda n: memory.exact_run_bytes(cfg.model, n, 18, reuse_weight_masks=False, plain_during_run=True, **opts)
    monkeypatch.setattr(memory, "available_bytes", lambda: need(5) + 1)
    with pytest.raises(CometError, match=r"model\.layers=5 \(of 24\) fits"):
        run_mod.check_memory(cfg)
    monkeypatch.setattr(memory, "available_bytes", lambda: need(1) - 1)
    with pytest.raises(CometError, match=r"not even model\.layers=1 fits"):
        run_mod.check_memory(cfg)


def test_memory_estimate_grows_with_the_model():
    big = OmegaConf.load(REPO / "conf" / "model" / "opt-6.7b.yaml")
    assert memory.exact_run_bytes(big, 32, 144) > 100 * 2 ** 30
    assert memory.exact_run_bytes(big, 2, 144) < memory.exact_run_bytes(big, 32, 144)


def test_prompt_file_takes_any_text(tmp_path):
    """The docs' prompt_file example (docs/commands.md), run as written (apostrophes, quotes, =, $ and ${...})."""
    readme = (REPO / "docs" / "commands.md").read_text()
    line = next(ln for ln in readme.splitlines() if ln.startswith("printf ") and "prompt.txt" in ln)
    subprocess.run(["bash", "-c", line], cwd=tmp_path, check=True)
    text = (tmp_path / "prompt.txt").read_text()[:-1]
    assert "'Tis" in text and '"quoted"' in text and "a=b" in text and "$HOME" in text and "${y}" in text
    out = tmp_path / "p"
    r = comet("run-experiment", *COST, "prompt_file=prompt.txt", f"output_dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = pd.read_csv(out / "metrics.csv")
    assert m.prompt_tokens.iloc[0] == len(text.encode())
    saved = OmegaConf.load(out / "config.yaml")
    assert saved._get_node("prompt")._value() == text  # stored verbatim (not interpolated)
    r = comet("run-experiment", *COST, "prompt_file=missing.txt", f"output_dir={tmp_path / 'q'}", cwd=tmp_path)
    assert r.returncode == 2 and "prompt_file=missing.txt cannot be read" in r.stderr


def test_version_and_list(tmp_path):
    r = comet("--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("comet 0.") and "git" in r.stdout
    r = comet("list", cwd=tmp_path)
    assert r.returncode == 0
    for group in ("model:", "system:", "network:", "engine:", "predictor:", "lm:"):
        assert group in r.stdout
    assert any(ln.split()[0] == "opt-6.7b" and len(ln.split()) > 2 for ln in r.stdout.splitlines() if ln.strip())
    r = comet("list", "network", cwd=tmp_path)
    assert r.returncode == 0 and "wan-100m" in r.stdout and "model:" not in r.stdout
    r = comet("list", "nope", cwd=tmp_path)
    assert r.returncode == 2 and "groups:" in r.stderr


def test_readable_units():
    from comet_core.results.units import fmt_bps, fmt_bytes, fmt_seconds

    assert fmt_bytes(237_000_000) == "237 MB" and fmt_bytes(1.5e9) == "1.5 GB" and fmt_bytes(12) == "12 B"
    assert fmt_seconds(0.0008) == "0.8ms" and fmt_seconds(21.7) == "21.7s" and fmt_seconds(150) == "2.5min"
    assert fmt_bps(5e7) == "50Mbps" and fmt_bps(5e9) == "5Gbps"


def test_layer_progress_counts_every_layer_and_restores_the_model(monkeypatch):
    from comet_core import progress

    class Model:
        n_layers = 3

        def layer(self, x, i, cache, start):
            return x + 1

        def forward(self, x):
            for i in range(self.n_layers):
                x = self.layer(x, i, None, 0)
            return x

    m = Model()
    with progress.layer_progress(m, passes=2) as lp:
        assert m.forward(0) == 3 and m.forward(0) == 3
        assert lp.done == 6
    assert "layer" not in m.__dict__
    monkeypatch.setenv("CI", "true")
    assert progress.quiet()


def test_parallel_sweep_lands_in_one_folder(tmp_path):
    """joblib workers resolve the sweep folder to the launcher's (COMET_RUN_ID), not one per worker."""
    r = comet("run-experiment", "-m", "experiment=output_length_quick", "hydra/launcher=parallel",
              "hydra.launcher.n_jobs=2", "system=dense", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    sweeps = list((tmp_path / "outputs" / "multirun").iterdir())
    assert len(sweeps) == 1, sweeps
    jobs = [p for p in sweeps[0].iterdir() if p.is_dir() and (p / "metrics.csv").exists()]
    assert (sweeps[0] / "multirun.yaml").exists() and len(jobs) == 3
    # the workers' outcomes reach the launcher (cli/sweep.py): one summary, one table, the sweep folder last
    assert "sweep: 3 of 3 jobs finished" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == str(sweeps[0].resolve())
    assert sorted(pd.read_csv(sweeps[0] / "metrics.csv").job.unique()) == [0, 1, 2]


def test_peak_rss_is_the_process_own_not_its_parents():
    """run_info's peak_rss_bytes of a process started by a large parent (a test runner of 1+ GB, say):
    its own high-water mark, not the parent's RSS that getrusage carries over a fork + exec (which made
    the memory-estimate check above fail inside the full suite)."""
    big = bytearray(600 * 2 ** 20)
    for i in range(0, len(big), 4096):
        big[i] = 1
    code = "from comet_core.results.run_info import _peak_rss_bytes; print(_peak_rss_bytes())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert 0 < int(r.stdout) < 300 * 2 ** 20
    del big


def test_a_second_run_into_a_folder_being_written_is_refused(tmp_path):
    out = tmp_path / "run"
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])   # a live "run"
    try:
        (tmp_path / f".run.tmp-{writer.pid}-ab12").mkdir()   # its staging folder, as RunFolder names it
        r = comet("run-experiment", *COST, f"output_dir={out}", cwd=tmp_path)
        assert r.returncode == 2 and r.stdout == "", r.stdout
        (line,) = one_line(r.stderr)
        assert f"being written by another run now (pid {writer.pid})" in line and "overwrite=true" in line
        assert not out.exists() and not (tmp_path / "run-2").exists()
        r = comet("run-experiment", *COST, "overwrite=true", f"output_dir={out}", cwd=tmp_path)
        assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == str(out.resolve()), r.stderr
    finally:
        writer.kill()
        writer.wait()
    (tmp_path / f".run.tmp-{writer.pid}-ab12").rmdir()   # a dead writer's leftover does not block
    r = comet("run-experiment", *COST, "overwrite=true", f"output_dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_a_folder_taken_while_the_run_worked_is_not_silent(tmp_path, monkeypatch, capsys):
    """Two runs that start at once both pass the check; the later one keeps its results in <dir>-2, says so
    in one line and exits non-zero (the folder is still the last stdout line)."""
    from hydra import compose, initialize_config_dir

    import experiments.run as run_mod
    from comet_core.config.schema import register

    out = tmp_path / "run"
    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*COST, f"output_dir={out}"])
    real = run_mod.write_results

    def and_another_run_publishes(cfg, o, folder):
        out.mkdir()
        (out / "metrics.csv").write_text("the other run's\n")
        return real(cfg, o, folder)

    monkeypatch.setattr(run_mod, "write_results", and_another_run_publishes)
    with pytest.raises(CometError, match="was taken by another run while this one worked; this run's results are in"):
        run_mod.run_experiment_task(cfg)
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "run-2")
    assert (out / "metrics.csv").read_text() == "the other run's\n" and (tmp_path / "run-2" / MARKER).is_file()
