"""The benchmark's run: its settings as params, its figures as metrics, its tables as artifacts."""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from cifar_mlflow.core.run_logger import ending_with_status
from cifar_mlflow.redaction import redact
from cifar_mlflow.tracking.store import experiment_id_for, log_params_once


def _flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The benchmark's numbers as MLflow metrics: `ours_images_per_s.mlp`, `data_path.speedup`, ..."""
    metrics: dict[str, float] = {}
    for row in results.get("rows") or []:
        for key in ("ours_images_per_s", "baseline_images_per_s", "speedup", "model_alone_images_per_s",
                    "speedup_bound"):
            metrics[f"{key}.{row['arch']}"] = float(row[key])
    for section in ("data_path", "tracking_overhead", "time_to_accuracy"):
        for key, value in (results.get(section) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[f"{section}.{key}"] = float(value)
    return metrics


def log_benchmark(uri: str, experiment_name: str, settings: dict[str, Any], results: dict[str, Any],
                  table: str) -> str:
    """A run tagged `cifar_mlflow.kind=benchmark`: settings as params, figures as metrics, the
    markdown and JSON as artifacts; returns its id."""
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = experiment_id_for(client, experiment_name)
    tags = {"cifar_mlflow.kind": "benchmark", "device": results["machine"]["device"],
            "gpu_name": results["machine"].get("gpu", "none")}
    run_id = client.create_run(experiment_id, run_name=f"bench-{results['machine']['device']}",
                               tags=tags).info.run_id
    with ending_with_status(functools.partial(client.set_terminated, run_id)):
        log_params_once(client, run_id, {k: v for k, v in settings.items() if v is not None})
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in _flat_metrics(results).items()]
        for start in range(0, len(metrics), 500):
            client.log_batch(run_id, metrics=metrics[start:start + 500])
        client.log_text(run_id, redact(table), "benchmark.md")
        client.log_text(run_id, redact(json.dumps(results, indent=2)), "benchmark.json")
    return run_id
