"""MLflow at the edge: the only module that talks to MLflow."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from matplotlib.figure import Figure
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from torch import nn

from cifar_mlflow.errors import ConfigError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# Params that `mlflow run` logged with a value we resolved differently (e.g. lr=auto) are kept,
# and the resolved value is logged under this prefix (MLflow params cannot change).
RESOLVED_PREFIX = "resolved."


def tracking_uri(explicit: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the embedded SQLite store in the working directory."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _same_value(logged: str, ours: str) -> bool:
    if logged == ours:
        return True
    try:
        a, b = float(logged), float(ours)
    except ValueError:
        return logged.strip().lower() == ours.strip().lower()
    return math.isclose(a, b, rel_tol=1e-9) or (math.isnan(a) and math.isnan(b))


def download_checkpoint(uri: str, run_id: str, dest: Path) -> Path:
    """Fetch `checkpoint/last.pt` of `run_id`; `ConfigError` when the run or the file is missing."""
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    try:
        client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ConfigError(f"no MLflow run {run_id!r} at {uri}; --resume takes the run id of an interrupted run") from None
    try:
        local = client.download_artifacts(run_id, "checkpoint/last.pt", str(dest))
    except Exception:  # noqa: BLE001 - any artifact-store failure means: no checkpoint to resume from
        raise ConfigError(f"run {run_id} has no checkpoint to resume from (neither checkpoint/last.pt "
                          "in MLflow nor a local one under --checkpoint-dir)") from None
    return Path(local)


class MlflowLogger:
    """Logs one training run to MLflow.

    Args:
        uri: tracking URI.
        experiment_name: experiment for new runs (ignored when attaching to an existing run).
        run_name: name for new runs.
        run_id: attach to this existing run (resume); under `mlflow run`, the run it created
            (MLFLOW_RUN_ID) is used automatically.
        nested: start the run nested under the active run (tuning trials).
    """

    def __init__(self, uri: str, experiment_name: str, run_name: str, run_id: str | None = None,
                 nested: bool = False) -> None:
        self.uri = uri
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.run_id = run_id
        self.nested = nested
        self.attached = run_id is not None or bool(os.environ.get("MLFLOW_RUN_ID"))
        self._client: MlflowClient | None = None

    def start(self, *, params: dict[str, Any], tags: dict[str, str], datasets: list[dict[str, str]]) -> None:
        mlflow.set_tracking_uri(self.uri)
        if self.run_id is not None:
            run = mlflow.start_run(run_id=self.run_id)
        elif os.environ.get("MLFLOW_RUN_ID"):
            run = mlflow.start_run()  # the run `mlflow run` created: its experiment and id win
        else:
            mlflow.set_experiment(self.experiment_name)
            run = mlflow.start_run(run_name=self.run_name, nested=self.nested)
        self.run_id = run.info.run_id
        self._client = MlflowClient()
        self._log_params(params)
        mlflow.set_tags(tags)
        for d in datasets:
            source = LocalArtifactDatasetSource(d["source"])
            mlflow.log_input(MetaDataset(source, name=d["name"], digest=d["digest"]), context=d["context"])

    def _log_params(self, params: dict[str, Any]) -> None:
        existing = self._client.get_run(self.run_id).data.params
        batch = []
        for key, value in params.items():
            text = str(value)
            if key not in existing:
                batch.append(Param(key, text))
            elif not _same_value(existing[key], text) and RESOLVED_PREFIX + key not in existing:
                batch.append(Param(RESOLVED_PREFIX + key, text))
        for start in range(0, len(batch), 100):
            self._client.log_batch(self.run_id, params=batch[start:start + 100])

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if k != "epoch"}, step=epoch)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})

    def log_figure(self, figure: Figure, path: str) -> None:
        import matplotlib.pyplot as plt

        mlflow.log_figure(figure, path)
        plt.close(figure)

    def log_text(self, text: str, path: str) -> None:
        mlflow.log_text(text, path)

    def log_file(self, local_path: Path, artifact_dir: str) -> None:
        mlflow.log_artifact(str(local_path), artifact_dir)

    def log_model(self, model: nn.Module, input_example: np.ndarray, registered_name: str | None) -> None:
        import mlflow.pytorch
        import torch
        import torchvision

        # Given explicitly: MLflow's own inference of requirements re-loads the model in a subprocess.
        requirements = [f"torch=={torch.__version__.split('+')[0]}",
                        f"torchvision=={torchvision.__version__.split('+')[0]}"]
        try:
            # Default "pt2" (torch.export): loads without this package's code.
            mlflow.pytorch.log_model(model, name="model", input_example=input_example,
                                     pip_requirements=requirements, registered_model_name=registered_name)
        except Exception as exc:  # noqa: BLE001 - e.g. a user model torch.export cannot trace
            warnings.warn(f"torch.export could not export the model ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]}); logging it as a pickle instead", stacklevel=2)
            mlflow.pytorch.log_model(model, name="model", input_example=input_example,
                                     serialization_format="pickle", pip_requirements=requirements,
                                     registered_model_name=registered_name)

    def end(self, status: str) -> None:
        if mlflow.active_run() is not None:
            mlflow.end_run(status=status)
