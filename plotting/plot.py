"""`comet plot <name>|all`: a paper artifact's sweep -> results/<name>/ (data.csv, table.md, figures, comparison).

Steps (plot_artifact):
1. pick the sweep: the newest complete multirun sweep whose jobs say `experiment.name: <name>` under the runs
   root (default outputs/multirun), or the one `run` names (sweeps.py);
2. analyse it (analyses.py): one tidy data.csv (one row per job x phase, or per job x metric for
   train-predictor), derived tables, the measured values of the paper's claims, figures;
3. refuse when results/<name>/ already holds any file this would write, unless overwrite;
4. write data.csv, table.md, comparison.csv and every figure as PNG and PDF; for a table of runs (a `mode`
   column) fingerprint.json: its revisions and the fingerprints of the protocols that made it
   (experiments/fingerprint.py; tests/test_fingerprint.py fails when HEAD's protocols differ);
5. return the comparison with experiments/expected/<name>.csv (the CLI prints it).
Library code: logs, never prints; user errors are CometError (one line).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from comet_core.errors import CometError
from experiments import fingerprint
from experiments.artifacts import CONF_EXPERIMENT, EXPECTED_DIR, how_to_run
from plotting.analyses import ARTIFACTS, exp_block
from plotting.compare import compare, comparison_text, load_expected
from plotting.figures import draw
from plotting.sweeps import NoSweepError, Sweep, select_sweep

log = logging.getLogger("comet.plot")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RUNS = Path("outputs/multirun")
DEFAULT_RESULTS = Path("results")


@dataclass
class PlotResult:
    name: str
    out_dir: Path
    sweep: Sweep
    files: list[Path] = field(default_factory=list)
    comparison: pd.DataFrame | None = None
    text: str = ""


def check_name(name: str) -> None:
    if name not in ARTIFACTS:
        raise CometError(f"unknown artifact {name!r}; choose one of: {', '.join(ARTIFACTS)}, all, readme")


def _fmt(v) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v}"
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        if v == int(v) and abs(v) >= 1e4:
            return f"{int(v)}"
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def markdown(df: pd.DataFrame) -> str:
    """A pipe table (no tabulate dependency); floats to 4 significant digits."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v.item() if hasattr(v, "item") else v) for v in row) + " |")
    return "\n".join(lines)


def _rel(p: Path) -> str:
    try:
        return os.path.relpath(p)
    except ValueError:
        return str(p)


def failed_job_notes(sweep: Sweep) -> list[str]:
    """One note per job of the sweep that did not finish: its overrides and the error line of its run.log."""
    notes = []
    for j in sweep.jobs:
        if j.done:
            continue
        log_file = j.dir / "run.log"
        lines = log_file.read_text(errors="replace").splitlines() if log_file.is_file() else []
        err = next((ln.split("] - ", 1)[-1] for ln in reversed(lines) if "][ERROR]" in ln),
                   "no error recorded in its run.log (interrupted?)")
        what = " ".join(o for o in j.overrides if not o.startswith(("experiment=", "+experiment=")))
        notes.append(f"job {j.dir.name} ({what}) did not finish: {err.strip()[:300]}")
    return notes


def _table_md(name: str, sweep: Sweep, analysis, cmp: pd.DataFrame, figures: list[str],
              from_data: bool = False) -> str:
    art = ARTIFACTS[name]
    revs = sorted(set(analysis.data["git_rev"].astype(str))) if "git_rev" in analysis.data else []
    jobs = analysis.data.job.nunique() if from_data and "job" in analysis.data else len(sweep.done_jobs)
    made = (f"Made by `comet plot {name} --from-data` from data.csv, which `comet plot {name}` collected from the "
            f"sweep `{_rel(sweep.dir)}`" if from_data else f"Made by `comet plot {name}` from the sweep `{_rel(sweep.dir)}`")
    out = [f"# {name}: {art.title}", "",
           f"{made} ({sweep.preset} preset, {jobs} jobs{'; git ' + ', '.join(revs) if revs else ''}).",
           f"Sweep: `{how_to_run(name)}` (conf/experiment/{name}.yaml).", ""]
    if sweep.preset != "full":
        out += [f"**{sweep.preset} preset**: tiny shapes; a pipeline check, not a reproduction.", ""]
    for n in analysis.notes:
        out.append(f"- note: {n}")
    if analysis.notes:
        out.append("")
    for title, t in analysis.tables.items():
        out += [f"## {title}", "", markdown(t), ""]
    out += ["## Comparison with the paper", ""]
    if cmp.empty:
        out += [f"The paper gives no value for this artifact (no experiments/expected/{name}.csv).", ""]
    else:
        out += ["Tolerances are ours (see experiments/expected/" + name + ".csv for each reason).", "",
                markdown(cmp[[c for c in ("claim", "metric", "stat", "paper", "ours", "point", "beside", "unit",
                                          "tolerance", "status", "source") if c in cmp]]),
                ""]
    if figures:
        out += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(out)


