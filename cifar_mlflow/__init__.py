"""Train, track, tune and compare image classifiers with PyTorch, MLflow and Optuna.

The library entry point is `cifar_mlflow.training.train(config, logger=..., callbacks=...)`; it is
not re-exported here because `cifar_mlflow.train` is the command-line module.
"""

from cifar_mlflow.config import TrainConfig, resolve_config
from cifar_mlflow.errors import ConfigError, NonFiniteLossError
from cifar_mlflow.logger import NullLogger, RunLogger
from cifar_mlflow.models import get_model, list_models, register_model
from cifar_mlflow.training import TrainResult, fit, prepare, run

__version__ = "0.1.0"

__all__ = ["ConfigError", "NonFiniteLossError", "NullLogger", "RunLogger", "TrainConfig", "TrainResult",
           "fit", "get_model", "list_models", "prepare", "register_model", "resolve_config", "run"]
