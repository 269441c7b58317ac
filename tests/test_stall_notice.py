"""The console notice for a tracking call that waits: said for a tracking server (MLflow retries its
requests in silence), never for an embedded store, where a slow call is the process's own work
(saving the model on a busy machine) and there is no server to wait for."""

from __future__ import annotations

import time

import mlflow
import pytest

from cifar_mlflow.tracking import faults


class SlowLogger:
    """Stands for the run's logger: its `uri` says where its calls go; the sleep stands for a request
    (or, with an embedded store, for saving the model) that takes longer than the notice's delay."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @faults.reporting_stalls("uploading artifacts")
    def log_model(self) -> str:
        mlflow.set_tracking_uri(self.uri)  # as the logger's first call does when it opens the run
        time.sleep(0.8)
        return "done"


@pytest.fixture(autouse=True)
def quick_notice(monkeypatch, tmp_path):
    monkeypatch.setattr(faults, "STALL_NOTICE_SECONDS", 0.2)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'default.db'}")  # MLflow's global, before the run opens
    yield
    mlflow.set_tracking_uri(None)


def test_a_tracking_server_that_waits_is_said_and_so_is_its_answer(capsys) -> None:
    assert SlowLogger("http://127.0.0.1:5000").log_model() == "done"  # not contacted: the sleep stands for it
    said = capsys.readouterr().err
    assert "the tracking server has not answered for 0 s (uploading artifacts); retrying until it does" in said
    assert "the tracking server answered again after 1 s" in said


def test_an_embedded_store_is_never_said_to_be_a_server_that_does_not_answer(capsys, tmp_path) -> None:
    assert SlowLogger(f"sqlite:///{tmp_path / 'mlflow.db'}").log_model() == "done"
    assert capsys.readouterr().err == ""
