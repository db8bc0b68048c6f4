"""Sweeps whose jobs run in other processes (joblib workers, submitit's local or SLURM jobs) collect into
one tidy metrics.csv in the sweep folder (cli/sweep.py), and a launcher whose plugin is missing is one line."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cli import hydra_launch, sweep

REPO = Path(__file__).resolve().parent.parent
COST = ("mode=cost", "model=tiny-opt", "prompt_len=4", "save_ledger=false")


def comet(*args, cwd):
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "CI": "true"}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


def test_job_records_written_elsewhere_are_collected(tmp_path, monkeypatch):
    """A job recorded by another process (as a joblib or submitit worker does) reaches this one's table."""
    monkeypatch.setattr(sweep, "SWEEP", sweep.Sweep())
    out = tmp_path / "s" / "0"
    out.mkdir(parents=True)
    pd.DataFrame({"phase": ["total"], "online_bytes": [7]}).to_csv(out / "metrics.csv", index=False)
    code = (f"from cli import sweep; sweep.record(0, ['gen_tokens=1'], {str(tmp_path / 's')!r}, out={str(out)!r}); "
            f"sweep.record(1, ['gen_tokens=2'], {str(tmp_path / 's')!r}, error='boom')")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(REPO)})
    assert sweep.SWEEP.jobs == []
    sweep.collect(str(tmp_path / "s"))
    assert [(j.num, j.error) for j in sweep.SWEEP.jobs] == [(0, None), (1, "boom")]
    table = sweep.aggregate(sweep.SWEEP)
    df = pd.read_csv(table)
    assert list(df.columns[:2]) == ["job", "overrides"] and df.online_bytes.tolist() == [7]
    assert sweep.finish() == 1                                                  # job 1 failed


def test_missing_launcher_plugin_is_one_line(tmp_path):
    r = comet("run-experiment", "-m", "hydra/launcher=rq", *COST, "gen_tokens=1,2", cwd=tmp_path)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install hydra-rq-launcher" in lines[0], r.stderr
    assert not (tmp_path / "outputs").exists()


def test_submitit_missing_names_its_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    for name in ("submitit_local", "submitit_slurm", "slurm"):
        with pytest.raises(SystemExit, match=f"hydra/launcher={name} needs the Hydra plugin hydra-submitit-launcher.*"
                                             "pip install hydra-submitit-launcher"):
            hydra_launch.check_launcher(["-m", f"hydra/launcher={name}", "gen_tokens=1,2"])
    hydra_launch.check_launcher(["-m", "hydra/launcher=basic"])                 # built in: nothing to check


def test_slurm_without_slurm_is_one_line(monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    monkeypatch.setattr("shutil.which", lambda t: None)
    with pytest.raises(SystemExit, match="sbatch/srun are not on this machine's PATH.*submitit_local"):
        hydra_launch.check_launcher(["-m", "hydra/launcher=slurm"])


def test_slurm_preset_builds_on_the_plugin():
    assert hydra_launch._launcher_base("slurm") == "submitit_slurm"
    assert hydra_launch._launcher_base("parallel") == "joblib"


def test_submitit_local_two_job_sweep(tmp_path):
    """Two jobs as submitit processes: one sweep folder (workers inherit COMET_RUN_ID), each job's tables, and
    one metrics.csv across both; the last stdout line is the sweep folder."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="hydra-submitit-launcher is not installed (pyproject dependency)")
    r = comet("run-experiment", "-m", "hydra/launcher=submitit_local", *COST, "gen_tokens=1,2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    sweeps = list((tmp_path / "outputs" / "multirun").iterdir())
    assert len(sweeps) == 1, sweeps
    s = sweeps[0]
    assert r.stdout.strip().splitlines()[-1] == str(s.resolve())
    assert "sweep: 2 of 2 jobs finished" in r.stdout
    assert not list(s.glob(".job-*"))                                          # records read back, then removed
    assert (s / ".submitit").is_dir()                                           # really submitit's jobs
    df = pd.read_csv(s / "metrics.csv")
    assert sorted(df.job.unique()) == [0, 1]
    assert {o.split()[-1] if o else "" for o in df.overrides.unique()} >= {"gen_tokens=1", "gen_tokens=2"}
    for job in (0, 1):
        own = pd.read_csv(s / str(job) / "metrics.csv")
        assert len(own) == (df.job == job).sum()
        assert (own.online_bytes.values == df[df.job == job].online_bytes.values).all()
    argv = [pd.read_json(s / str(j) / "run_info.json", typ="series")["argv"][0] for j in (0, 1)]
    assert all("submitit" in a for a in argv), argv
