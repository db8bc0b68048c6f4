"""Find the Hydra multirun sweeps of a paper artifact and pick the one `comet plot` reads.

A sweep is a folder holding Hydra's ``multirun.yaml`` (``outputs/multirun/<time>/`` for run-experiment,
``outputs/multirun/train-predictor/<time>/`` for train-predictor) with one job folder per job. A job belongs
to artifact ``<name>`` when its resolved ``config.yaml`` (or Hydra's ``.hydra/config.yaml``) says
``experiment.name: <name>``; conf/experiment/*.yaml set that key.

Steps:
1. every ``multirun.yaml`` up to two levels below the runs root is a sweep; its jobs are the sub-folders
   with a ``.hydra/`` folder;
2. a job is done when its result files exist (run-experiment: metrics.csv; train-predictor: metrics.csv,
   accuracy.csv and sweep.csv);
3. the number of jobs the sweep launched is recomputed from multirun.yaml with Hydra's own sweep
   expansion (the sweep's params, then the command line, later keys winning), so a sweep whose last jobs
   never started (a crash) is seen as incomplete, not as a smaller complete sweep;
4. the newest complete sweep wins (multirun.yaml's modification time); ``--run DIR`` names one instead,
   and then a partial sweep is accepted with a warning (its finished jobs are used).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from comet_core.errors import CometError

log = logging.getLogger("comet.plot")

RESULT_FILES = {
    "run-experiment": ("metrics.csv",),
    "train-predictor": ("metrics.csv", "accuracy.csv", "sweep.csv"),
}


class NoSweepError(CometError):
    """No (complete) sweep of the artifact exists: `comet plot all` skips it."""


@dataclass
class Job:
    dir: Path
    cfg: DictConfig
    overrides: list[str]
    done: bool


@dataclass
class Sweep:
    dir: Path
    artifact: str | None
    preset: str
    command: str
    jobs: list[Job] = field(default_factory=list)
    launched: int | None = None      # jobs the sweep expands to (None: could not be recomputed)
    mtime: float = 0.0

    @property
    def done_jobs(self) -> list[Job]:
        return [j for j in self.jobs if j.done]

    @property
    def complete(self) -> bool:
        n = len(self.done_jobs)
        expected = self.launched if self.launched is not None else len(self.jobs)
        return n > 0 and n >= expected

    def describe(self) -> str:
        expected = self.launched if self.launched is not None else len(self.jobs)
        return f"{self.dir} ({self.preset} preset, {len(self.done_jobs)}/{expected} jobs done)"


def _load_cfg(path: Path) -> DictConfig | None:
    try:
        cfg = OmegaConf.load(path)
    except Exception:  # noqa: BLE001  unreadable or half-written file: not a usable job
        return None
    return cfg if isinstance(cfg, DictConfig) else None


def launched_jobs(multirun_cfg: DictConfig) -> int | None:
    """How many jobs Hydra's basic sweeper expands this multirun into (None if it cannot be recomputed)."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = OmegaConf.select(multirun_cfg, "hydra.sweeper.params") or {}
        args = [f"{k}={v}" for k, v in OmegaConf.to_container(params).items()] if params else []
        args += list(OmegaConf.select(multirun_cfg, "hydra.overrides.task") or [])
        overrides = OverridesParser.create().parse_overrides(args)
        batches = BasicSweeper.split_arguments(overrides, None)
        return sum(len(b) for b in batches)
    except Exception as e:  # noqa: BLE001  unknown sweeper syntax: fall back to counting job folders
        log.debug("could not expand the sweep: %s", e)
        return None


def load_sweep(folder: Path) -> Sweep | None:
    """The sweep in `folder` (None when it holds no multirun.yaml)."""
    folder = Path(folder)
    mr = folder / "multirun.yaml"
    if not mr.is_file():
        return None
    mcfg = _load_cfg(mr)
    jobs = []
    for d in sorted((p for p in folder.iterdir() if (p / ".hydra").is_dir()),
                    key=lambda p: (len(p.name), p.name)):
        cfg = _load_cfg(d / "config.yaml") if (d / "config.yaml").is_file() else None
        cfg = cfg if cfg is not None else _load_cfg(d / ".hydra" / "config.yaml")
        if cfg is None:
            continue
        ov = _load_cfg_list(d / ".hydra" / "overrides.yaml")
        jobs.append(Job(d, cfg, ov, False))
    ref = jobs[0].cfg if jobs else mcfg
    artifact = OmegaConf.select(ref, "experiment.name", default=None) if ref is not None else None
    preset = str(OmegaConf.select(ref, "experiment.preset", default="full")) if ref is not None else "full"
    command = str(OmegaConf.select(ref, "experiment.command", default="run-experiment")) if ref is not None \
        else "run-experiment"
    for j in jobs:
        j.done = all((j.dir / f).is_file() for f in RESULT_FILES.get(command, ("metrics.csv",)))
    return Sweep(folder.resolve(), artifact, preset, command, jobs,
                 launched_jobs(mcfg) if mcfg is not None else None, mr.stat().st_mtime)


def _load_cfg_list(path: Path) -> list[str]:
    try:
        v = OmegaConf.load(path)
        return [str(x) for x in v] if not isinstance(v, DictConfig) else []
    except Exception:  # noqa: BLE001
        return []


def find_sweeps(root: Path) -> list[Sweep]:
    """Every sweep up to two levels below `root`, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for mr in [*root.glob("*/multirun.yaml"), *root.glob("*/*/multirun.yaml")]:
        s = load_sweep(mr.parent)
        if s is not None:
            found.append(s)
    return sorted(found, key=lambda s: s.mtime, reverse=True)


def select_sweep(name: str, accepts: tuple[str, ...], root: Path, run: Path | None, preset: str,
                 how_to_run: str) -> Sweep:
    """The sweep to plot for artifact `name` (its own sweeps or those of the artifacts in `accepts`)."""
    names = (name, *accepts)
    if run is not None:
        s = load_sweep(Path(run))
        if s is None:
            raise CometError(f"{run} is not a Hydra multirun folder (no multirun.yaml); pass a folder under "
                             f"outputs/multirun/")
        if s.artifact not in names:
            raise CometError(f"{run} is a sweep of experiment {s.artifact!r}, not {name!r}")
        if not s.done_jobs:
            raise CometError(f"no job of {run} has finished (no result files); rerun it: {how_to_run}")
        if not s.complete:
            log.warning("sweep %s is incomplete: plotting its finished jobs only", s.describe())
        return s
    sweeps = [s for s in find_sweeps(root) if s.artifact in names and preset in ("any", s.preset)]
    if not sweeps:
        what = "" if preset == "any" else f" ({preset} preset)"
        raise NoSweepError(f"no sweep of experiment {name!r}{what} under {root}; run: {how_to_run}")
    for s in sweeps:
        if s.complete:
            if s is not sweeps[0]:
                log.warning("skipping newer incomplete sweep(s); pass --run DIR to plot one of them anyway: %s",
                            "; ".join(x.describe() for x in sweeps[: sweeps.index(s)]))
            return s
    raise NoSweepError(f"no complete sweep of experiment {name!r} under {root} (newest: {sweeps[0].describe()}); "
                     f"pass --run {sweeps[0].dir} to plot its finished jobs, or rerun: {how_to_run}")
