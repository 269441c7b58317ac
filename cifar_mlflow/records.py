"""A finished run as plain data: what tracking reads back for a comparison (`RunRecord`) and for
`train --from-run` (`SourceRun`).

It sits below all three, so that none imports another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# A param logged again with another value (the value used, where `mlflow run` logged the one given) gets this
# prefix: params never change once logged.
RESOLVED_PREFIX = "resolved."


@dataclass
class RunRecord:
    """One run as a comparison sees it."""

    run_id: str
    name: str
    params: dict[str, str]
    metrics: dict[str, float]  # final values
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # key -> [(epoch, value)]
    confusion: np.ndarray | None = None  # counts, rows = true class
    classes: list[str] | None = None
    wall_seconds: float | None = None
    differs_by: str = ""  # the params in which it differs from the runs it is compared with

    @property
    def label(self) -> str:
        """Its name and what sets it apart (`cnn-sgd-lr0.0966-e30-s0 [lr=0.0966, seed=0]`), else its id."""
        return f"{self.name} [{self.differs_by}]" if self.differs_by else f"{self.name} ({self.run_id[:7]})"


@dataclass
class SourceRun:
    """The recorded run: its id, name, experiment, params and tags, as MLflow holds them."""

    run_id: str
    name: str
    experiment_name: str
    params: dict[str, str]
    tags: dict[str, str]
