"""The study's Optuna storage waits out a database that went away, and says so once; other errors are not
waited on. (The real restart, with PostgreSQL and eight workers: test_study_faults.py.)"""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy.exc
from optuna.study import StudyDirection

from cifar_mlflow.tune.storage import InterruptSafeStorage


def outage() -> Exception:
    """What SQLAlchemy raises while PostgreSQL restarts (psycopg's words)."""
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection failed: Connection refused"))


@pytest.fixture
def storage(tmp_path) -> tuple[InterruptSafeStorage, int]:
    storage = InterruptSafeStorage(f"sqlite:///{tmp_path / 'optuna.db'}", outage_seconds=5)
    return storage, storage.create_new_study(directions=[StudyDirection.MAXIMIZE], study_name="s")


def failing(monkeypatch, times: int, error) -> list[int]:
    """`get_study_name_from_id` raises `error()` its first `times` calls; returns the call log."""
    real = optuna.storages.RDBStorage.get_study_name_from_id
    calls = []

    def flaky(self, study_id):
        calls.append(study_id)
        if len(calls) <= times:
            raise error()
        return real(self, study_id)

    monkeypatch.setattr(optuna.storages.RDBStorage, "get_study_name_from_id", flaky)
    return calls


def test_a_call_waits_out_an_outage_and_the_console_says_so_once(storage, monkeypatch, capsys) -> None:
    storage, study_id = storage
    calls = failing(monkeypatch, 2, outage)
    assert storage.get_study_name_from_id(study_id) == "s"
    assert len(calls) == 3
    assert capsys.readouterr().err.splitlines() == [
        "the Optuna storage is unreachable (get_study_name_from_id: (builtins.Exception) connection failed: "
        "Connection refused); retrying for up to 5 s...",
        "the Optuna storage answered again"]


def test_an_outage_longer_than_its_patience_is_raised(storage, monkeypatch) -> None:
    storage, study_id = storage
    calls = failing(monkeypatch, 1000, outage)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        storage.get_study_name_from_id(study_id)
    assert 3 <= len(calls) <= 6  # 0.5 + 1 + 2 s of pauses fit in 5 s, the next one does not


def test_other_errors_are_raised_at_once(storage, monkeypatch, capsys) -> None:
    storage, study_id = storage
    calls = failing(monkeypatch, 1, lambda: KeyError("no such study"))
    with pytest.raises(KeyError):
        storage.get_study_name_from_id(study_id)
    assert len(calls) == 1 and capsys.readouterr().err == ""