def plot_artifact(name: str, run: Path | None = None, overwrite: bool = False, runs_root: Path = DEFAULT_RUNS,
                  results_dir: Path = DEFAULT_RESULTS, preset: str = "any",
                  expected_dir: Path = EXPECTED_DIR) -> PlotResult:
    """Collect the sweep of artifact `name` into results_dir/<name>/ and compare with the paper."""
    check_name(name)
    if preset not in ("any", "full", "quick"):
        raise CometError(f"--preset must be any, full or quick, got {preset!r}")
    art = ARTIFACTS[name]
    sweep = select_sweep(name, art.accepts, Path(runs_root), None if run is None else Path(run), preset,
                         how_to_run(name))
    log.info("plotting %s from %s", name, sweep.describe())
    exp = exp_block(sweep)
    analysis = art.analyze(sweep, exp)
    analysis.notes += failed_job_notes(sweep)
    return _publish(name, sweep, analysis, Path(results_dir), overwrite, expected_dir)


def plot_from_data(name: str, overwrite: bool = False, results_dir: Path = DEFAULT_RESULTS,
                   expected_dir: Path = EXPECTED_DIR) -> PlotResult:
    """Re-analyse results_dir/<name>/data.csv (what an earlier `comet plot <name>` collected from its sweep)
    without the sweep's job folders: table.md, comparison.csv and the figures again; data.csv is kept as is.
    Only for artifacts whose analysis needs nothing beyond data.csv (``Artifact.from_data``)."""
    import yaml

    check_name(name)
    art = ARTIFACTS[name]
    able = [n for n, a in ARTIFACTS.items() if a.from_data is not None]
    if art.from_data is None:
        raise CometError(f"{name}'s analysis needs its sweep's job folders; --from-data works for {', '.join(able)}")
    out = Path(results_dir) / name
    if not (out / "data.csv").is_file():
        raise CometError(f"{out / 'data.csv'} does not exist; run `{how_to_run(name)}` then `comet plot {name}`")
    old = out / "comparison.csv"
    prev = pd.read_csv(old, keep_default_na=False) if old.is_file() else pd.DataFrame()
    origin = Path(str(prev.sweep.iloc[0])) if "sweep" in prev and len(prev) else out / "data.csv"
    preset = str(prev.preset.iloc[0]) if "preset" in prev and len(prev) else "full"
    exp = (yaml.safe_load((CONF_EXPERIMENT / f"{name}.yaml").read_text()) or {}).get("experiment", {})
    analysis = art.from_data(pd.read_csv(out / "data.csv"), exp)
    # what the sweep itself told (failed jobs, the artifact whose sweep it re-used) is not in data.csv: kept
    notes = str(prev.analysis_notes.iloc[0]) if "analysis_notes" in prev and len(prev) else ""
    analysis.notes += [n for n in notes.split("; ") if n and n not in analysis.notes]
    sweep = Sweep(dir=origin, artifact=name, preset=preset, command=str(exp.get("command", "run-experiment")))
    return _publish(name, sweep, analysis, Path(results_dir), overwrite, expected_dir, from_data=True)


