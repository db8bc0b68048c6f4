"""The conf/ tree: where it lives and which configs each group offers."""

from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


REQUIRED_GROUPS = ("model", "system", "network", "engine", "lm", "predictor")  # `experiment=null` is fine


def group_choices(group: str) -> list[str]:
    """Names of the configs in conf/<group>/ (without .yaml)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
