#!/usr/bin/env python3
"""The OT work of cost-mode runs priced by the measured per-OT cost (results/ot_extension/profile.json).

    python benchmarks/ot_work.py "system=bolt model=shakespeare-opt gen_tokens=2" "system=iron model=bert-base gen_tokens=1" ...

For each override list: a mode=cost run, counting every modelled step's OT instances (ideal.book's work
kind "ot", 1-of-2 OT equivalents) through a stand-in counter on the ledger, then instances x the profile's
IKNP CPU seconds per OT (comet_core/mpc/ot_profile.py; label modelled). A stand-in until the compute
model's work counters (comet_core/comm/work.py) are on the branch: then this is their kind "ot" column.
Prints one line per run; writes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hydra import compose, initialize_config_dir  # noqa: E402

import experiments.run  # noqa: E402,F401  (registers the run schema)
from comet_core.comm import ledger as ledger_mod  # noqa: E402
from comet_core.mpc import ideal, ot_profile  # noqa: E402
from comet_core.roles.inprocess import execute  # noqa: E402


class _OTCount:
    """What ideal.book calls: add(kind, n)."""
    total = 0.0

    def add(self, kind: str, n: float) -> None:
        if kind == "ot":
            _OTCount.total += n


def main() -> None:
    if len(sys.argv) < 2:
        print("error: give one quoted override list per run, e.g. \"system=bolt model=bert-base gen_tokens=1\"",
              file=sys.stderr)
        raise SystemExit(2)
    if ideal._register_kind is None:                 # no work counters on this branch: count by hand
        ideal._register_kind = lambda *a, **k: None
        init = ledger_mod.Ledger.__init__

        def counting_init(self, *a, **k):
            init(self, *a, **k)
            self.work = _OTCount()
        ledger_mod.Ledger.__init__ = counting_init
    prof = ot_profile.load()
    for spec in sys.argv[1:]:
        _OTCount.total = 0.0
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=["output_dir=/tmp/ot_work", "mode=cost", *spec.split()])
        execute(cfg)
        n = _OTCount.total
        print(f"{spec}: {n:.4g} OTs x {prof['iknp_s_per_ot'] * 1e9:.0f} ns = {ot_profile.ot_seconds(n):.3g} s CPU "
              f"(IKNP, modelled; silent: unmeasured)")


if __name__ == "__main__":
    main()
