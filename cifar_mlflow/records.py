"""A finished run as plain data: what tracking reads back and a comparison analyses.

It sits below both, so that neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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

    @property
    def label(self) -> str:
        return f"{self.name} ({self.run_id[:7]})"
