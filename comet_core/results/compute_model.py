"""The compute model: a run's work counters (comm/work.py) priced by a calibration profile.

    compute_s(stage) = sum over (op, kind) of count x unit_s[kind]

`unit_s` comes from `comet calibrate` (experiments/calibrate.py), which times the engine's own protocols
on this machine and fits one cost per kind. Profiles are looked up, first found wins:
  1. ``$COMET_COMPUTE_PROFILE`` (a path; an error if it does not exist),
  2. ``$COMET_CACHE/calibration/profile.json`` (what `comet calibrate` writes by default),
  3. the committed profile of the reference host, ``results/calibration/reference-host.json``, with a
     warning that it was measured on another machine (the documented default).
The model prices the in-process simulation (both parties and the dealer on one machine, as exact mode's
measured compute_s is); docs/compute-model.md states its error against exact runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from comet_core.errors import CometError

log = logging.getLogger("comet.compute")

FORMAT = "comet-compute-profile/1"
REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE_PROFILE = REPO_ROOT / "results" / "calibration" / "reference-host.json"
ENV = "COMET_COMPUTE_PROFILE"


@dataclass(frozen=True)
class Profile:
    path: Path
    units_s: dict          # work kind -> seconds per count
    host: dict             # cpu_model, flags, threads, torch, numpy, ...
    device: str
    source: str            # env | cache | reference (how it was found)

    @property
    def label(self) -> str:
        """A short name for result rows: where it came from and the CPU it was measured on."""
        return f"{self.source}:{self.host.get('cpu_model', 'unknown')}"


def cache_profile_path() -> Path:
    from comet_core.models.cache import cache_dir

    return cache_dir() / "calibration" / "profile.json"


def validate_profile(d: dict, where: str) -> None:
    """Raise CometError unless d is a profile this code can read."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise CometError(f"{where} is not a compute profile ({FORMAT}); rerun `comet calibrate --overwrite`")
    units = d.get("units_s")
    if not isinstance(units, dict) or not units:
        raise CometError(f"{where} has no units_s; rerun `comet calibrate --overwrite`")
    for k, v in units.items():
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise CometError(f"{where}: unit cost of {k!r} is {v!r}, not a non-negative number; rerun `comet calibrate --overwrite`")
    if not isinstance(d.get("host"), dict):
        raise CometError(f"{where} has no host record; rerun `comet calibrate --overwrite`")


def read_profile(path: Path, source: str = "file") -> Profile:
    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CometError(f"compute profile {path} does not exist; run `comet calibrate` (or unset ${ENV})") from None
    except (OSError, json.JSONDecodeError) as e:
        raise CometError(f"compute profile {path} cannot be read ({e}); rerun `comet calibrate --overwrite`") from None
    validate_profile(d, str(path))
    return Profile(Path(path), {k: float(v) for k, v in d["units_s"].items()}, d["host"],
                   str(d.get("device", "cpu")), source)


def check_profile_env() -> None:
    """Before any work: a profile named by $COMET_COMPUTE_PROFILE must exist and be valid."""
    env = os.environ.get(ENV)
    if env:
        read_profile(Path(env).expanduser(), "env")


def profile_path(device: str = "cpu") -> Path:
    """Where `comet calibrate` writes (and runs look for) this machine's profile for `device`."""
    p = cache_profile_path()
    return p if device == "cpu" else p.with_name(f"profile-{device}.json")


def find_profile(device: str = "cpu", warn: bool = True) -> Profile | None:
    """The profile that prices this run (module docstring), or None when there is none at all. `warn`:
    say so when the reference host's profile stands in for this machine's."""
    env = os.environ.get(ENV)
    if env:
        return read_profile(Path(env).expanduser(), "env")
    cached = profile_path(device)
    if cached.is_file():
        return read_profile(cached, "cache")
    if REFERENCE_PROFILE.is_file():
        if warn:
            log.warning("no compute profile of this machine (%s): cost-mode compute_s uses the reference "
                        "host's (%s); run `comet calibrate` to price compute for this machine", cached,
                        REFERENCE_PROFILE.name)
        return read_profile(REFERENCE_PROFILE, "reference")
    if warn:
        log.warning("no compute profile (%s, %s): cost-mode compute_s is left empty; run `comet calibrate`",
                    cached, REFERENCE_PROFILE)
    return None


def stage_seconds(work: pd.DataFrame, profile: Profile) -> dict[str, float]:
    """Modelled compute seconds per stage. A kind the profile does not price raises CometError (a profile
    from before the kind was registered: rerun `comet calibrate`)."""
    if work is None or work.empty:
        return {}
    missing = sorted(set(work.kind) - set(profile.units_s))
    if missing:
        raise CometError(f"compute profile {profile.path} prices no {', '.join(missing)} work; rerun `comet calibrate --overwrite`")
    priced = work.amount * work.kind.map(profile.units_s)
    return {str(s): float(v) for s, v in priced.groupby(work.stage).sum().items()}


OP_KEYS = ["stage", "layer", "op"]


def by_op(work: pd.DataFrame, measured: pd.DataFrame) -> pd.DataFrame:
    """compute_ops.csv (exact mode): per (stage, layer, op) of the private generation's stages, the measured
    wall and CPU seconds (Ledger.start_op_clock: what ran under the op's labels) beside the model's seconds
    for its work counters (`modelled_s`, NaN without a profile) and `modelled_over_wall`: where the model
    misses, op by op (docs/compute-model.md)."""
    from comet_core.results.tables import OFF_PATH, STAGES

    stages = [*OFF_PATH, *STAGES]
    model = work[work.stage.isin(stages)].groupby(OP_KEYS, as_index=False).modelled_s.sum(min_count=1)
    out = measured[measured.stage.isin(stages)].merge(model, on=OP_KEYS, how="outer")
    out[["measured_s", "measured_cpu_s"]] = out[["measured_s", "measured_cpu_s"]].fillna(0.0)
    out["modelled_over_wall"] = out.modelled_s / out.measured_s.where(out.measured_s > 0)
    order = {s: i for i, s in enumerate(stages)}
    return out.sort_values(["stage", "layer", "op"], key=lambda c: c.map(order) if c.name == "stage" else c,
                           ignore_index=True)


def priced(work: pd.DataFrame, profile: Profile | None) -> pd.DataFrame:
    """work.csv: the counters with each row's unit cost and modelled seconds (NaN without a profile)."""
    out = work.copy()
    units = profile.units_s if profile is not None else {}
    out["unit_s"] = out.kind.map(units).astype("float64")
    out["modelled_s"] = out.amount * out.unit_s
    return out
