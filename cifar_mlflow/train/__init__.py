"""The training command, `python -m cifar_mlflow.train` (`cli`): one run opened, fitted and recorded
(`run`), what it records about itself (`run_contents`), and a run re-created from its record
(`from_run`). The loop itself is `cifar_mlflow.core`; MLflow is reached through `cifar_mlflow.tracking`."""

from cifar_mlflow.train.cli import main

__all__ = ["main"]
