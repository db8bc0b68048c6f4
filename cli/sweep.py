"""Multirun bookkeeping: every job's outcome, a summary line, and one table across the jobs.

A failing job is recorded and the sweep goes on (cli/hydra_launch.py); at the end ``finish`` prints
where each job's tables are, writes ``<sweep dir>/metrics.csv`` (every finished job's metrics.csv with
``job`` and ``overrides`` columns in front), prints the finished jobs side by side (``comet compare``,
experiments/compare.py) and returns the exit status (1 if any job failed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("comet.sweep")


@dataclass
class Job:
    num: int
    overrides: list[str]
    out: str | None = None
    error: str | None = None


@dataclass
class Sweep:
    dir: Path | None = None
    jobs: list[Job] = field(default_factory=list)


SWEEP = Sweep()


RECORD = ".job-{num}.json"    # one hidden file per job in the sweep folder (no folder: job folders stay 0, 1, ...)


def record(num: int, overrides: list[str], sweep_dir: str, out: str | None = None, error: str | None = None) -> None:
    """Keep one job's outcome (in memory, and on disk for a launcher in another process)."""
    import json
    import os

    SWEEP.dir = Path(sweep_dir).resolve()
    job = Job(num, list(overrides), str(Path(out).resolve()) if out else None, error)
    SWEEP.jobs = [j for j in SWEEP.jobs if j.num != num] + [job]
    SWEEP.dir.mkdir(parents=True, exist_ok=True)
    path = SWEEP.dir / RECORD.format(num=num)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"num": num, "overrides": job.overrides, "out": job.out, "error": error}))
    tmp.replace(path)


def collect(sweep_dir: str) -> None:
    """Merge the job records of ``sweep_dir`` written by other processes into this process's sweep."""
    import json

    d = Path(sweep_dir).resolve()
    SWEEP.dir = d
    have = {j.num for j in SWEEP.jobs}
    for f in sorted(d.glob(RECORD.format(num="*"))):
        try:
            r = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            log.warning("unreadable job record %s: %s", f, e)
            continue
        if r["num"] not in have:
            SWEEP.jobs.append(Job(int(r["num"]), list(r["overrides"]), r.get("out"), r.get("error")))
            have.add(r["num"])
    SWEEP.jobs.sort(key=lambda j: j.num)


try:
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover  (hydra-core < 1.1)
    _Callback = object


class CollectJobs(_Callback):
    """Hydra callback: when a sweep ends, read back the records of jobs that ran in other processes."""

    def on_multirun_end(self, config, **kwargs) -> None:
        collect(str(config.hydra.sweep.dir))


def aggregate(sweep: Sweep, table: str = "metrics.csv") -> Path | None:
    """One table across the finished jobs (``job``, ``overrides`` first), written into the sweep dir."""
    import pandas as pd

    frames = []
    for j in sweep.jobs:
        if j.out and (Path(j.out) / table).is_file():
            df = pd.read_csv(Path(j.out) / table)
            df.insert(0, "overrides", " ".join(j.overrides))
            df.insert(0, "job", j.num)
            frames.append(df)
    if not frames or sweep.dir is None:
        return None
    path = sweep.dir / table
    tmp = path.with_name(f".{table}.tmp")
    pd.concat(frames, ignore_index=True).to_csv(tmp, index=False)
    tmp.replace(path)
    return path


SHORT_SWEEP = 4   # up to this many jobs the comparison shows every phase; beyond, the first network's total


def compare_jobs(done: list[Job]) -> str | None:
    """The finished jobs side by side (experiments/compare.py), job numbers in place of run numbers."""
    from comet_core.errors import CometError
    from experiments.compare import compare_frame, compare_text, load_runs

    folders = [j.out for j in done if j.out]
    if len(folders) < 2:
        return None
    try:
        df = compare_frame(load_runs([Path(f) for f in folders]))
    except CometError as e:   # e.g. a job of another command (train-predictor) without metrics.csv
        log.info("no comparison of the sweep's jobs: %s", e)
        return None
    return compare_text(df, "default" if len(folders) <= SHORT_SWEEP else "total")


def finish() -> int:
    """Print the sweep's outcome (failures in one summary line); 0 if every job finished, else 1."""
    import sys

    s = SWEEP
    if not s.jobs:
        return 0
    done = [j for j in s.jobs if j.error is None]
    failed = [j for j in s.jobs if j.error is not None]
    table = aggregate(s)
    for f in s.dir.glob(RECORD.format(num="*")) if s.dir is not None else ():
        f.unlink(missing_ok=True)   # the records carried the jobs' outcomes here; the summary and table hold them now
    comparison = compare_jobs(done)
    if comparison:
        print(comparison)
    print(f"sweep: {len(done)} of {len(s.jobs)} jobs finished; tables in {s.dir}/<job>/"
          + (f"; all jobs' metrics in {table}" if table else ""))
    if failed:
        desc = "; ".join(f"job {j.num} ({' '.join(j.overrides)}): {j.error}" for j in failed)
        print(f"error: {len(failed)} of {len(s.jobs)} sweep jobs failed: {desc}", file=sys.stderr)
    print(s.dir)
    return 1 if failed else 0
