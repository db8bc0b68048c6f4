"""The measured CPU cost of one OT, for pricing the OT work of Iron's and BOLT's ideal functionalities.

mpc/ideal.py counts each modelled step's OT instances (Block.ots, 1-of-2 OT equivalents: log2 N per
1-out-of-N OT) and, where the ledger keeps work counters, adds them as work kind "ot". This module turns
such a count into seconds: count x seconds per OT from results/ot_extension/profile.json (made by
`python benchmarks/ot_extension.py --profile ...`: a real IKNP extension in numpy on this machine, both
parties' CPU, base OTs not included). The figure is a model input (label "modelled"), not a measurement of
the run it prices. Silent (Ferret) OT is unmeasured: `seconds_per_ot("silent")` is None.
Wiring, once the compute model's work counters are on the branch (comet_core/comm/work.py): its price of
kind "ot" is `seconds_per_ot(params.ot)` (the system's ideal.Params.ot); until then
`ot_seconds(ideal.steps_ot_instances(steps), flavour)` prices a list of steps directly.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

PROFILE = Path(__file__).resolve().parents[2] / "results" / "ot_extension" / "profile.json"


@functools.lru_cache(maxsize=None)
def load(path: str = str(PROFILE)) -> dict:
    return json.loads(Path(path).read_text())


def seconds_per_ot(flavour: str = "iknp", path: str = str(PROFILE)) -> float | None:
    """CPU seconds per 1-of-2 OT of this flavour (iknp | silent); None where unmeasured."""
    if flavour not in ("iknp", "silent"):
        raise ValueError(f"OT flavour {flavour!r}; valid: iknp, silent")
    return load(path).get(f"{flavour}_s_per_ot")


def ot_seconds(instances: float, flavour: str = "iknp", path: str = str(PROFILE)) -> float | None:
    """Modelled CPU seconds of `instances` OTs; None where the flavour's cost is unmeasured."""
    s = seconds_per_ot(flavour, path)
    return None if s is None else instances * s
