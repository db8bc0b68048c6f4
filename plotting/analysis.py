"""What an artifact's analysis returns (Analysis) and what names an artifact (Artifact): the types every
analysis module of plotting/ shares (plotting/analyses.py, plotting/design_space.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from plotting.figures import Figure
from plotting.sweeps import Sweep


@dataclass
class Analysis:
    data: pd.DataFrame                                           # data.csv (tidy)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # derived tables for table.md
    claims: dict[str, list[float]] = field(default_factory=dict)   # metric -> measured values (expected/*.csv),
                                                                   # each a plotting.compare.Point naming its sweep point
    beside: dict[str, tuple[str, str]] = field(default_factory=dict)   # metric -> (caption, metric quoted beside it)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Artifact:
    name: str
    title: str
    analyze: Callable[[Sweep, dict], Analysis]
    accepts: tuple[str, ...] = ()      # other artifacts whose sweeps this one can re-use
    # the analysis of results/<name>/data.csv alone (`comet plot <name> --from-data`), where it needs no job folder
    from_data: Callable[[pd.DataFrame, dict], Analysis] | None = None
