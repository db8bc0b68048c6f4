"""`make bench`'s combined table (issue 15): rows of the three systems, ratios within one sitting, the
issue's targets, the README section between its markers, and results never overwritten silently.
No anchor venv is needed: the harnesses' outputs are written here in their own formats."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from comet_core.errors import CometError
from comet_core.results import anchors

REPO = Path(__file__).resolve().parent.parent
SECONDS = {  # op: (engine, crypten, spu)
    "matmul": (0.5, 5.5, 0.8),     # 11x vs CrypTen (met), 1.6x vs SPU (target 2x: not met)
    "relu": (0.1, 0.95, 0.9),      # 9.5x (not met), 9x (met)
    "softmax": (0.3, 1.9, 1.2),    # 6.33x (not met), 4x (met)
    "ffn_decode": (0.15, 0.45, 0.5),  # 3x exactly (met), 3.33x (met)
}


def engine_csv(ops=SECONDS) -> pd.DataFrame:
    """The columns benchmarks/engine_ops.py writes (those the combined table reads, plus one more)."""
    return pd.DataFrame([dict(op=op, shape=f"shape-{op}", online_bytes=1000 + i, rounds=1 + i, offline_bytes=7,
                              seconds=SECONDS[op][0], max_abs_err=1e-4, threads=2, reps=5,
                              load_avg_1m_before=0.5, load_avg_1m_after=0.75, torch="2.13.0+cpu",
                              comet_revision="abc1234", timestamp="2026-11-26T12:00:00+00:00")
                         for i, op in enumerate(ops)])


def crypten_out(ops=SECONDS) -> tuple[pd.DataFrame, dict]:
    """The CrypTen harness's --csv table and --json detail (bench.py's field names)."""
    csv = pd.DataFrame([dict(case=op, shape=f"shape-{op}", seconds_median=SECONDS[op][1], rounds=10 + i,
                             bytes_per_party=2000 + i, max_abs_err=2e-3) for i, op in enumerate(ops)])
    meta = dict(started_utc="2026-11-26T11:58:00+00:00", load_avg_1m_before=1.0, load_avg_1m_after=1.25,
                torch="2.13.0", crypten="0.4.1", threads_per_party=1, reps=5, provider="TFP")
    return csv, meta


def spu_out(ops=SECONDS) -> list[dict]:
    """The SPU harness's JSON records (spu_bench.py's field names)."""
    return [dict(op=op, shape=f"shape-{op}", seconds_median=SECONDS[op][2], bytes_both_directions=3000 + i,
                 rounds_p0_send_actions=20 + i, max_abs_err=3e-3, rep_seconds_max_of_parties=[1.0] * 5,
                 load_1m_before=0.9, load_1m_after=1.1, threads_per_party=1, protocol="SEMI2K", field="FM64",
                 fxp_fraction_bits=16, spu="0.9.5", runtime="2 processes, spu link brpc over 127.0.0.1",
                 timestamp="2026-11-26T11:59:00+00:00")
            for i, op in enumerate(ops)]


def sitting_rows(ops=SECONDS, systems=("engine", "crypten", "spu")) -> list[dict]:
    rows = []
    if "crypten" in systems:
        rows += anchors.crypten_rows(*crypten_out(ops))
    if "spu" in systems:
        rows += anchors.spu_rows(spu_out(ops))
    if "engine" in systems:
        rows += anchors.engine_rows(engine_csv(ops))
    return rows


def table(**kw) -> pd.DataFrame:
    return anchors.combine(sitting_rows(**kw), "20261126-115800", "AMD EPYC 7B13", "sse4_2+avx+avx2+fma", 2)


def test_each_system_maps_to_the_same_columns():
    t = table()
    assert list(t.columns) == anchors.COLUMNS
    assert list(t.system) == ["engine"] * 4 + ["crypten"] * 4 + ["spu"] * 4      # engine first
    assert list(t.op[:4]) == list(anchors.OPS)
    row = t[(t.system == "spu") & (t.op == "relu")].iloc[0]
    assert (row.bytes, row.rounds, row.processes, row.threads_per_process, row.reps) == (3001, 21, 2, 1, 5)
    assert (row.load_avg_1m_before, row.load_avg_1m_after) == (0.9, 1.1)
    assert "spu 0.9.5" in row.versions and "SEMI2K" in row.versions
    c = t[(t.system == "crypten") & (t.op == "softmax")].iloc[0]
    assert (c.bytes, c.rounds, c.processes, c.date) == (2002, 12, 2, "2026-11-26T11:58:00+00:00")
    assert "crypten 0.4.1" in c.versions
    e = t[(t.system == "engine") & (t.op == "matmul")].iloc[0]
    assert (e.bytes, e.rounds, e.processes, e.threads_per_process) == (1000, 1, 1, 2)
    assert "abc1234" in e.versions
    assert set(t.cpu_model) == {"AMD EPYC 7B13"} and set(t.vector_ext) == {"sse4_2+avx+avx2+fma"}
    assert set(t.sitting) == {"20261126-115800"}


def test_ratios_are_engine_over_anchor_of_the_same_op_and_targets_are_the_issues():
    t = table().set_index(["system", "op"])
    for op, (e, c, s) in SECONDS.items():
        assert t.loc[("crypten", op), "engine_over_anchor"] == pytest.approx(e / c)
        assert t.loc[("crypten", op), "speedup"] == pytest.approx(c / e)
        assert t.loc[("spu", op), "speedup"] == pytest.approx(s / e)
        assert pd.isna(t.loc[("engine", op), "speedup"]) and pd.isna(t.loc[("engine", op), "target_met"])
    met = {k: bool(v) for k, v in t.target_met.items() if not pd.isna(v)}
    assert met == {("crypten", "matmul"): True, ("crypten", "relu"): False, ("crypten", "softmax"): False,
                   ("crypten", "ffn_decode"): True,  # exactly 3x counts as met
                   ("spu", "matmul"): False, ("spu", "relu"): True, ("spu", "softmax"): True,
                   ("spu", "ffn_decode"): True}
    assert t.loc[("crypten", "relu"), "target_speedup"] == 10 and t.loc[("spu", "matmul"), "target_speedup"] == 2


def test_an_op_the_engine_did_not_run_has_no_ratio_and_duplicates_are_refused():
    rows = [r for r in sitting_rows() if not (r["system"] == "engine" and r["op"] == "softmax")]
    t = anchors.combine(rows, "s", "cpu", "avx2").set_index(["system", "op"])
    assert math.isnan(t.loc[("crypten", "softmax"), "speedup"]) and pd.isna(t.loc[("spu", "softmax"), "target_met"])
    assert t.loc[("crypten", "relu"), "speedup"] == pytest.approx(9.5)
    with pytest.raises(CometError, match="same op and system"):
        anchors.combine(sitting_rows() + anchors.engine_rows(engine_csv(["relu"])), "s", "cpu", "avx2")
    with pytest.raises(CometError, match="no benchmark rows"):
        anchors.combine([], "s", "cpu", "avx2")


def test_readme_section_marks_targets_and_names_the_machine(tmp_path):
    body = anchors.performance_section(table())
    assert "AMD EPYC 7B13 (sse4_2+avx+avx2+fma)" in body and "20261126-115800" in body
    assert "load average 0.50-1.25" in body
    lines = {}
    for ln in body.splitlines():    # the time table comes first; the bytes/rounds table repeats the ops
        if ln.startswith("| "):
            lines.setdefault(ln.split(" | ")[0].strip("| "), ln)
    assert "| 1,000 B, 1 rounds | 2,000 B, 10 rounds | 3,000 B, 20 rounds |" in body
    assert "11.00x (target >= 10x: met)" in lines["matmul"] and "1.60x (target >= 2x: **not met**)" in lines["matmul"]
    assert "9.50x (target >= 10x: **not met**)" in lines["relu"] and "9.00x (target >= 3x: met)" in lines["relu"]
    assert "3.00x (target >= 3x: met)" in lines["ffn_decode"]
    assert "CrypTen 0.4.1: 2 processes x 1 thread, 5 timed reps" in body and "engine: 1 process x 2 threads" in body
    assert "Not measured" not in body and "loaded" not in body and "GLIBC_TUNABLES" not in body
    tuned = anchors.combine(sitting_rows(), "20261126-115800", "AMD EPYC 7B13", "avx2", 2,
                            malloc_tunables="glibc.malloc.hugetlb=1")
    assert set(tuned.malloc_tunables) == {"glibc.malloc.hugetlb=1"}
    assert "Every system ran with GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in anchors.performance_section(tuned)
    busy = table()
    busy.loc[3, "load_avg_1m_after"] = 2.5                                 # above the 2 CPUs
    assert "**The machine was loaded**: the load average (2.50) exceeded its 2 CPUs" in anchors.performance_section(busy)
    partial = anchors.performance_section(table(systems=("engine", "crypten")))
    assert "Not measured in this sitting: SecretFlow-SPU" in partial and "not run" in partial
    mixed = table()
    mixed.loc[0, "sitting"] = "another"
    with pytest.raises(CometError, match="mixes sittings"):
        anchors.performance_section(mixed)


def test_replace_section_touches_only_the_text_between_the_markers():
    text = ("# T\nbefore\n<!-- performance:start (generated) -->\nold line 1\nold line 2\n"
            "<!-- performance:end -->\nafter\n")
    new = anchors.replace_section(text, "new body\n")
    assert new == "# T\nbefore\n<!-- performance:start (generated) -->\nnew body\n<!-- performance:end -->\nafter\n"
    assert anchors.replace_section(new, "new body") == new                    # idempotent
    with pytest.raises(CometError, match="no performance markers"):
        anchors.replace_section("# no markers\n", "x")


def test_the_repository_docs_have_the_markers():
    text = (REPO / "docs" / "results.md").read_text()
    assert anchors.replace_section(text, "probe").count("probe") == 1


def write_sitting(folder: Path, systems=("engine", "crypten", "spu")) -> Path:
    folder.mkdir(parents=True)
    table(systems=systems).to_csv(folder / "anchors.csv", index=False)
    return folder


def publish(*args):
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_publish.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_publish_refuses_to_overwrite_and_regenerates_the_readme(tmp_path):
    sitting = write_sitting(tmp_path / "outputs" / "20261126-115800")
    out, readme = tmp_path / "engine_ops.csv", tmp_path / "README.md"
    readme.write_text("intro\n<!-- performance:start x -->\nold\n<!-- performance:end -->\ntail\n")
    out.write_text("old results\n")
    p = publish(sitting, "--out", out, "--readme", readme)
    assert p.returncode == 2 and "exists; pass --overwrite" in p.stderr
    assert out.read_text() == "old results\n" and "\nold\n" in readme.read_text()   # nothing touched
    p = publish(sitting, "--out", out, "--readme", readme, "--overwrite")
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() == (sitting / "anchors.csv").read_bytes()
    text = readme.read_text()
    assert text.startswith("intro\n<!-- performance:start x -->\nOne sitting (20261126-115800)")
    assert text.endswith("<!-- performance:end -->\ntail\n") and "\nold\n" not in text
    assert "11.00x (target >= 10x: met)" in text
    again = publish("--readme-only", "--out", out, "--readme", readme)
    assert again.returncode == 0 and readme.read_text() == text


def test_publish_refuses_a_sitting_without_the_engine_or_a_table_that_is_not_one(tmp_path):
    sitting = write_sitting(tmp_path / "s", systems=("crypten", "spu"))
    p = publish(sitting, "--out", tmp_path / "o.csv", "--readme", tmp_path / "R.md")
    assert p.returncode == 2 and "no engine rows" in p.stderr and not (tmp_path / "o.csv").exists()
    engine_csv().to_csv(tmp_path / "engine_only.csv", index=False)       # engine_ops.py's format
    (tmp_path / "R.md").write_text("<!-- performance:start -->\n<!-- performance:end -->\n")
    p = publish("--readme-only", "--out", tmp_path / "engine_only.csv", "--readme", tmp_path / "R.md")
    assert p.returncode == 2 and "not a sitting's combined table" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_sitting_whose_anchors_cannot_install_still_runs_the_engine(tmp_path):
    """CrypTen's setup fails (as offline) and SPU's harness is absent: each is reported in one line,
    nothing of theirs is timed, the engine's rows are written; an existing sitting folder is refused."""
    harness = tmp_path / "anchors"
    (harness / "crypten").mkdir(parents=True)
    (harness / "crypten" / "setup.sh").write_text("echo 'ERROR: Could not find a version that satisfies crypten' >&2\nexit 1\n")
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "ANCHOR_CRYPTEN_VENV": str(tmp_path / "cv"),
           "ANCHOR_SPU_VENV": str(tmp_path / "sv")}
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_sitting.py"), "--ops", "relu", "--reps", "1",
           "--engine-threads", "1", "--out-root", str(tmp_path), "--stamp", "t1", "--anchors", str(harness)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    assert ("WARNING: crypten not in this sitting: skipped: CrypTen setup failed (exit 1; offline or no wheel?): "
            "$ bash") in p.stderr and "Could not find a version" in p.stderr
    assert f"WARNING: spu not in this sitting: skipped: no SPU harness at {harness / 'spu'}" in p.stderr
    assert not (tmp_path / "cv").exists() and not (tmp_path / "sv").exists()
    folder = tmp_path / "t1"
    t = anchors.read_table(folder / "anchors.csv")
    assert list(zip(t.system, t.op)) == [("engine", "relu")]
    assert t.bytes[0] > 0 and t.rounds[0] == 9 and t.seconds[0] > 0 and t.reps[0] == 1 and t.cpus[0] >= 1
    meta = json.loads((folder / "sitting.json").read_text())
    assert meta["status"]["engine"] == "ok" and meta["status"]["crypten"].startswith("skipped")
    assert (folder / "engine.csv").is_file() and p.stdout.strip().splitlines()[-1] == str(folder)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 2 and "exists" in again.stderr


def test_sitting_with_no_setup_skips_an_anchor_without_its_venv(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "ANCHOR_SPU_VENV": str(tmp_path / "no-venv")}
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_sitting.py"), "--systems", "spu",
                        "--no-setup", "--out-root", str(tmp_path), "--stamp", "t2"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 1 and "WARNING" not in p.stderr and "nothing ran" in p.stderr
    assert json.loads((tmp_path / "t2" / "sitting.json").read_text())["status"]["spu"].startswith("skipped: no venv")
