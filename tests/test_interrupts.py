"""Ctrl-C is held while a database call runs and raised when it returns, so the write that marks
the trial failed never finds the database locked."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from sqlalchemy import event

from cifar_mlflow.interrupts import deferred
from cifar_mlflow.tune.storage import InterruptSafeStorage


@pytest.fixture(autouse=True)
def ctrl_c_raises() -> Iterator[None]:
    """As in a terminal: a suite run in the background starts with SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_inside_the_block_is_raised_when_it_ends() -> None:
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with deferred():
            ctrl_c()
            with deferred():  # nested: still held
                ctrl_c()
            finished.append("inner")
            finished.append("outer")
    assert finished == ["inner", "outer"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_nothing_is_raised_without_a_signal_and_an_ignored_signal_stays_ignored() -> None:
    with deferred():
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with deferred():
        ctrl_c()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_other_threads_run_the_block_unchanged() -> None:
    seen = []

    def worker() -> None:
        with deferred():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]


def interrupt_inside_the_next_write(storage: optuna.storages.RDBStorage) -> None:
    """Ctrl-C at the worst moment: the row is written, the transaction not yet committed."""

    pressed: list[str] = []

    def after_execute(connection, cursor, statement: str, *args) -> None:
        if not pressed and statement.lstrip().upper().startswith(("INSERT", "UPDATE")):
            pressed.append(statement)
            ctrl_c()

    event.listen(storage.engine, "after_cursor_execute", after_execute)


def run_interrupted_trial(storage: optuna.storages.RDBStorage) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name="s")

    def objective(trial: optuna.Trial) -> float:
        trial.report(0.5, 1)
        interrupt_inside_the_next_write(storage)
        trial.report(0.6, 2)  # the write the Ctrl-C lands in
        raise AssertionError("Ctrl-C was not raised")

    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective, n_trials=1)
    return study


def test_a_trial_interrupted_inside_a_storage_write_is_marked_failed(tmp_path: Path) -> None:
    storage = InterruptSafeStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    run_interrupted_trial(storage)
    reloaded = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    (trial,) = reloaded.trials
    assert trial.state == optuna.trial.TrialState.FAIL
    # Optuna's plain RDBStorage loses the interrupted write ({1: 0.5}) and, at some moments, leaves
    # the database locked for the write that marks the trial failed.
    assert trial.intermediate_values == {1: 0.5, 2: 0.6}
