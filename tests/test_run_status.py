"""The one rule for a run's final status (`core.run_logger.run_status`), as every command applies it."""

from __future__ import annotations

import pytest

from cifar_mlflow import NonFiniteLossError, NullLogger, run_status
from cifar_mlflow.core.run_logger import ended_run


class Pruned(Exception):
    """Stands for optuna.TrialPruned: an end the caller expected."""


@pytest.mark.parametrize(("error", "kwargs", "status"), [
    (None, {}, "FINISHED"),
    (KeyboardInterrupt(), {}, "KILLED"),  # Ctrl-C, and SIGTERM raised as it
    (NonFiniteLossError("loss became nan"), {}, "FAILED"),
    (RuntimeError("crash"), {}, "FAILED"),
    (Pruned("pruned at epoch 2"), {"finished_on": (Pruned,)}, "FINISHED"),
    (Pruned("pruned at epoch 2"), {}, "FAILED"),
    (None, {"stored_everything": False}, "FAILED"),  # artifacts the store refused, kept on disk
    (KeyboardInterrupt(), {"stored_everything": False}, "KILLED"),
])
def test_run_status(error, kwargs, status) -> None:
    assert run_status(error, **kwargs) == status


def test_ended_run_closes_with_the_status_of_what_ended_the_block() -> None:
    class Recorder(NullLogger):
        ended: list[str] = []

        def end(self, status) -> None:
            self.ended.append(status)

    logger = Recorder()
    with ended_run(logger):
        pass
    with pytest.raises(KeyboardInterrupt), ended_run(logger):
        raise KeyboardInterrupt
    with pytest.raises(Pruned), ended_run(logger, finished_on=(Pruned,)):
        raise Pruned
    with pytest.raises(ValueError), ended_run(logger):
        raise ValueError
    assert logger.ended == ["FINISHED", "KILLED", "FINISHED", "FAILED"]
