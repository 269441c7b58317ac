"""Write MLproject's `main` entry point from `TrainConfig` (run after changing the config)."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

from cifar_mlflow.cli import _base_type
from cifar_mlflow.config import TrainConfig

# Set by `mlflow run` itself (tracking URI, run name) or meaningless under it (resume).
EXCLUDED = ("tracking_uri", "resume", "run_name")


def mlproject_default(f: dataclasses.Field) -> str | float:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if default is None:
        return "auto" if "recommended" in f.metadata["help"] else "none"
    if isinstance(default, dict):
        return json.dumps(default)
    if isinstance(default, bool):
        return str(default).lower()
    return default


def main_entry_point() -> tuple[list[str], list[str]]:
    hints = typing.get_type_hints(TrainConfig)
    params, command = [], ["python -m cifar_mlflow.train"]
    for f in dataclasses.fields(TrainConfig):
        if f.name in EXCLUDED:
            continue
        kind, optional = _base_type(hints[f.name])
        default = mlproject_default(f)
        kind_name = "float" if kind is float and not optional else "string"
        shown = json.dumps(default) if isinstance(default, str) else default
        params.append(f"      {f.name}: {{type: {kind_name}, default: {shown}}}")
        command.append(f"--{f.name.replace('_', '-')} {{{f.name}}}")
    return params, command


def render() -> str:
    params, command = main_entry_point()
    head = ["# The `main` entry point is generated from cifar_mlflow.config.TrainConfig by",
            "# tools/gen_mlproject.py; tests/test_project_files.py fails when they drift apart.",
            "# Unset options take `auto` (the per-architecture recommendation) or `none`.",
            "name: cifar_mlflow", "", "conda_env: conda.yaml", "", "entry_points:", "  main:", "    parameters:"]
    return "\n".join(head + params + ["    command: >-"] + ["      " + c for c in command]) + "\n"


if __name__ == "__main__":
    Path(__file__).resolve().parent.parent.joinpath("MLproject").write_text(render())
