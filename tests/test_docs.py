"""The documentation: the site builds strictly (a broken link or a page missing from the nav fails), and
every `comet` command shown in a code block of the README, CONTRIBUTING.md or docs/ is checked as the CLI
would check it before any work (its overrides compose and pass every config check; its sub-command and
artifact exist), unless its line is marked `# needs: <what CI lacks>` (root, a cluster, two machines).
A renamed key or config that the docs still show therefore fails here."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]


def shown_commands() -> list[tuple[str, str]]:
    """(page, command line) of every `comet ...` line inside a ```bash block (`# needs:` lines left out)."""
    out = []
    for page in PAGES:
        if page.name == "contributing.md":   # a link to CONTRIBUTING.md
            continue
        for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():   # continuation lines joined
                line = line.strip()
                if line.startswith("comet ") and "# needs:" not in line:
                    out.append((page.name, line))
    return out


def _args(line: str) -> list[str]:
    return shlex.split(line, comments=True)[1:]


def _check(args: list[str]) -> None:
    from cli.hydra_launch import CONF_DIR, check_group_overrides, check_launcher
    from cli.main import app, check_run
    from cli.preflight import preflight
    from comet_core.config.schema import register
    from plotting.analyses import ARTIFACTS

    register()

    cmd, rest = args[0], args[1:]
    names = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    assert cmd in names, f"`comet {cmd}` is not a command ({', '.join(sorted(names))})"
    if cmd == "run-experiment":
        check_group_overrides(rest)
        check_launcher(rest)
        preflight("config", rest, str(CONF_DIR), check_run)
    elif cmd == "train-predictor":
        from comet_core.predictor.train_task import check_train_predictor

        preflight("train_predictor", rest, str(CONF_DIR), check_train_predictor)
    elif cmd == "plot":
        assert rest and (rest[0] in ARTIFACTS or rest[0] in ("all", "readme")), f"no artifact {rest[:1]}"


def test_the_docs_show_commands():
    cmds = shown_commands()
    assert len(cmds) >= 5 and any(c.startswith("comet run-experiment") for _, c in cmds)


@pytest.mark.parametrize("page,line", shown_commands(), ids=lambda v: v if "comet" in str(v) else str(v))
def test_every_command_the_docs_show_passes_the_cli_checks(page, line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # a prompt_file= or output_dir= in a command is relative to where it runs
    (tmp_path / "prompt.txt").write_text("JULIET. 'Tis but thy name\n")
    _check(_args(line))


def test_docs_site_builds_strictly(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        if os.environ.get("CI"):
            pytest.fail("mkdocs is missing: `make install` installs the docs extra (pip install -e '.[docs]')")
        pytest.skip("mkdocs not installed: pip install -e '.[docs]'")
    r = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file()


def test_readme_tour_is_at_most_250_lines():
    """Issue 28's contract: the README is a tour (the generated blocks included); detail lives in docs/."""
    n = len((REPO / "README.md").read_text().splitlines())
    assert n <= 250, f"README.md has {n} lines; move detail into docs/"



def test_compute_model_speedup_table_is_the_committed_end_to_end():
    """docs/compute-model.md's table of end_to_end speedups (communication only, and with modelled compute)
    holds the ranges results/end_to_end/data.csv gives, per class of baseline, at two decimals."""
    import pandas as pd

    d = pd.read_csv(REPO / "results" / "end_to_end" / "data.csv")
    t = d[(d.phase == "total") & (d.network == "lan")].set_index(["model", "system"])
    classes = {"dense, MPCFormer, SecFormer, PUMA": ("dense", "mpcformer", "secformer", "puma"),
               "BOLT": ("bolt",), "Iron": ("iron",)}
    text = (REPO / "docs" / "compute-model.md").read_text()
    for label, systems in classes.items():
        cells = []
        for col in ("comm_s", "total_s"):
            r = [t.loc[(m, s), col] / t.loc[(m, "comet"), col] for m in t.index.get_level_values(0).unique()
                 for s in systems]
            cells.append(f"{min(r):.2f}-{max(r):.2f}x")
        row = next((ln for ln in text.splitlines() if ln.startswith(f"| {label}")), None)
        assert row is not None, f"no row for {label}"
        assert row.split("|")[2].strip() == cells[0] and row.split("|")[3].strip() == cells[1], (row, cells)


def test_iron_bolt_restated_table_is_its_csv():
    """results/iron_bolt_restated/README.md's table (Comet over iron/bolt per linear layer and OT flavour: comm
    only, with compute, bytes) holds the ranges of restated.csv over its models, at the decimals written
    (a transcription error, or a table left behind by a reprice, fails here)."""
    import re

    import pandas as pd

    d = pd.read_csv(REPO / "results" / "iron_bolt_restated" / "restated.csv")
    text = (REPO / "results" / "iron_bolt_restated" / "README.md").read_text()
    rows = [ln for ln in text.splitlines() if re.match(r"\| (iron|bolt), ", ln)]
    assert len(rows) == 8, rows
    for row in rows:
        label, *cells = [c.strip() for c in row.strip("|").split("|")]
        system, linear, ot = [w.strip("*") for w in re.split(r",\s*", label.split(" (")[0])]
        g = d[(d.system == system) & (d.linear == linear) & (d.ot == ot)]
        assert len(g) == 4, label
        for cell, col in zip(cells, ("comm_speedup", "speedup", "comm_reduction")):
            lo, hi = re.match(r"([\d.]+)-([\d.]+)x", cell).groups()
            places = len(lo.split(".")[1])
            assert (float(lo), float(hi)) == (round(g[col].min(), places), round(g[col].max(), places)), (label, col)
