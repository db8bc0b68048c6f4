"""Check a command line before any work: compose the config of every job (all values of a ``-m`` sweep)
and run the task's checks on each, so that a bad value fails in one line before the first job starts.

1. Parse the command line with Hydra's own parser (``-m``, ``--cfg``, overrides).
2. List the jobs: one, or the cartesian product of a sweep (with ``hydra.sweeper.params`` of the config,
   as Hydra's basic sweeper does).
3. Compose each job's config (types and unknown keys are checked by the schema, comet_core/config/schema.py) and call
   ``check(cfg, multirun)``. Hydra's several-line errors become one line (``one_line``).
"""

from __future__ import annotations

import re
from typing import Callable

from comet_core.errors import ConfigError


def one_line(exc: BaseException) -> str:
    """Hydra/OmegaConf errors (several lines, causes chained) as one line naming the key and the problem."""
    parts, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e).strip()
        if text:
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            keep = [ln for ln in lines if not ln.startswith(("object_type=", "reference_type=", "full_key:",
                                                             "invalid literal")) and "$VALUE" not in ln]
            full_key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), None)
            msg = " ".join(keep)
            if full_key and full_key not in msg:
                msg = f"{full_key}: {msg}"
            if msg:
                parts.append(msg)
        e = e.__cause__ or e.__context__
    uniq = []
    for part in parts:  # drop a cause already quoted by an earlier part
        if not any(part in u for u in uniq):
            uniq.append(part)
    msg = "; ".join(uniq) or type(exc).__name__
    if "LexerNoViableAltException" in msg or "token recognition error" in msg or "mismatched input" in msg:
        bad = next((p.split(" ^")[0].split(": ", 1)[-1] for p in uniq if " ^" in p), "an override")
        odd = sorted({ch for ch in bad.partition("=")[2] if not ch.isascii()})
        why = (f"an unquoted value may hold only ASCII text, and this one has {' '.join(odd)} beside quotes, commas, "
               "'=', '$' or brackets, which the grammar reads" if odd else
               "Hydra's grammar reads quotes, commas, '=', '$' and brackets in values")
        return (f"cannot parse {bad}: {why}; quote the whole value (\"key='a, b'\") or, for a prompt, use "
                "prompt_file=<path> (docs/commands.md: quoting)")
    msg = re.sub(r"\s*To append to your config use \+(\S+)", r" (no such key: check its spelling; "
                 r"`--cfg job` lists every key)", msg)
    msg = re.sub(r"\s+", " ", msg)
    if re.search(r"Key '[^']+' not in '\w+Schema'", msg) and "In '" in msg:  # a YAML file's key, not a typo
        msg += " (a new config key must be declared in comet_core/config/schema.py)"
    return msg


def declared(schema, key: str) -> bool:
    """Whether a dotted key is a field of the schema's dataclasses (an open dict's sub-keys are not)."""
    import dataclasses
    import typing

    typ = schema
    for part in key.split("."):
        if not dataclasses.is_dataclass(typ):
            return False
        typ = typing.get_type_hints(typ).get(part)
        if typ is None:
            return False
    return True


def no_forced_keys(job: list[str], schema, conf_dir: str) -> None:
    """`+key=value` may add a config group (`+experiment=x`) but no key the schema does not declare:
    a typo forced in with `+` would otherwise run the defaults and store the stray key."""
    import difflib
    import os

    from hydra.core.override_parser.overrides_parser import OverridesParser

    if schema is None:
        return
    for o in OverridesParser.create().parse_overrides(job):
        key = o.key_or_group
        if not (o.is_add() or o.is_force_add()) or key.startswith("hydra.") or o.is_delete():
            continue
        if os.path.isdir(os.path.join(conf_dir, key.split("@")[0])) or declared(schema, key):
            continue
        near = difflib.get_close_matches(key, _field_names(schema), n=1) if not key.startswith("system.") else []
        hint = f"did you mean {near[0]}=? " if near else ""
        where = ("; a system's own keys belong in its conf/system/<name>.yaml" if key.startswith("system.")
                 else "")
        raise ConfigError(f"unknown config key '{key}' (forced in with +); {hint}`--cfg job` lists every key{where}")


