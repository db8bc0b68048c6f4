"""metrics_table's per-stage totals (comet_core/results/tables.py) on a ledger with every label value:
the same numbers as summing the string-labelled ledger row by row."""

from __future__ import annotations

import random

import pandas as pd
import pytest

from comet_core.comm.ledger import COLUMNS
from comet_core.comm.network import Network
from comet_core.results.tables import OFF_PATH, STAGES, metrics_table


def _ledger(n: int = 3000, seed: int = 1) -> pd.DataFrame:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        phase = rnd.choice(["online", "offline", "input", "output", "setup"])
        rows.append((phase, rnd.choice([*STAGES, *OFF_PATH, "other"]), rnd.randint(-1, 3), rnd.choice(["a", "b"]), "p",
                     rnd.choice(["P0", "P1", "dealer", "client"]), "P1", 4, 64, rnd.randint(1, 10 ** 6),
                     rnd.randint(0, 400), rnd.choice(["measured", "model"])))
    return pd.DataFrame(rows, columns=COLUMNS).astype({c: "string" for c in ("phase", "stage", "sender",
                                                                             "cost_source")})


def _by_rows(df: pd.DataFrame, stage: str | None) -> dict:
    rs = [r for r in df.itertuples() if (r.stage not in OFF_PATH if stage is None else r.stage == stage)]
    on = [r for r in rs if r.phase == "online"]
    p0 = sum(r.bytes for r in on if r.sender == "P0")
    p1 = sum(r.bytes for r in on if r.sender == "P1")
    return dict(online_bytes=p0 + p1, online_bytes_measured=sum(r.bytes for r in on if r.cost_source == "measured"),
                rounds_model=len({r.round for r in on if r.cost_source == "model"}),
                offline_bytes=sum(r.bytes for r in rs if r.phase == "offline"),
                input_bytes=sum(r.bytes for r in rs if r.phase == "input"),
                rounds=len({r.round for r in on}), busiest_direction_bytes=max(p0, p1))


@pytest.mark.parametrize("drop", [None, "decode"])
def test_metrics_table_totals_equal_row_by_row_sums(drop):
    """Every stage (one with no rows too: a label value the ledger lacks) and the total."""
    df = _ledger()
    if drop is not None:
        df = df[df.stage != drop].reset_index(drop=True)
    m = metrics_table(df, {"prefill": 1.0, "decode": 2.0}, [Network("lan", 1e9, 1e-3), Network("wan", 1e8, 0.04)],
                      dict(model="x"), compute_measured=True, deploy_requests=7)
    assert len(m) == 2 * (len(OFF_PATH) + len(STAGES) + 2) and df.phase.dtype == "string"   # the caller's frame untouched
    for _, row in m[m.phase != "total_amortised"].iterrows():
        want = _by_rows(df, None if row.phase == "total" else row.phase)
        assert {k: int(row[k]) for k in want} == want
    for net, rows in m.groupby("network"):   # total + preprocess + deploy / 7, bytes rounded; seconds exact
        p = rows.set_index("phase")
        for k in ("online_bytes", "offline_bytes"):
            assert p.at["total_amortised", k] == p.at["total", k] + p.at["preprocess", k] + round(p.at["deploy", k] / 7)
        assert p.at["total_amortised", "rounds"] == p.at["total", "rounds"] + p.at["preprocess", "rounds"]
        assert p.at["total_amortised", "comm_s"] == pytest.approx(
            p.at["total", "comm_s"] + p.at["preprocess", "comm_s"] + p.at["deploy", "comm_s"] / 7)
