"""`python -m cifar_mlflow.tune`: hyperparameter search with Optuna, every trial a nested MLflow run.

- `cli`: the command (options, checks before anything exists, exit codes)
- `options`: `TuneConfig`, how the study searches
- `search_space`: the search-space format and sampling a `TrainConfig` from it (pure, no Optuna)
- `study`: the only module that imports Optuna: samplers, pruners, storage, the objective, the
  parent run's report, retraining the best trial
"""

from cifar_mlflow.tune.cli import main

__all__ = ["main"]