def folder_readme(name: str) -> str:
    """The README.md of results/<name>/: which commands make its files (written once; kept on --overwrite)."""
    return (f"# {name}: {ARTIFACTS[name].title}\n\n"
            f"A paper artifact. Made by `{how_to_run(name)}` (the sweep, conf/experiment/{name}.yaml), then "
            f"`comet plot {name}` (or `comet plot {name} --from-data`: the same from data.csv alone, where the "
            f"analysis allows).\n\n"
            f"- `data.csv`: the tidy table of the sweep (one row per job and phase, or per job and metric);\n"
            f"- `table.md`: the derived tables, the comparison with the paper and the sweep it came from;\n"
            f"- `comparison.csv`: each claim against experiments/expected/{name}.csv (where the paper gives one);\n"
            f"- `fingerprint.json` (cost-mode tables): the protocols that priced it (`comet fingerprint --check`);\n"
            f"- `{name}_*.png` / `.pdf`: the figures.\n")


def _publish(name: str, sweep: Sweep, analysis, results_dir: Path, overwrite: bool, expected_dir: Path,
             from_data: bool = False) -> PlotResult:
    """Steps 3-5 of the module docstring (data.csv is not rewritten ``from_data``)."""
    cmp = compare(name, analysis.claims, expected_dir, beside=analysis.beside)
    out = Path(results_dir) / name
    planned = ([] if from_data else ["data.csv"]) + ["table.md", "comparison.csv", fingerprint.FILE] + [
        f"{f.stem}.{e}" for f in analysis.figures for e in ("png", "pdf")]
    stale = sorted(p.name for p in out.glob(f"{name}_*.png")) + sorted(p.name for p in out.glob(f"{name}_*.pdf"))
    existing = sorted({f for f in planned if (out / f).exists()} | set(stale))
    if existing and not overwrite:
        raise CometError(f"{out} already holds {', '.join(existing[:4])}{' ...' if len(existing) > 4 else ''}; "
                         f"pass --overwrite to replace them")
    out.mkdir(parents=True, exist_ok=True)
    for f in stale:  # figures of an earlier version of this artifact's plot
        (out / f).unlink()
    files = []
    if not from_data:
        analysis.data.to_csv(out / "data.csv", index=False)
        files.append(out / "data.csv")
    cmp.assign(preset=sweep.preset, sweep=_rel(sweep.dir), analysis_notes="; ".join(analysis.notes)).to_csv(
        out / "comparison.csv", index=False)
    files.append(out / "comparison.csv")
    if "mode" in analysis.data:
        reprice = f"{how_to_run(name)} && comet plot {name} --overwrite"
        files.append(fingerprint.stamp(out / "data.csv", reprice=reprice))
    fig_names = []
    for f in analysis.figures:
        if f.band_metric and not cmp.empty:
            exp_rows = load_expected(name, expected_dir)
            row = exp_rows[exp_rows.metric == f.band_metric]
            if len(row) and not row[["paper_value_lo", "paper_value_hi"]].isna().any(axis=None):
                f.band = (float(row.paper_value_lo.iloc[0]), float(row.paper_value_hi.iloc[0]))
        if f.data.empty or f.y not in f.data or not (f.data[f.y].dropna() != 0).any():
            log.info("figure %s skipped: no non-zero %s values", f.stem, f.y)
            continue
        files += draw(f, out)
        fig_names.append(f"{f.stem}.png")
    (out / "table.md").write_text(_table_md(name, sweep, analysis, cmp, fig_names, from_data))
    files.append(out / "table.md")
    if not (out / "README.md").exists():   # every folder of results/ says what made it (tests/test_results_layout.py)
        (out / "README.md").write_text(folder_readme(name))
        files.append(out / "README.md")
    text = comparison_text(name, cmp, sweep.preset)
    if analysis.notes:
        text += "\n" + "\n".join(f"  note: {n}" for n in analysis.notes)
    return PlotResult(name, out.resolve(), sweep, files, cmp, text)


def plot_all(**kw) -> tuple[list[PlotResult], list[str], list[str]]:
    """Every artifact that has a sweep: (results, artifacts skipped for want of a sweep, failures)."""
    done, skipped, failed = [], [], []
    for name in ARTIFACTS:
        try:
            done.append(plot_artifact(name, **kw))
        except NoSweepError as e:
            skipped.append(f"{name}: {e}")
        except CometError as e:
            failed.append(f"{name}: {e}")
    return done, skipped, failed
