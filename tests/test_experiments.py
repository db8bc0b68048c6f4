"""Every paper artifact's quick preset, end to end: `comet run-experiment -m experiment=<name>_quick` (or
`comet train-predictor -m +experiment=...`) into a temporary sweep folder, then `comet plot all` into a
temporary results folder; and the joblib launcher. Nothing lands in the repository."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from plotting.analyses import ARTIFACTS
from tests.helpers_load import scaled

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf" / "experiment"


def quick_command(name: str, sweep_dir: Path) -> list[str]:
    cmd = yaml.safe_load((CONF / f"{name}_quick.yaml").read_text())["experiment"]["command"]
    plus = "+" if cmd == "train-predictor" else ""
    return [cmd, "-m", f"{plus}experiment={name}_quick", f"hydra.sweep.dir={sweep_dir}"]


def test_every_artifact_has_a_full_and_a_quick_preset():
    for name in ARTIFACTS:
        for suffix, preset in (("", "full"), ("_quick", "quick")):
            p = CONF / f"{name}{suffix}.yaml"
            text = p.read_text()
            cfg = yaml.safe_load(text)
            assert text.startswith("# @package _global_"), p
            assert cfg["experiment"]["name"] == name and cfg["experiment"]["preset"] == preset, p
            assert cfg["hydra"]["sweeper"]["params"], p
            if preset == "quick":   # tiny shapes only (design_space: each scenario file names its model)
                params = cfg["hydra"]["sweeper"]["params"]
                models = [str(params["model"])] if "model" in params else [
                    str(yaml.safe_load((CONF.parent / "ds_scenario" / f"{s}.yaml").read_text())["defaults"][0]["override /model"])
                    for s in str(params["+ds_scenario"]).split(",")]
                assert all(m.startswith("tiny") for m in models), p


def joblib_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is not None


# the swept values are columns: gen_tokens for output_length, the mask policy for mask_reuse; and each
# artifact's own claims on its quick data
def _check_output_length(results: Path) -> None:
    ol = pd.read_csv(results / "output_length" / "data.csv")
    assert sorted(set(ol[ol.phase == "total"].gen_tokens)) == [1, 2, 4]


def _check_mask_reuse(results: Path) -> None:
    mr = pd.read_csv(results / "mask_reuse" / "data.csv")
    for system, t in mr[mr.phase == "total"].groupby("system"):
        t = t.set_index("reuse_weight_masks")
        assert t.loc[True, "online_bytes"] < t.loc[False, "online_bytes"], system   # masks opened once: fewer bytes


def _check_time_breakdown(results: Path) -> None:
    tb = pd.read_csv(results / "time_breakdown" / "data.csv")
    share = tb[tb.phase == "total"].comm_share
    assert ((share > 0) & (share < 1)).all()                              # exact mode: compute was measured


def _check_predictor_accuracy(results: Path) -> None:
    pa = pd.read_csv(results / "predictor_accuracy" / "comparison.csv")
    assert set(pa.metric) == {"recall", "accuracy_loss_pts"} and (pa.status != "not measured").all()


ARTIFACT_CHECKS = {"output_length": _check_output_length, "mask_reuse": _check_mask_reuse,
                   "time_breakdown": _check_time_breakdown, "predictor_accuracy": _check_predictor_accuracy}


@pytest.mark.parametrize("name", list(ARTIFACTS))
def test_quick_preset_end_to_end_through_comet_plot(name, tmp_path):
    """One artifact's quick sweep (output_length's through the joblib launcher with progress lines when it is
    installed: a pyproject dependency), then `comet plot all` into a temporary results folder, which plots
    it and skips the artifacts without a sweep; a second `plot all` refuses to replace the files. One
    artifact per test so that the sweeps run in parallel under xdist; `plot all` over several artifacts'
    sweeps at once: tests/test_plot.py::test_plot_all_plots_every_artifact_that_has_a_sweep."""
    runs, results = tmp_path / "multirun", tmp_path / "results"
    path = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(":"))]   # plugins installed --target
    env = {"PYTHONPATH": ":".join(path), "PATH": "/usr/bin:/bin", "CI": "true", "COMET_CACHE": str(tmp_path / "cache")}
    args = quick_command(name, runs / name)
    if name == "output_length" and joblib_installed():
        args += ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"]
    r = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=scaled(300))
    assert r.returncode == 0, (name, r.stderr[-2000:])
    if "hydra/launcher=parallel" in args:   # joblib's progress lines
        assert "LokyBackend" in r.stderr and re.search(r"Done +(\d+) out of +\1 ", r.stderr), r.stderr[-2000:]
    assert (runs / name / "multirun.yaml").is_file(), name
    r = CliRunner().invoke(app, ["plot", "all", "--runs-root", str(runs), "--results-dir", str(results)])
    assert r.exit_code == 0, r.stderr[-2000:]
    out = results / name
    assert str(out.resolve()) in r.stdout, (name, r.stdout[-2000:], r.stderr[-2000:])
    for f in ("data.csv", "table.md", "comparison.csv"):
        assert (out / f).is_file(), (name, f)
    pngs, pdfs = sorted(out.glob("*.png")), sorted(out.glob("*.pdf"))
    assert pngs and [p.stem for p in pngs] == [p.stem for p in pdfs], name
    assert "quick preset" in (out / "table.md").read_text()
    data = pd.read_csv(out / "data.csv")
    assert len(data) > 0, name
    if name != "predictor_accuracy":
        assert {"model", "system", "phase", "online_bytes", "rounds", "total_s"} <= set(data.columns), name
    if name in ARTIFACT_CHECKS:
        ARTIFACT_CHECKS[name](results)
    # a second `plot all` refuses to replace the curated files
    r2 = CliRunner().invoke(app, ["plot", "all", "--runs-root", str(runs), "--results-dir", str(results)])
    assert r2.exit_code == 2 and "--overwrite" in r2.stderr
