"""`--help` of the Hydra commands (run-experiment, train-lm, train-predictor): every top-level key with
its meaning, type and default, and every config group with its choices.

1. types come from the typed schema (comet_core/config/schema.py), defaults and meanings from the primary config
   (conf/<config>.yaml: each key's value and the comment beside it, continued on the comment lines below);
2. config groups (the defaults list, without the internal `schema` group and Hydra's own) with their
   default and choices (`comet list <group>` describes each);
3. no config dump: `--cfg job` prints the resolved config, `--hydra-help` Hydra's own page.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
import typing
from pathlib import Path

from comet_core.config.groups import CONF_DIR, group_choices

WIDTH = 110
NESTED = {"config": ("model.layers", "network.bandwidth_bps", "network.latency_s")}   # DESIGN.md 8


def type_name(t) -> str:
    """int, float, str, bool; Optional[X] -> 'X or null'; a dataclass or dict -> 'group'."""
    args = typing.get_args(t)
    if typing.get_origin(t) is typing.Union and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return f"{type_name(inner[0])} or null" if len(inner) == 1 else "value or null"
    if dataclasses.is_dataclass(t) or typing.get_origin(t) in (dict, typing.Dict):
        return "group"
    if typing.get_origin(t) in (list, typing.List):
        return "list"
    return getattr(t, "__name__", str(t))


def yaml_keys(path: Path) -> dict[str, tuple[str, str]]:
    """Top-level `key: value  # comment` lines of a config: key -> (value as written, comment with its
    continuation lines)."""
    out: dict[str, tuple[str, str]] = {}
    last = None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z_]\w*):(.*)$", line)
        if m:
            key, rest = m.groups()
            value, _, comment = _split_comment(rest)
            out[key] = (value.strip(), comment.strip())
            last = key if key not in ("defaults", "hydra") else None
            continue
        c = re.match(r"^\s+#\s?(.*)$", line)
        if c and last is not None:
            v, com = out[last]
            out[last] = (v, f"{com} {c.group(1).strip()}".strip())
            continue
        last = None
    return out


def _split_comment(rest: str) -> tuple[str, str, str]:
    """Split `value  # comment` at the first '#' outside quotes."""
    quote = None
    for i, ch in enumerate(rest):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1].isspace()):
            return rest[:i], "#", rest[i + 1:]
    return rest, "", ""


def defaults_groups(path: Path) -> list[tuple[str, str, str]]:
    """(group, default choice, comment) of the defaults list, without `schema/...`, `_self_` and Hydra's."""
    rows = []
    in_defaults = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("defaults:"):
            in_defaults = True
            continue
        if in_defaults and not line.startswith(" "):
            break
        m = re.match(r"^\s+-\s+([\w/]+):\s*(\S+)\s*(?:#\s?(.*))?$", line)
        c = re.match(r"^\s+#\s?(.*)$", line)
        if in_defaults and m and not m.group(1).startswith(("schema", "override", "hydra")):
            rows.append((m.group(1), m.group(2), (m.group(3) or "").strip()))
        elif in_defaults and c and rows:   # the comment continues on the next line
            g, d, com = rows[-1]
            rows[-1] = (g, d, f"{com} {c.group(1).strip()}")
        elif in_defaults and m:
            rows.append(("", "", ""))      # a hidden entry: its continuation lines are not the previous group's
    return [r for r in rows if r[0]]


def config_help(config_name: str, prog: str, summary: str) -> str:
    """The help page of a Hydra command (module docstring)."""
    from comet_core.config.schema import PRIMARY

    schema = PRIMARY[config_name]
    path = CONF_DIR / f"{config_name}.yaml"
    keys = yaml_keys(path)
    hints = typing.get_type_hints(schema)
    groups = defaults_groups(path)
    group_names = {g for g, _, _ in groups}
    lines = [f"Usage: {prog} [KEY=VALUE ...] [GROUP=NAME ...] [-m] [--cfg job] [--hydra-help]", "", summary, ""]
    if groups:
        lines.append("Config groups (GROUP=NAME picks conf/GROUP/NAME.yaml; `comet list GROUP` describes each):")
        w = max(len(g) for g, _, _ in groups)
        for g, default, comment in groups:
            choices = ", ".join(group_choices(g)) if (CONF_DIR / g).is_dir() else ""
            lines.append(f"  {g.ljust(w)}  default {default}")
            pad = " " * (w + 4)
            for text in (comment, f"choices: {choices}" if choices else ""):
                if text:
                    lines.append(textwrap.fill(text, WIDTH, initial_indent=pad, subsequent_indent=pad))
        lines.append("")
    rows = []
    for name, t in hints.items():
        if name in group_names or (dataclasses.is_dataclass(t) and name not in keys):
            continue
        value, comment = keys.get(name, ("", ""))
        if not value:   # a key the YAML does not set: the schema's default
            value = _schema_default(schema, name)
        rows.append((name, type_name(t), value or "-", comment or _schema_comment(schema, name)))
    lines.append("Keys (KEY=VALUE; type, default, meaning):")
    wk = max(len(r[0]) for r in rows)
    wt = max(len(r[1]) for r in rows)
    for name, typ, value, comment in rows:
        lines.append(f"  {name.ljust(wk)}  {typ.ljust(wt)}  default {value}")
        if comment:
            pad = " " * (wk + wt + 6)
            lines.append(textwrap.fill(comment, WIDTH, initial_indent=pad, subsequent_indent=pad))
    nested = NESTED.get(config_name)
    if nested:
        lines += ["", "Keys inside a group (GROUP.KEY=VALUE), e.g. " + ", ".join(f"{k}=" for k in nested) +
                  " (`model.layers=n` runs the first n decoder layers); the group's YAML lists the others."]
    lines += ["", "Hydra: -m / --multirun runs a sweep (key=a,b,c; one job per value); --cfg job prints the resolved",
              "config; --hydra-help shows Hydra's own flags. Values with quotes, commas, '=', '$' or brackets need",
              "quoting (\"key='a, b'\")" + ("; a prompt with any text: prompt_file=<path>." if config_name == "config"
                                            else ".")]
    return "\n".join(lines)


def _schema_default(schema, name: str) -> str:
    f = next(f for f in dataclasses.fields(schema) if f.name == name)
    if f.default is dataclasses.MISSING or f.default == "???":
        return ""
    if f.default is None:
        return "null"
    return str(f.default).lower() if isinstance(f.default, bool) else str(f.default)


def _schema_comment(schema, name: str) -> str:
    """The comment beside a field in comet_core/config/schema.py (keys the YAML does not set, e.g. `output`)."""
    import inspect

    src = inspect.getsource(schema)
    m = re.search(rf"^\s+{name}:[^#\n]*#\s?(.*)$", src, re.M)
    return m.group(1).strip() if m else ""
