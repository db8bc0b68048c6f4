"""Run a plain task function under Hydra with the arguments Typer did not consume.

Typer owns only the command name; every other argument (``key=value`` overrides, ``-m``,
``--cfg job``, ``hydra.*``) reaches Hydra unchanged, exactly as with a ``@hydra.main`` script.
Config group choices are checked here first so that an unknown name fails in one line that
lists the valid choices, before Hydra composes anything.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

from comet_core.config.groups import CONF_DIR, REQUIRED_GROUPS, group_choices
from comet_core.config.overrides import quote_unicode_values


def check_group_overrides(args: list[str]) -> None:
    """Reject `group=name` overrides whose name does not exist, listing the valid ones."""
    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir() and not p.name.startswith(("hydra", "_"))}
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key in REQUIRED_GROUPS and key in groups and value in ("", "null"):
            raise SystemExit(f"error: {key}= must name a config; valid choices: {', '.join(group_choices(key))}")
        if key not in groups or value in ("", "null"):
            continue
        # multirun sweeps: a,b,c ; Hydra sweep functions (choice(...), glob(...)) are left to Hydra
        if "(" in value:
            continue
        choices = group_choices(key)
        for name in value.split(","):
            if name not in choices:
                raise SystemExit(
                    f"error: unknown {key} '{name}'; valid choices: {', '.join(choices)}"
                )


# Hydra launcher plugins (name in hydra/launcher -> the module that provides it, its pip package)
LAUNCHER_PLUGINS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "ray": ("hydra_plugins.hydra_ray_launcher", "hydra-ray-launcher"),
    "rq": ("hydra_plugins.hydra_rq_launcher", "hydra-rq-launcher"),
}


def _launcher_base(name: str, seen: tuple = ()) -> str:
    """The plugin launcher a conf/hydra/launcher/<name>.yaml preset builds on (its first default), else name."""
    import yaml

    path = CONF_DIR / "hydra" / "launcher" / f"{name}.yaml"
    if not path.is_file() or name in seen:
        return name
    defaults = (yaml.safe_load(path.read_text()) or {}).get("defaults") or []
    first = next((d for d in defaults if isinstance(d, str) and d != "_self_"), None)
    return _launcher_base(first, (*seen, name)) if first else name


def check_launcher(args: list[str]) -> None:
    """`hydra/launcher=<name>` whose plugin is not installed: one line naming the pip package to install."""
    import importlib.util

    for arg in args:
        if not arg.lstrip("+").startswith("hydra/launcher="):
            continue
        name = arg.split("=", 1)[1]
        base = _launcher_base(name)
        plugin = LAUNCHER_PLUGINS.get(base)
        if plugin is None:
            continue
        try:
            found = importlib.util.find_spec(plugin[0]) is not None
        except ModuleNotFoundError:
            found = False
        if found and base == "submitit_slurm" and not {"--cfg", "-c", "--help", "-h"} & set(args):
            import shutil

            if shutil.which("sbatch") is None or shutil.which("srun") is None:
                raise SystemExit(f"error: hydra/launcher={name} submits the jobs to SLURM, but sbatch/srun are not "
                                 "on this machine's PATH: run the sweep on the cluster's login node, or use "
                                 "hydra/launcher=submitit_local to run the same jobs here")
        if not found:
            ours = sorted(p.stem for p in (CONF_DIR / "hydra" / "launcher").glob("*.yaml"))
            usable = ["basic"] + [n for n in sorted({*LAUNCHER_PLUGINS, *ours}) if n != name and _installed(n)]
            raise SystemExit(f"error: hydra/launcher={name} needs the Hydra plugin {plugin[1]}, which is not "
                             f"installed: `pip install {plugin[1]}` in this environment (usable here: "
                             f"{', '.join(usable)})")


def _installed(name: str) -> bool:
    import importlib.util

    plugin = LAUNCHER_PLUGINS.get(_launcher_base(name))
    try:
        return plugin is None or importlib.util.find_spec(plugin[0]) is not None
    except ModuleNotFoundError:
        return False


def launch(task: Callable, config_name: str, args: list[str], prog: str, check: Callable | None = None) -> None:
    """Call `task(cfg)` through hydra.main with `args` as the command line.

    1. group names and (with `check`) every job's composed config are checked first (cli/preflight.py):
       a bad value fails in one line, exit 2, before any work or folder;
    2. Hydra runs the job(s); a job's CometError is one line (exit 2), Ctrl-C one line (exit 130), also one
       that a library's finalizer swallowed (run_folder.catch_interrupts);
    3. in a sweep a failing job is recorded and the others still run; the sweep ends with a summary,
       one table across its jobs, and exit status 1 if any job failed (cli/sweep.py).
    """
    import hydra  # imported here so `comet --help` stays fast

    from cli import sweep
    from cli.preflight import preflight
    from comet_core.config.schema import register
    from comet_core.errors import CometError

    register()
    args = quote_unicode_values(args)
    try:
        check_group_overrides(args)
        check_launcher(args)
        if check is not None:
            preflight(config_name, args, str(CONF_DIR), check)
    except SystemExit as e:
        print(str(e), file=sys.stderr)
        raise SystemExit(2) from None
    except CometError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    sys.argv = [prog, *args]
    main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(_guarded(task))
    from comet_core.results.run_folder import catch_interrupts, interrupted

    catch_interrupts()   # a Ctrl-C that a library's finalizer swallows still counts
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted: the unfinished run's files were removed; earlier results are untouched", file=sys.stderr)
        raise SystemExit(130) from None
    if interrupted():    # it came while the finished results were moved into place: they are kept
        print("interrupted: the run had finished; its results are complete and in place", file=sys.stderr)
        raise SystemExit(130)
    status = sweep.finish()
    if status:
        raise SystemExit(status)


def _guarded(task: Callable) -> Callable:
    """The task, with a CometError turned into one line on stderr and exit status 2 (no traceback);
    in a sweep, any job error is recorded (cli/sweep.py) and the sweep goes on."""
    import functools

    from comet_core.errors import CometError

    @functools.wraps(task)
    def run(cfg):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from cli import sweep

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            args = (hc.job.num, list(hc.overrides.task), hc.sweep.dir)
            try:
                out = task(cfg)
            except CometError as e:
                print(f"error: job {hc.job.num}: {e}", file=sys.stderr)
                # into the job's run.log too: `comet plot` names each failed job's error from there
                logging.getLogger("comet.sweep").error("job %d failed: %s", hc.job.num, " ".join(str(e).split()))
                sweep.record(*args, error=str(e))
                return None
            except Exception as e:  # noqa: BLE001  a bug in one job must not stop the sweep
                logging.getLogger("comet.sweep").exception("job %d failed", hc.job.num)
                sweep.record(*args, error=f"{type(e).__name__}: {e}".splitlines()[0])
                return None
            sweep.record(*args, out=out)
            return out
        try:
            return task(cfg)
        except CometError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    return run
