"""CONTRIBUTING.md's worked examples run as written: each code block that starts with `# worked example`
is executed here and its result checked, so the guide to the extension points cannot drift from the code."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parent.parent
CONF = str(REPO / "conf")


def worked_examples() -> dict[str, str]:
    """{name: code} of the guide's ```python blocks whose first line is `# worked example: <name>`."""
    text = (REPO / "CONTRIBUTING.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    out = {}
    for b in blocks:
        m = re.match(r"# worked example: (.+)\n", b)
        if m:
            out[m.group(1).strip()] = b
    return out


def test_the_guide_has_its_worked_examples():
    assert {"protocol", "protocol test", "system", "system run"} <= set(worked_examples())


def test_worked_protocol_matches_plaintext_and_its_cost_formula():
    ex = worked_examples()
    ns: dict = {}
    exec(compile(ex["protocol"], "CONTRIBUTING.md:protocol", "exec"), ns)
    exec(compile(ex["protocol test"], "CONTRIBUTING.md:protocol test", "exec"), ns)   # asserts inside
    assert ns["mpc"].ledger.cost_since(ns["mark"]).rounds == 4   # two openings + two dealer truncations


def _per_op(ledger: pd.DataFrame) -> pd.DataFrame:
    on = ledger[ledger.phase == "online"]
    return on.groupby("op").bytes.sum()


def test_worked_system_runs_and_differs_from_dense_in_its_one_operator(tmp_path, monkeypatch):
    from comet_core import systems
    from experiments.run import execute

    ex = worked_examples()
    mod = types.ModuleType("contributing_toy_system")
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    exec(compile(ex["system"], "CONTRIBUTING.md:system", "exec"), mod.__dict__)
    monkeypatch.setitem(systems.SYSTEMS, "toy", (mod.__name__, "ToySystem"))
    common = ["model=tiny-opt", "model.layers=1", "gen_tokens=2", "prompt=To be", "seed=1", "save_ledger=false"]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        toy_cfg = compose("config", overrides=[f"output_dir={tmp_path / 'toy'}", "system=dense", "system.name=toy",
                                               "system.softmax=2quad", *common])
        dense_cfg = compose("config", overrides=[f"output_dir={tmp_path / 'dense'}", "system=dense", *common])
    ns = dict(__name__=mod.__name__, toy_cfg=toy_cfg, out_dir=tmp_path / "toy")
    exec(compile(ex["system run"], "CONTRIBUTING.md:system run", "exec"), ns)   # asserts private == plaintext
    toy, dense = _per_op(execute(toy_cfg).ledger), _per_op(execute(dense_cfg).ledger)
    assert set(toy.index) == set(dense.index) and set(toy.index) <= ns["toy_ops"]
    differ = sorted(op for op in toy.index if toy[op] != dense[op])
    assert differ and all("softmax" in op for op in differ), differ
