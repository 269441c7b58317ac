"""One training run, whole: open it, fit, log the report and the model. The training command and every
tuning trial call `prepare` then `run` (the command checks the tracking server and the resume state
between the two; the tuner shares one data set among its trials); `train` is both in one call, for
library use.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from cifar_mlflow.config import TrainConfig
from cifar_mlflow.core.checkpoint import checkpoint_path
from cifar_mlflow.core.fit import EpochCallback, TrainResult, fit
from cifar_mlflow.core.prepare import Prepared, prepare
from cifar_mlflow.core.run_logger import NullLogger, RunLogger
from cifar_mlflow.train.run_contents import log_report, log_trained_model, run_datasets, run_params, run_tags


def run(prepared: Prepared, *, logger: RunLogger | None = None, callbacks: Sequence[EpochCallback] = (),
        checkpoint_dir: str | None = None, resume_state: dict[str, Any] | None = None) -> TrainResult:
    """Open the run, fit, evaluate and log the report and the model.

    The caller closes the run (`logger.end`) with the status `run_status` gives for what it saw.
    """
    logger = logger or NullLogger()
    started = time.perf_counter()
    logger.start(params=run_params(prepared), tags=run_tags(prepared), datasets=run_datasets(prepared))
    ckpt = checkpoint_path(checkpoint_dir, logger.run_id) if checkpoint_dir and logger.run_id else None
    fit_start = time.perf_counter()
    result = fit(prepared, logger=logger, callbacks=callbacks, checkpoint_file=ckpt, resume_state=resume_state)
    fit_end = time.perf_counter()
    log_report(prepared, result, logger)
    if prepared.config.log_model:
        log_trained_model(prepared, result, logger)
    result.phase_seconds = {"start": fit_start - started, "fit": fit_end - fit_start,
                            "end": time.perf_counter() - fit_end}
    return result


def train(config: TrainConfig, *, logger: RunLogger | None = None, callbacks: Sequence[EpochCallback] = (),
          checkpoint_dir: str | None = None) -> TrainResult:
    """`prepare` then `run`, in one call: the library entry point.

    Raises:
        ConfigError: bad input, raised before `logger.start` (nothing is created).
        NonFiniteLossError: the loss became NaN/inf (the caller marks the run FAILED).
    """
    return run(prepare(config), logger=logger, callbacks=callbacks, checkpoint_dir=checkpoint_dir)
