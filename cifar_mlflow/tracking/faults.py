"""A failing or silent store, made visible: artifact uploads that give up within a minute, and a console
notice while the server does not answer."""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
import sys
import threading
import time

import mlflow
import requests
from requests.adapters import HTTPAdapter

from cifar_mlflow.redaction import redact

# While uploading artifacts: a failing store is reported within a minute, not after MLflow's default
# 7 retries with a doubling backoff (8.5 minutes for a model). A user's own setting wins.
_UPLOAD_RETRY_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


@contextlib.contextmanager
def fail_fast_uploads():
    unset = [k for k in _UPLOAD_RETRY_ENV if k not in os.environ]
    os.environ.update({k: _UPLOAD_RETRY_ENV[k] for k in unset})
    try:
        yield
    finally:
        for key in unset:
            os.environ.pop(key, None)


def is_store_failure(exc: BaseException) -> bool:
    """An error from the tracking server or artifact store (not from the model or our code)."""
    text = str(exc)
    return isinstance(exc, (requests.RequestException, OSError)) or (
        isinstance(exc, mlflow.exceptions.MlflowException)
        and ("API request to" in text or "error code 5" in text or "retries" in text.lower()))


def failure_in_words(exc: BaseException) -> str | None:
    """What went wrong with a request, in a few words (`connection refused`, `HTTP 500 after retries`,
    ...), or None when the error says nothing recognisable."""
    text = str(exc)
    status = re.search(r"too many (\d{3}) error responses|error code (\d{3})", text)
    if status:
        return f"HTTP {status.group(1) or status.group(2)} after retries"
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    if "Connection refused" in text or "NewConnectionError" in text:
        return "connection refused"
    if "Name or service not known" in text or "NameResolutionError" in text:
        return "unknown host name"
    return None


def short_reason(exc: BaseException) -> str:
    """One readable clause for a failed request: what was sent where, and what came back."""
    text = str(exc)
    target = re.search(r"/artifacts/\d+/\w+/artifacts/(\S+?)(?:\s|$)", text)
    what = f"uploading {target.group(1)}" if target else type(exc).__name__
    words = failure_in_words(exc)
    return redact(f"{what}: {words or (text.splitlines()[0][:160] if text else 'no reason given')}")


STALL_NOTICE_SECONDS = 5.0  # a request to the tracking server silent this long is said on the console
_watching = threading.local()
_lock = threading.Lock()
_tickets = itertools.count()
_in_flight: dict[int, float] = {}  # HTTP requests under way: their start (monotonic) by ticket
_said: set[int] = set()  # those said on the console to wait on the server
_outage_since: list[float] = []  # when the console said the server stopped answering (until it answers again)
_timed = False


def is_tracking_server(uri: str) -> bool:
    """Whether a tracking URI's calls go over HTTP to a tracking server (MLflow retries those in
    silence), as against an embedded store (SQLite, a database, files) that this process opens itself."""
    return uri.startswith(("http://", "https://"))


def install_request_hooks() -> None:
    """Time this process's HTTP requests (requests' `HTTPAdapter.send`, which MLflow's REST calls and
    artifact uploads go through, its retries included), once: a stall notice then counts the time
    spent waiting on the server, never the process's own work in the same call (exporting the model,
    say, which takes longer than the notice's delay on a small CPU). A request a busy server refused
    for want of database connections is sent again (`_server_too_busy`), and so is one whose answer was cut
    off where sending it twice changes nothing (`_safe_to_send_again`)."""
    global _timed
    with _lock:
        if _timed:
            return
        send = HTTPAdapter.send

        @functools.wraps(send)
        def timed_send(adapter, request, *args, **kwargs):
            ticket, started = next(_tickets), time.monotonic()
            with _lock:
                _in_flight[ticket] = started
            answered = False
            try:
                deadline, pause = started + BUSY_SECONDS, 0.5
                while True:
                    try:
                        response = send(adapter, request, *args, **kwargs)
                        if not kwargs.get("stream", False):
                            response.content  # noqa: B018 - read here, as requests would next, so that a cut-off body is seen
                    except requests.exceptions.ChunkedEncodingError:
                        if not _safe_to_send_again(request) or time.monotonic() + pause >= deadline:
                            raise
                    else:
                        if not _server_too_busy(response) or time.monotonic() + pause >= deadline:
                            break
                        _say_busy_once(response)
                    time.sleep(pause)
                    pause = min(2 * pause, 8.0)
                answered = True
                return response
            finally:
                with _lock:
                    del _in_flight[ticket]
                    _said.discard(ticket)
                    since = _outage_since.pop() if answered and _outage_since else None
                    if since is not None:  # those still out waited through this outage (another thread's,
                        _said.update(_in_flight)  # in MLflow's retry back-off): not a second one to say
                if since is not None:  # this request or a later one: the outage is over, said once
                    print(f"the tracking server answered again after {time.monotonic() - since:.0f} s",
                          file=sys.stderr, flush=True)

        HTTPAdapter.send = timed_send
        _timed = True


