"""The console notice for a tracking call that waits: said when a request to the tracking server
goes unanswered (MLflow retries its requests in silence), with the answer when it comes; never for
the process's own slow work in the same call (exporting the model on a busy CPU), and never for an
embedded store. The check before a run waits for a busy server and says so. A real HTTP server on
loopback answers slowly, at once, or hangs up."""

from __future__ import annotations

import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mlflow
import pytest
import requests

from cifar_mlflow.errors import ConfigError
from cifar_mlflow.tracking import check_tracking_server, faults

DELAY = 0.8  # seconds the server takes on /slow, four times the notice's delay here (0.2 s)


BUSY = {"count": 0}  # requests to /busy so far: the first two are refused as a server out of connections
HELD, RELEASE = threading.Event(), threading.Event()  # a request to /held has arrived; let it be answered


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.startswith(("/busy", "/bad")):
            BUSY["count"] += 1
            if self.path.startswith("/bad") or BUSY["count"] <= 2:
                words = b"QueuePool limit of size 5 overflow 10 reached" if self.path.startswith("/busy") else b"no"
                body = b'{"error_code": "BAD_REQUEST", "message": "' + words + b'"}'
                self.send_response(400)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
        if self.path.startswith("/slow"):
            time.sleep(DELAY)
        if self.path.startswith("/held"):  # another thread's request, answered only when the test says
            HELD.set()
            RELEASE.wait(30)
        if self.path.startswith("/outage-with-another"):  # as /stalled, once /held waits beside it
            wait_until(lambda: faults._outage_since and HELD.is_set())
        if self.path.startswith(("/stalled", "/hangup")):  # no answer until the client has said it waits
            wait_until(lambda: faults._outage_since)
        if self.path.startswith("/hangup"):
            self.close_connection = True  # no answer at all
            return
        try:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        except BrokenPipeError:
            pass  # the client stopped waiting

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


class Logger:
    """Stands for the run's logger: its `uri` says where its calls go, `server` answers its requests."""

    def __init__(self, uri: str, server: str) -> None:
        self.uri, self.server = uri, server

    @faults.reporting_stalls("uploading artifacts")
    def log_model(self, path: str, own_work_s: float = 0.0) -> int:
        mlflow.set_tracking_uri(self.uri)  # as the logger's first call does when it opens the run
        time.sleep(own_work_s)  # saving the model, say: no request under way
        return requests.get(f"{self.server}{path}", timeout=10).status_code


@pytest.fixture(autouse=True)
def quick_notice(monkeypatch, tmp_path):
    monkeypatch.setattr(faults, "STALL_NOTICE_SECONDS", 0.2)
    monkeypatch.setattr(faults, "_outage_since", [])  # no outage left over from another test
    monkeypatch.setattr(faults, "_busy_said", [])
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'default.db'}")  # MLflow's global, before the run opens
    yield
    mlflow.set_tracking_uri(None)


def test_a_tracking_server_that_waits_is_said_and_so_is_its_answer(server, capsys) -> None:
    assert Logger(server, server).log_model("/stalled") == 200
    said = capsys.readouterr().err.splitlines()
    assert said[0] == "the tracking server has not answered for 0 s (uploading artifacts); retrying until it does..."
    assert len(said) == 2 and re.fullmatch(r"the tracking server answered again after \d+ s", said[1])


def test_the_process_own_slow_work_is_not_said_to_be_the_server(server, capsys) -> None:
    assert Logger(server, server).log_model("/fast", own_work_s=DELAY) == 200
    assert capsys.readouterr().err == ""


def test_a_server_that_never_answers_is_not_said_to_have_answered(server, capsys) -> None:
    with pytest.raises(requests.ConnectionError):
        Logger(server, server).log_model("/hangup")
    said = capsys.readouterr().err
    assert "the tracking server has not answered for 0 s (uploading artifacts)" in said
    assert "answered again" not in said


