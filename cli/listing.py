"""`comet list [group]`: the configs of each group with a one-line description.

The description is a config's `description:` key if it has one, else its first comment line.
"""

from __future__ import annotations

from pathlib import Path

from comet_core.config.groups import CONF_DIR, group_choices


def groups() -> list[str]:
    return sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("hydra",)
                  and not p.name.startswith(("_", ".")))


def description(path: Path, width: int = 110) -> str:
    text = path.read_text(encoding="utf-8")
    desc = ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("description:"):
            desc = s.split(":", 1)[1].strip().strip("'\"")
            break
    if not desc:  # the leading comment block's first sentence
        block = []
        for line in text.splitlines():
            s = line.strip()
            if not s.startswith("#"):
                break
            if not s.startswith("# @package"):
                block.append(s.lstrip("#").strip())
        joined = " ".join(block)
        depth, end = 0, len(joined)
        for i, ch in enumerate(joined):  # first sentence end outside parentheses
            depth += (ch == "(") - (ch == ")")
            if ch == "." and depth == 0 and (i + 1 == len(joined) or joined[i + 1] == " "):
                end = i + 1
                break
        desc = joined[:end]
    return desc if len(desc) <= width else desc[: width - 3].rstrip() + "..."


def describe_groups(group: str | None = None) -> str:
    known = groups()
    if group is not None and group not in known:
        raise KeyError(f"unknown config group '{group}'; groups: {', '.join(known)}")
    lines = []
    for g in [group] if group else known:
        lines.append(f"{g}:")
        names = group_choices(g)
        pad = max((len(n) for n in names), default=0)
        for n in names:
            lines.append(f"  {n.ljust(pad)}  {description(CONF_DIR / g / f'{n}.yaml')}")
    return "\n".join(lines)
