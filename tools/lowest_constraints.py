"""Print pip constraints pinning every dependency of the package (and its runtime extras) to its lowest
allowed version: `make test-lowest` installs with them and runs the suite, so the lower bounds in
pyproject.toml are versions the code has been seen to work with.

    python tools/lowest_constraints.py > lowest.txt && pip install -e ".[dev]" -c lowest.txt
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def project_requirements() -> list[str]:
    """pyproject.toml's dependencies and those of every extra but dev: what any option of the package may
    need (a PostgreSQL study, --sampler cmaes, --arch timm:NAME, GPU metrics). Reads no package code, so the
    system Python runs it before any environment exists (`make test-lowest`)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [*project["dependencies"], *(d for name, deps in extras.items() if name != "dev" for d in deps)]


def lowest_pins() -> list[str]:
    pins = []
    for requirement in project_requirements():
        match = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*(.*)$", requirement)
        name, specifiers = match.group(1), match.group(2)
        lowest = re.search(r">=\s*([0-9][0-9A-Za-z.]*)", specifiers)
        if lowest is None:
            raise SystemExit(f"{requirement!r} has no lower bound (>=): every dependency needs one")
        pins.append(f"{name}=={lowest.group(1)}")
    return pins


if __name__ == "__main__":
    print("\n".join(lowest_pins()))