def test_an_outage_is_said_once_and_its_end_once_when_a_later_request_is_answered(server, capsys) -> None:
    """The tracking server killed mid-study: an upload waits and gives up, the next one too, then the
    restarted server answers a later request."""
    logger = Logger(server, server)
    for _ in range(2):
        with pytest.raises(requests.ConnectionError):
            logger.log_model("/hangup")
    assert logger.log_model("/fast") == 200
    said = capsys.readouterr().err.splitlines()
    assert said[0] == "the tracking server has not answered for 0 s (uploading artifacts); retrying until it does..."
    assert len(said) == 2 and re.fullmatch(r"the tracking server answered again after \d+ s", said[1])


def test_a_request_that_waited_through_the_outage_is_not_said_to_be_a_second_one(server, capsys) -> None:
    """The tracking server killed mid-study: the system-metrics thread's request sat in MLflow's retry
    back-off while the run's own request was answered, and the next epoch's call said a second outage."""
    HELD.clear()
    RELEASE.clear()
    logger = Logger(server, server)

    def system_metrics() -> None:  # a request sent while the outage is on, from another thread
        wait_until(lambda: faults._outage_since)
        requests.get(f"{server}/held", timeout=30)

    other = threading.Thread(target=system_metrics)
    other.start()
    try:
        assert logger.log_model("/outage-with-another") == 200
        assert logger.log_model("/fast", own_work_s=DELAY) == 200  # the next epoch, the other request still out
    finally:
        RELEASE.set()
        other.join()
    said = capsys.readouterr().err.splitlines()
    assert said[0] == "the tracking server has not answered for 0 s (uploading artifacts); retrying until it does..."
    assert len(said) == 2 and re.fullmatch(r"the tracking server answered again after \d+ s", said[1]), said


def test_a_request_a_server_out_of_database_connections_refused_is_sent_again(server, capsys, monkeypatch) -> None:
    """32 runs at once on a 1-worker server: its SQLAlchemy pool timed out and it answered 400 (which
    MLflow does not retry), and a run died at its first heartbeat."""
    monkeypatch.setattr(faults, "STALL_NOTICE_SECONDS", 60)  # the busy notice alone
    BUSY["count"] = 0
    assert Logger(server, server).log_model("/busy") == 200
    assert BUSY["count"] == 3
    assert capsys.readouterr().err.splitlines() == [
        "the tracking server is out of database connections (QueuePool limit); sending again until it takes the "
        "request (a server for this many clients: docs/reliability.md)"]
    BUSY["count"] = 0
    assert Logger(server, server).log_model("/bad") == 400  # a bad request for another reason: answered as it is
    assert BUSY["count"] == 1


def test_an_embedded_store_is_never_said_to_be_a_server_that_does_not_answer(server, capsys, tmp_path) -> None:
    assert Logger(f"sqlite:///{tmp_path / 'mlflow.db'}", server).log_model("/slow") == 200
    assert capsys.readouterr().err == ""


def test_the_check_before_a_run_waits_for_a_busy_server_and_says_so(server, capsys) -> None:
    """16 runs starting at once on a 2-core machine kept a server busy past the check's first 10 s."""
    check_tracking_server(f"{server}/slow", notice_after=0.2, answer_timeout=5)
    assert capsys.readouterr().err == (f"the MLflow tracking server at {server}/slow has not answered for 0.2 s "
                                       "(busy?); waiting up to 5 s...\n")
    check_tracking_server(server, notice_after=0.2)
    assert capsys.readouterr().err == ""


def test_the_check_before_a_run_gives_up_on_a_server_that_never_answers(server, capsys) -> None:
    with pytest.raises(ConfigError, match=r"took the connection but gave no answer in 0\.3 s: it is stopped or "
                                          r"overloaded \(see its log\)"):
        check_tracking_server(f"{server}/slow", notice_after=0.1, answer_timeout=0.3)
