"""What a run reads, as MLflow sees it: the data splits as the run's data set inputs (the Datasets panel), an
interrupted run's checkpoint fetched back for `--resume`, and the weights `--init-from` starts from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.tracking import MlflowClient

from cifar_mlflow.errors import ConfigError
from cifar_mlflow.tracking.store import tolerating_races


def download_checkpoint(uri: str, run_id: str, dest: Path) -> Path:
    """Fetch `checkpoint/last.pt` of `run_id`; `ConfigError` when the run or the file is missing."""
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    try:
        client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ConfigError(f"no MLflow run {run_id!r} at {uri}; "
                          "--resume takes the run id of an interrupted run") from None
    try:
        local = client.download_artifacts(run_id, "checkpoint/last.pt", str(dest))
    except Exception:  # noqa: BLE001 - any artifact-store failure means: no checkpoint to resume from
        raise ConfigError(f"run {run_id} has no checkpoint to resume from (neither checkpoint/last.pt "
                          "in MLflow nor a local one under --checkpoint-dir)") from None
    return Path(local)


MLFLOW_MODEL_SCHEMES = ("runs:/", "models:/")


def read_init_weights(source: str, uri: str) -> dict[str, Any]:
    """The state dict `--init-from` names: a run's logged model (`runs:/RUN_ID`, its `model` artifact unless a
    path is given), a registered model (`models:/NAME@ALIAS`, `models:/NAME/VERSION`) or a weights file.
    Raises `ConfigError` for a source that is not there."""
    if not source.startswith(MLFLOW_MODEL_SCHEMES):
        from cifar_mlflow.models.weights import read_weights_file

        return read_weights_file(source)
    import mlflow.pytorch

    model_uri = source
    if source.startswith("runs:/") and "/" not in source[len("runs:/"):].strip("/"):
        model_uri = source.rstrip("/") + "/model"
    mlflow.set_tracking_uri(uri)
    try:
        network = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - no such run, model, version or alias, or not a PyTorch model
        raise ConfigError(f"--init-from {source}: cannot load a PyTorch model from it at {uri} "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    return dict(network.state_dict())


class _SplitDataset(MetaDataset):
    """One split as an MLflow dataset input: its digest, its profile and its schema (uint8 images, int64
    labels), shown in the run's Datasets panel."""

    def __init__(self, split: dict[str, Any]) -> None:
        from mlflow.types import Schema, TensorSpec

        c, h, w = split["image_shape"]
        schema = Schema([TensorSpec(np.dtype(np.uint8), (-1, c, h, w), "image"),
                         TensorSpec(np.dtype(np.int64), (-1,), "label")])
        super().__init__(LocalArtifactDatasetSource(split["source"]), name=split["name"], digest=split["digest"],
                         schema=schema)
        self._profile = split["profile"]

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}  # MetaDataset leaves it out


def log_datasets(client: MlflowClient, run_id: str, datasets: list[dict[str, Any]]) -> None:
    """The splits as the run's data set inputs. Runs that start together (a study's workers, parallel
    trials) insert the same data set into the experiment at once, and all but one lose the race in the
    store: those write again and link the row the winner made."""
    from mlflow.entities import DatasetInput, InputTag

    inputs = [DatasetInput(_SplitDataset(d)._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", d["context"])])
              for d in datasets]
    if inputs:
        tolerating_races(lambda: client.log_inputs(run_id, datasets=inputs))
