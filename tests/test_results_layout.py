"""results/ as folders (issue 28 item 4): one folder per artifact, benchmark or study, each with a README.md
naming the commands that made its files; nothing loose at the top but the index results/README.md, which has
one line per folder; no file or folder named after a step of the process that made it (a before/after
sitting, a stop, a raw pass) rather than after what it holds."""
from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "results"
# words that name how a file came about, not what it holds (split on _ - . and spaces)
PROCESS_WORDS = {"ab", "before", "after", "raw", "old", "new", "tmp", "temp", "final", "draft", "wip"}
STOP = re.compile(r"^stop\d*$")


def layout_problems(results: Path) -> list[str]:
    problems = []
    index = results / "README.md"
    text = index.read_text() if index.is_file() else ""
    if not index.is_file():
        problems.append("no index results/README.md")
    for p in sorted(results.iterdir()):
        if p.is_file() and p.name != "README.md":
            problems.append(f"loose file at the top: {p.name} (put it into a folder with a README.md)")
        if p.is_dir():
            if not (p / "README.md").is_file():
                problems.append(f"{p.name}/ has no README.md (name the command that made its files)")
            lines = [ln for ln in text.splitlines() if ln.startswith("- ") and f"`{p.name}/`" in ln]
            if len(lines) != 1:
                problems.append(f"{p.name}/ has {len(lines)} lines in results/README.md (want 1)")
    listed = re.findall(r"^- \[`([^`]+)/`\]", text, flags=re.M)
    problems += [f"results/README.md lists {n}/, which does not exist" for n in listed if not (results / n).is_dir()]
    for p in sorted(results.rglob("*")):
        words = {w.lower() for w in re.split(r"[_\-. ]+", p.name)}
        bad = sorted(w for w in words if w in PROCESS_WORDS or STOP.match(w))
        if bad:
            problems.append(f"{p.relative_to(results)}: named after a process step ({', '.join(bad)}); "
                            "name it after what it holds")
    return problems


def test_results_are_folders_with_readmes_and_an_index():
    problems = layout_problems(RESULTS)
    assert not problems, "\n".join(problems)


def test_layout_check_catches_each_kind_of_problem(tmp_path):
    # Positive control: a loose file, a folder without README, a folder missing from the index, an index line
    # without a folder, and a process-word name are each named; a good layout passes.
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "README.md").write_text("# good\n")
    (tmp_path / "good" / "timings.csv").write_text("a\n1\n")
    (tmp_path / "README.md").write_text("- [`good/`](good/README.md): good\n")
    assert layout_problems(tmp_path) == []
    (tmp_path / "loose.csv").write_text("a\n")
    (tmp_path / "bare").mkdir()
    (tmp_path / "good" / "timings_ab_stop9.csv").write_text("a\n")
    (tmp_path / "README.md").write_text("- [`good/`](good/README.md): good\n- [`gone/`](gone/README.md): x\n")
    found = "\n".join(layout_problems(tmp_path))
    for needle in ("loose file at the top: loose.csv", "bare/ has no README.md", "bare/ has 0 lines",
                   "lists gone/", "good/timings_ab_stop9.csv: named after a process step (ab, stop9)"):
        assert needle in found, (needle, found)
