"""The paper's artifacts as experiments: where each is configured and how its sweep is run.

An artifact is a preset conf/experiment/<name>.yaml (its sweep) with, where the paper gives numbers,
experiments/expected/<name>.csv (the paper's values and their source). How a sweep becomes tables and
figures is the plotting package's job (plotting/analyses.py).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONF_EXPERIMENT = REPO / "conf" / "experiment"
EXPECTED_DIR = REPO / "experiments" / "expected"


def is_artifact(name: str) -> bool:
    """Whether `name` is a paper artifact's preset (its quick variants are presets of the same artifact)."""
    return not name.endswith("_quick") and (CONF_EXPERIMENT / f"{name}.yaml").is_file()


def how_to_run(name: str) -> str:
    """The command that makes a sweep of artifact `name` (from its conf/experiment yaml)."""
    import yaml

    p = CONF_EXPERIMENT / f"{name}.yaml"
    cmd = "run-experiment"
    if p.is_file():
        cmd = (yaml.safe_load(p.read_text()) or {}).get("experiment", {}).get("command", cmd)
    plus = "+" if cmd == "train-predictor" else ""
    return f"comet {cmd} -m {plus}experiment={name}"
