"""The options of a tuning study (the training options are the fixed base of every trial)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cifar_mlflow.config import _field
from cifar_mlflow.errors import ConfigError, require_extra
from cifar_mlflow.redaction import redact

STORAGE_ENV = "OPTUNA_STORAGE"
DEFAULT_STORAGE = "sqlite:///optuna.db"

SAMPLERS = ("tpe", "random", "cmaes", "gp", "grid")
PRUNERS = ("median", "percentile", "hyperband", "successive_halving", "none")
METRICS = ("val_acc", "val_loss")


@dataclass
class TuneConfig:
    """How the study searches; `TrainConfig` holds what every trial trains."""

    trials: int = _field(50, "number of new trials this command runs (a resumed study adds them; a trial that "
                             "the storage failed, not its settings, is made up)")
    timeout: float | None = _field(None, "stop starting new trials after this many seconds")
    study_name: str | None = _field(None, "study name (default: ARCH-DATASET); the same name resumes it")
    storage: str | None = _field(None, "Optuna storage URL; a PostgreSQL URL (postgresql://user:pass@host/db) "
                                 "lets workers on several machines share one study. Prefer $OPTUNA_STORAGE for "
                                 "a URL with a password: a flag shows in the process list (the password is "
                                 "masked in everything logged) (default: $OPTUNA_STORAGE, else "
                                 "sqlite:///optuna.db)")
    sampler: str = _field("tpe", "how the next trial's parameters are chosen", choices=SAMPLERS)
    pruner: str = _field("median", "how bad trials are stopped early", choices=PRUNERS)
    pruner_startup_trials: int = _field(5, "median/percentile: trials that always run to the end first")
    pruner_warmup_epochs: int = _field(1, "median/percentile: epochs of every trial that are never pruned")
    pruner_percentile: float = _field(25.0, "percentile pruner: prune trials below this percentile")
    metric: str = _field("val_acc", "objective, reported every epoch: val_acc (maximised) or val_loss "
                         "(the cross-entropy without label smoothing, minimised)", choices=METRICS)
    search_space: str | None = _field(None, "search space YAML file (default: the shipped space, "
                                      "docs/tuning.md)")
    n_jobs: int = _field(1, "trials run in parallel in this process (threads)")
    log_models: bool = _field(False, "log each completed trial's model (off: only metrics and plots)")
    retrain_best: bool = _field(False, "after the study: train the best configuration on train + validation, "
                                "evaluate on test, log it as a run linked to the study (registered with "
                                "--register-model NAME, alias champion)")
    retry_failed: int = _field(0, "re-run a trial whose worker died (stale heartbeat) up to this many times")
    heartbeat_interval: int = _field(60, "seconds between a running trial's heartbeats; a trial silent for "
                                     "three intervals is failed as stale")

    @property
    def direction(self) -> str:
        return "maximize" if self.metric == "val_acc" else "minimize"


def validate_tune_config(config: TuneConfig) -> None:
    """Raise `ConfigError` for the first bad value."""
    for name, choices in (("sampler", SAMPLERS), ("pruner", PRUNERS), ("metric", METRICS)):
        if getattr(config, name) not in choices:
            raise ConfigError(f"unknown {name} {getattr(config, name)!r}; choose one of: {', '.join(choices)}")
    for name in ("trials", "n_jobs", "heartbeat_interval"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(config, name)}")
    if config.timeout is not None and config.timeout <= 0:
        raise ConfigError(f"timeout must be positive, got {config.timeout}")
    if config.pruner_startup_trials < 0 or config.pruner_warmup_epochs < 0 or config.retry_failed < 0:
        raise ConfigError("pruner_startup_trials, pruner_warmup_epochs and retry_failed must be >= 0")
    if not 0 < config.pruner_percentile < 100:
        raise ConfigError(f"pruner_percentile must be between 0 and 100, got {config.pruner_percentile}")
    if config.study_name is not None and "'" in config.study_name and '"' in config.study_name:
        raise ConfigError(f"study_name {config.study_name!r} holds both kinds of quote, which an MLflow search "
                          "cannot match (the study's runs are found by it); use at most one kind")
    if "://" not in config.storage:
        raise ConfigError(f"storage must be a database URL such as sqlite:///optuna.db or "
                          f"postgresql://user:password@host/db, got {redact(config.storage)!r}")
    if config.sampler == "cmaes":
        require_extra("cmaes", "cmaes", "--sampler cmaes")
    if config.storage.startswith(("postgresql", "postgres://")):
        require_extra("psycopg", "postgres", "a PostgreSQL storage")


def storage_url(given: str | None) -> str:
    """--storage, else $OPTUNA_STORAGE, else the SQLite file in the working directory."""
    return given or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE
