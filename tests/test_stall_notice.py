"""The console notice for a tracking call that waits: said for a tracking server (MLflow retries its
requests in silence), never for an embedded store, where a slow call is the process's own work
(saving the model on a busy machine) and there is no server to wait for."""

from __future__ import annotations

import time

import mlflow
import pytest

from cifar_mlflow.tracking import faults


@pytest.fixture
def quick_notice(monkeypatch):
    monkeypatch.setattr(faults, "STALL_NOTICE_SECONDS", 0.2)

    @faults.reporting_stalls("uploading artifacts")
    def slow_call() -> str:
        time.sleep(0.8)
        return "done"

    return slow_call


def test_a_tracking_server_that_waits_is_said_and_so_is_its_answer(quick_notice, capsys) -> None:
    mlflow.set_tracking_uri("http://127.0.0.1:5000")  # not contacted: the slow call stands for its request
    assert quick_notice() == "done"
    said = capsys.readouterr().err
    assert "the tracking server has not answered for 0 s (uploading artifacts); retrying until it does" in said
    assert "the tracking server answered again after 1 s" in said


def test_an_embedded_store_is_never_said_to_be_a_server_that_does_not_answer(quick_notice, capsys, tmp_path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert quick_notice() == "done"
    assert capsys.readouterr().err == ""