def _field_names(schema, prefix: str = "") -> list[str]:
    import dataclasses
    import typing

    out = []
    for name, typ in typing.get_type_hints(schema).items():
        out.append(prefix + name)
        if dataclasses.is_dataclass(typ):
            out += _field_names(typ, f"{prefix}{name}.")
    return out


def strict_bools(job: list[str], schema) -> None:
    """`overwrite=no`, `save_ledger=yes`: a boolean key takes only true or false (OmegaConf alone would
    read yes/no/on/off/1/0 as booleans, which hides typos such as `overwrite=on`)."""
    import dataclasses
    import typing

    from hydra.core.override_parser.overrides_parser import OverridesParser

    if schema is None:
        return
    for o in OverridesParser.create().parse_overrides(job):
        typ = schema
        for part in o.key_or_group.split("."):
            hints = typing.get_type_hints(typ) if dataclasses.is_dataclass(typ) else {}
            typ = hints.get(part)
        if typ is bool and not isinstance(o.value(), bool) and o.value() is not None:
            raise ConfigError(f"{o.key_or_group} must be true or false, got {o.get_value_element_as_str()!r}")


def _note_network_sweep(overrides: list[str], all_jobs: list[list[str]], compose) -> None:
    """An exact-mode sweep over network presets only repeats one computation: say so (stderr, one line)."""
    import sys

    from hydra.core.override_parser.overrides_parser import OverridesParser

    swept = [o.key_or_group for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()]
    if len(all_jobs) < 2 or not swept or not all(k == "network" or k.startswith("network.") for k in swept):
        return
    try:
        mode = compose("config", overrides=all_jobs[0]).mode
    except Exception:  # noqa: BLE001  the job checks below report it
        return
    if mode == "exact":
        print(f"note: this sweep repeats the same exact computation {len(all_jobs)} times: only the network "
              "changes, and every run's metrics.csv already prices every preset of conf/network (column "
              "`network`); one run gives the same bytes, rounds and modelled times", file=sys.stderr)


def _parse(args: list[str]):
    from hydra._internal.utils import get_args_parser

    try:
        return get_args_parser().parse_args(args)
    except SystemExit:
        raise ConfigError(f"cannot parse the command line {' '.join(args)!r}; see --help") from None


def jobs(config_name: str, overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of every job this command line would run."""
    if not multirun:
        return [list(overrides)]
    from hydra import compose
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    base = compose(config_name, overrides=fixed, return_hydra_config=True)
    params = base.hydra.sweeper.get("params") or {}
    lines = [f"{k}={v}" for k, v in params.items()] + list(overrides)
    batches = BasicSweeper.split_arguments(parser.parse_overrides(lines), None)
    return [job for batch in batches for job in batch]


def preflight(config_name: str, args: list[str], conf_dir: str, check: Callable) -> None:
    """Raise ConfigError (one line) if any job of this command line has a bad config."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from comet_core.config.schema import PRIMARY

    schema = PRIMARY.get(config_name)
    ns = _parse(args)
    if any(getattr(ns, k, None) for k in ("cfg", "help", "hydra_help", "info", "shell_completion", "experimental_rerun")):
        return
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
            try:
                all_jobs = jobs(config_name, ns.overrides, ns.multirun)
            except ConfigError:
                raise
            except Exception as e:  # noqa: BLE001  Hydra's grammar and composition errors
                raise ConfigError(one_line(e)) from None
            if ns.multirun and config_name == "config":
                _note_network_sweep(ns.overrides, all_jobs, compose)
            for i, job in enumerate(all_jobs):
                shown = " ".join(o for o in job if not o.lstrip("+~").startswith("hydra."))
                where = f"job {i} ({shown}): " if ns.multirun and len(all_jobs) > 1 else ""
                try:
                    strict_bools(job, schema)
                    no_forced_keys(job, schema, conf_dir)
                    cfg = compose(config_name, overrides=job)
                    check(cfg, ns.multirun)
                except ConfigError as e:
                    raise ConfigError(f"{where}{e}") from None
                except Exception as e:  # noqa: BLE001
                    from comet_core.errors import CometError

                    if isinstance(e, CometError):
                        raise CometError(f"{where}{e}") from None
                    raise ConfigError(f"{where}{one_line(e)}") from None
    finally:
        GlobalHydra.instance().clear()
