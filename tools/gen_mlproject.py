"""Write MLproject's entry points from `TrainConfig`, `TuneConfig` and `CompareConfig`, and the project's two
environments (python_env.yaml, conda.yaml) from pyproject.toml's dependencies (run after changing either)."""

from __future__ import annotations

import dataclasses
import json
import sys
import typing

from lowest_constraints import ROOT, project_requirements  # tools/: what pyproject requires

from cifar_mlflow.arguments import _base_type
from cifar_mlflow.compare.cli import CompareConfig
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.tune.options import TuneConfig

# Set by `mlflow run` itself (tracking URI, run name) or meaningless under it (resume).
EXCLUDED = ("tracking_uri", "resume", "run_name")


def declared(f: dataclasses.Field) -> bool:
    """Whether a field is a declared parameter of the entry point: only those with a fixed default.

    `mlflow run` logs every declared parameter's value as a run param before the command starts, and
    params never change: a declared `lr` defaulting to "auto" would stay "auto" in MLflow while the
    run trains with the architecture's recommended 0.05. Fields filled in later (default None) are
    left undeclared: `-P lr=0.1` still works (MLflow hands undeclared parameters on as `--lr 0.1` and
    logs the value given), and when left out, the value actually used is logged under `lr`.
    """
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return f.name not in EXCLUDED and default is not None and default != "auto"  # auto: resolved per machine


def mlproject_default(f: dataclasses.Field) -> str | float:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if isinstance(default, dict):
        return json.dumps(default)
    if isinstance(default, bool):
        return str(default).lower()
    return default


def entry_point(module: str, *config_classes: type) -> list[str]:
    """The YAML lines of one entry point: a parameter per config field, a flag per parameter."""
    params, command = [], [f"python -m {module}"]
    for config_cls in config_classes:
        hints = typing.get_type_hints(config_cls)
        for f in dataclasses.fields(config_cls):
            if not declared(f):
                continue
            kind, optional = _base_type(hints[f.name])
            default = mlproject_default(f)
            kind_name = "float" if kind is float and not optional else "string"
            shown = json.dumps(default) if isinstance(default, str) else default
            params.append(f"      {f.name}: {{type: {kind_name}, default: {shown}}}")
            command.append(f"--{f.name.replace('_', '-')} {{{f.name}}}")
    return ["    parameters:", *params, "    command: >-", *("      " + c for c in command)]


# Train a recorded run again: `mlflow run . -e from_run -P from_run=RUN_ID` (other -P options override).
FROM_RUN = ["  from_run:", "    parameters:", "      from_run: {type: string}", "    command: >-",
            "      python -m cifar_mlflow.train --from-run {from_run}"]


PYTHON = "3.11"  # the environments' Python: the one the suite runs on


def render_python_env() -> str:
    """python_env.yaml, what `mlflow run .` builds a virtualenv (or `--env-manager uv` environment) from. The
    entry points run `python -m cifar_mlflow...` in the project's folder, so they use its code as it is."""
    lines = ["# The environment `mlflow run .` creates (virtualenv, or --env-manager uv): generated from",
             "# pyproject.toml by tools/gen_mlproject.py; tests/test_project_files.py fails when they drift apart.",
             f"python: \"{PYTHON}\"", "build_dependencies:", "  - pip", "dependencies:"]
    return "\n".join(lines + [f"  - {json.dumps(r)}" for r in project_requirements()]) + "\n"


def render_conda_env() -> str:
    """conda.yaml, for conda users: conda env create -f conda.yaml, then mlflow run . --env-manager local."""
    lines = ["# A conda environment with the project's dependencies: generated from pyproject.toml by",
             "# tools/gen_mlproject.py. conda env create -f conda.yaml; conda activate cifar_mlflow; then",
             "# mlflow run . --env-manager local (MLproject names python_env.yaml, which conda does not run).",
             "name: cifar_mlflow", "channels:", "  - conda-forge", "dependencies:", f"  - python={PYTHON}", "  - pip",
             "  - pip:"]
    return "\n".join(lines + [f"      - {json.dumps(r)}" for r in project_requirements()] + ["      - -e ."]) + "\n"


def render() -> str:
    head = ["# Entry points generated from TrainConfig, TuneConfig and CompareConfig",
            "# by tools/gen_mlproject.py; tests/test_project_files.py fails when they drift apart.",
            "# Only options with a fixed default are declared; pass any other option with -P name=value",
            "# (MLflow hands it on as --name value). Left out, it takes the recipe's or the model's setting,",
            "# and the value used is logged under its own name.",
            "name: cifar_mlflow", "", "python_env: python_env.yaml", "", "entry_points:"]
    return "\n".join(head + ["  main:", *entry_point("cifar_mlflow.train", TrainConfig),
                             "  tune:", *entry_point("cifar_mlflow.tune", TuneConfig, TrainConfig),
                             "  compare:", *entry_point("cifar_mlflow.compare", CompareConfig),
                             *FROM_RUN]) + "\n"


FILES = {"MLproject": render, "python_env.yaml": render_python_env, "conda.yaml": render_conda_env}

if __name__ == "__main__":
    for name, make in FILES.items():
        ROOT.joinpath(name).write_text(make())
        print(f"wrote {name}", file=sys.stderr)
