"""`comet compare` (issue 29): two real runs on the default model (system=comet and system=dense), their
table and CSV against each run's metrics.csv, the baseline choice, and one-line errors for bad folders."""

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent


def comet(*args, cwd):
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "CI": "true"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(comet folder, dense folder, comet's stdout): the default model's first two layers, gen_tokens=2, exact."""
    root = tmp_path_factory.mktemp("compare")
    out = {}
    for system in ("comet", "dense"):
        r = comet("run-experiment", f"system={system}", "model.layers=2", "gen_tokens=2",
                  f"output_dir={root / system}", cwd=root)
        assert r.returncode == 0, r.stderr
        out[system] = r.stdout
    return root / "comet", root / "dense", out["comet"]


def test_comet_stdout_shows_three_labelled_texts(runs):
    comet_dir, _, stdout = runs
    lines = stdout.strip().splitlines()
    assert lines[-1] == str(comet_dir.resolve()) and lines[0].startswith("system=comet  model=shakespeare-opt")
    g = pd.read_csv(comet_dir / "generation.csv")
    for source in set(g.source):   # one labelled line per text of generation.csv, none that it lacks
        (line,) = [ln for ln in lines if ln.split()[:1] == [source]]
        if source != "private":
            same = (g[g.source == source].token_id.values == g[g.source == "private"].token_id.values).sum()
            assert f"({same} of 2 tokens)" in line
    assert "private run's masks" in stdout and "unmodified plaintext model" in stdout
    assert "tokens match" not in stdout


def test_compare_ratios_are_the_metrics_ratios_against_dense(runs, tmp_path):
    comet_dir, dense_dir, _ = runs
    r = comet("compare", str(comet_dir), str(dense_dir), "--csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(io.StringIO(r.stdout))
    assert set(df.baseline) == {2}   # the dense run, although given second
    mc, md = pd.read_csv(comet_dir / "metrics.csv"), pd.read_csv(dense_dir / "metrics.csv")
    assert len(df) == len(mc) + len(md)
    for net, phase in (("lan", "total"), ("wan-100m", "total"), ("lan", "prefill")):
        c = mc[(mc.network == net) & (mc.phase == phase)].iloc[0]
        d = md[(md.network == net) & (md.phase == phase)].iloc[0]
        row = df[(df.network == net) & (df.phase == phase) & (df.run == 1)].iloc[0]
        for v in ("online_bytes", "offline_bytes", "rounds", "comm_s", "compute_s", "total_s"):
            assert row[v] == pytest.approx(c[v], rel=1e-9)
            assert row[f"{v}_ratio"] == pytest.approx(c[v] / d[v], rel=1e-9), (net, phase, v)
        base = df[(df.network == net) & (df.phase == phase) & (df.run == 2)].iloc[0]
        assert base.online_bytes_ratio == 1.0 and base.total_s_ratio == 1.0

    r = comet("compare", str(comet_dir), str(dense_dir), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "baseline b = run 2 (system=dense)" in r.stdout and "compute measured" in r.stdout
    c = mc[(mc.network == "lan") & (mc.phase == "total")].iloc[0]
    d = md[(md.network == "lan") & (md.phase == "total")].iloc[0]
    (line,) = [ln for ln in r.stdout.splitlines() if ln.split()[:4] == ["lan", "total", "1", "comet"]]
    assert f"{c.online_bytes / d.online_bytes:.3g}x" in line and " MB " in line
    for net in set(mc.network):   # every network's total is in the table
        assert any(ln.split()[:2] == [net, "total"] for ln in r.stdout.splitlines()), net

    r = comet("compare", str(comet_dir), cwd=tmp_path)   # one run: its own baseline
    assert r.returncode == 0 and "baseline b = run 1 (the first run)" in r.stdout


def test_compare_refuses_bad_folders_in_one_line(runs, tmp_path):
    comet_dir, _, _ = runs
    half = tmp_path / "half"
    shutil.copytree(comet_dir, half)
    (half / "COMPLETE").unlink()
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    nometrics = tmp_path / "nometrics"
    shutil.copytree(comet_dir, nometrics)
    (nometrics / "metrics.csv").unlink()
    for folder, needle in ((tmp_path / "missing", "does not exist"), (half, "not a complete run"),
                           (sweep, "is a sweep folder"), (nometrics, "has no metrics.csv"),
                           (comet_dir / "metrics.csv", "is not a folder")):
        r = comet("compare", str(comet_dir), str(folder), cwd=tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and r.stdout == "" and len(lines) == 1 and needle in lines[0], (folder, r.stderr)
    r = comet("compare", str(comet_dir), "--networks", "some", cwd=tmp_path)
    assert r.returncode == 2 and "--networks must be one of" in r.stderr
