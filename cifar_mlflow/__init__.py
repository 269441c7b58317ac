"""Train, track, tune and compare image classifiers with PyTorch, MLflow and Optuna.

The library entry point is `cifar_mlflow.train.run.train(config, logger=..., callbacks=...)`; it is
not re-exported here because `cifar_mlflow.train` is the command's package. `prepare`, `fit` and `run`
are the same run in steps.

The names below load on first use (PEP 562), so that `python -m cifar_mlflow.train --help`, and a
command refusing bad input, answer without importing PyTorch, scikit-learn and matplotlib first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "TrainConfig": "cifar_mlflow.config", "resolve_config": "cifar_mlflow.config",
    "ConfigError": "cifar_mlflow.errors", "NonFiniteLossError": "cifar_mlflow.errors",
    "NullLogger": "cifar_mlflow.core.run_logger", "RunLogger": "cifar_mlflow.core.run_logger",
    "get_model": "cifar_mlflow.models", "list_models": "cifar_mlflow.models", "register_model": "cifar_mlflow.models",
    "TrainResult": "cifar_mlflow.core.fit", "fit": "cifar_mlflow.core.fit", "prepare": "cifar_mlflow.core.prepare",
    "run": "cifar_mlflow.train.run", "run_status": "cifar_mlflow.core.run_logger",
}

__all__ = ["ConfigError", "NonFiniteLossError", "NullLogger", "RunLogger", "TrainConfig", "TrainResult",
           "fit", "get_model", "list_models", "prepare", "register_model", "resolve_config", "run", "run_status"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cifar_mlflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # what type checkers and IDEs see
    from cifar_mlflow.config import TrainConfig, resolve_config
    from cifar_mlflow.core.fit import TrainResult, fit
    from cifar_mlflow.core.prepare import prepare
    from cifar_mlflow.core.run_logger import NullLogger, RunLogger
    from cifar_mlflow.errors import ConfigError, NonFiniteLossError
    from cifar_mlflow.models import get_model, list_models, register_model
    from cifar_mlflow.train.run import run
