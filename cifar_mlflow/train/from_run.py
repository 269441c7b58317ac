"""A run re-created from its record (`train --from-run RUN_ID`): the options its params give, and what
differs between then and now (the code commit, the data).

Pure of MLflow: `tracking.run_queries.fetch_source_run` reads the run into a `SourceRun`.
"""

from __future__ import annotations

import typing
from typing import Any

import yaml

from cifar_mlflow.arguments import parse_value
from cifar_mlflow.config import TrainConfig, config_fields
from cifar_mlflow.errors import ConfigError
from cifar_mlflow.records import RESOLVED_PREFIX, SourceRun

# Options that say where and how this process runs, not what the run is: today's values, not the record's.
NOT_COPIED = {"tracking_uri", "resume", "from_run", "run_name", "experiment_name", "checkpoint_dir", "progress",
              "register_model"}


def options_from_params(source: SourceRun) -> dict[str, Any]:
    """The run's training options, typed, from its params (the values it trained with: `lr` as used, not
    "auto"); `ConfigError` when the run is not a training run of this product."""
    params = source.params
    if "arch" not in params or "dataset" not in params:
        raise ConfigError(f"run {source.run_id} has no arch and dataset params: it is not a training run "
                          "(a study's parent, a comparison or another tool's run cannot be re-created)")
    hints = typing.get_type_hints(TrainConfig)
    values: dict[str, Any] = {}
    for f in config_fields():
        raw = params.get(RESOLVED_PREFIX + f.name, params.get(f.name))  # a `resolved.` twin is the value used
        if f.name in NOT_COPIED or raw is None:
            continue
        if f.name == "model_args":
            values[f.name] = yaml.safe_load(raw) or {}  # JSON, or the YAML mapping older runs logged
        else:
            values[f.name] = parse_value(f.name, raw, hints[f.name], tuple(f.metadata.get("choices") or ()))
    return values


def provenance_warnings(source: SourceRun, commit: str | None, data_digest: str) -> list[str]:
    """What differs from the recorded run, in words: the code commit and the data it trained on."""
    warnings = []
    then = source.tags.get("git_commit")
    if then and commit and then != commit:
        warnings.append(f"run {source.run_id} was trained by code commit {then[:12]}, this is {commit[:12]}: the "
                        f"results may differ (`git checkout {then[:12]}` trains the same code)")
    elif not (then and commit):
        where = "the run has no git_commit tag" if not then else "this code is not a git checkout"
        warnings.append(f"cannot tell whether the code is the one run {source.run_id} was trained by ({where})")
    recorded = source.tags.get("data_digest")
    if recorded and recorded != data_digest:
        warnings.append(f"the data differs from the data run {source.run_id} was trained on (digest {data_digest} "
                        f"vs {recorded}): the results will differ; --data-dir points at another copy")
    return warnings