# A tracking server out of database connections answers 400 (MLflow reports its store's errors as bad
# requests, which it never retries): SQLAlchemy's pool timing out, SQLite's lock, PostgreSQL out of
# connections. None of these wrote anything, so the request is sent again, for up to `BUSY_SECONDS`.
_BUSY_WORDS = (b"QueuePool limit", b"database is locked", b"too many clients already",
               b"remaining connection slots are reserved")
BUSY_SECONDS = 300.0
_busy_said: list[bool] = []


# A server under load can cut an answer off after its headers ("Connection broken: IncompleteRead"): the
# request was carried out, but the client cannot know how. Requests that give the same result when carried
# out twice are sent again: reads, and writes of values the store keeps once (a metric with its timestamp,
# a param, a tag, a run's status). Others (creating a run) are left to fail as before.
_SAFE_TO_SEND_AGAIN = ("/runs/log-batch", "/runs/log-metric", "/runs/log-parameter", "/runs/set-tag",
                       "/runs/delete-tag", "/runs/update", "/runs/search", "/experiments/search")


def _safe_to_send_again(request) -> bool:
    if request.method in ("GET", "HEAD"):
        return True
    return (request.method == "POST" and isinstance(request.body, (bytes, str))
            and request.path_url.split("?")[0].endswith(_SAFE_TO_SEND_AGAIN))


def _server_too_busy(response) -> bool:
    return response.status_code == 400 and any(words in response.content for words in _BUSY_WORDS)


def _say_busy_once(response) -> None:
    with _lock:
        first = not _busy_said
        if first:
            _busy_said.append(True)
    if first:
        words = next(w.decode() for w in _BUSY_WORDS if w in response.content)
        print(f"the tracking server is out of database connections ({words}); sending again until it takes "
              "the request (a server for this many clients: docs/reliability.md)", file=sys.stderr, flush=True)


def _first_stalled_request() -> int | None:
    """A request under way for `STALL_NOTICE_SECONDS` or more, while no outage is being said; marked as
    said, and the outage's start recorded (the next answer from the server ends it)."""
    now = time.monotonic()
    with _lock:
        if _outage_since:
            return None
        for ticket, started in _in_flight.items():
            if now - started >= STALL_NOTICE_SECONDS and ticket not in _said:
                _said.add(ticket)
                _outage_since.append(started)
                return ticket
    return None


def reporting_stalls(what: str):
    """Decorator for the methods of an object with a tracking `uri` (the run's logger): when a request
    the wrapped call makes waits on the tracking server for more than `STALL_NOTICE_SECONDS`, say so on
    the console (MLflow retries in silence), and say when the server answers. Only the requests are
    timed: a call slow with its own work (saving the model) says nothing, and an embedded store,
    with no server to wait for, never does. The URI is the object's, not MLflow's global one: that is
    set only once the run opens, inside the first watched call."""

    def decorate(function):
        @functools.wraps(function)
        def wrapper(self, *args, **kwargs):
            if getattr(_watching, "active", False) or not is_tracking_server(self.uri):  # watched already, or no server
                return function(self, *args, **kwargs)
            install_request_hooks()
            done = threading.Event()

            def watch() -> None:
                while not done.wait(min(0.25, STALL_NOTICE_SECONDS / 2)):
                    if _first_stalled_request() is not None:
                        print(f"the tracking server has not answered for {STALL_NOTICE_SECONDS:.0f} s ({what}); "
                              "retrying until it does...", file=sys.stderr, flush=True)
                        return  # once a call: its other requests wait on the same server

            watcher = threading.Thread(target=watch, name="stall-notice", daemon=True)
            _watching.active = True
            watcher.start()
            try:
                return function(self, *args, **kwargs)
            finally:
                _watching.active = False
                done.set()
                watcher.join()

        return wrapper

    return decorate
