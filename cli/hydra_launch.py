"""Run a plain task function under Hydra with the arguments Typer did not consume.

Typer owns only the command name; every other argument (``key=value`` overrides, ``-m``,
``--cfg job``, ``hydra.*``) reaches Hydra unchanged, exactly as with a ``@hydra.main`` script.
Config group choices are checked here first so that an unknown name fails in one line that
lists the valid choices, before Hydra composes anything.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def group_choices(group: str) -> list[str]:
    """Names of the configs in conf/<group>/ (without .yaml)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def check_group_overrides(args: list[str]) -> None:
    """Reject `group=name` overrides whose name does not exist, listing the valid ones."""
    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir() and not p.name.startswith(("hydra", "_"))}
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
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


def launch(task: Callable, config_name: str, args: list[str], prog: str) -> None:
    """Call `task(cfg)` through hydra.main with `args` as the command line."""
    import hydra  # imported here so `comet --help` stays fast

    try:
        check_group_overrides(args)
    except SystemExit as e:
        print(str(e), file=sys.stderr)
        raise SystemExit(2) from None
    sys.argv = [prog, *args]
    main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(_guarded(task))
    main()


def _guarded(task: Callable) -> Callable:
    """The task, with a CometError turned into one line on stderr and exit status 2 (no traceback)."""
    import functools

    from comet_core.errors import CometError

    @functools.wraps(task)
    def run(cfg):
        try:
            return task(cfg)
        except CometError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    return run
