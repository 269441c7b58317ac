"""The tracking store itself: which URI, is it there, the experiment's id, params and tags written race-safely."""

from __future__ import annotations

import math
import os
import re
import shlex
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import mlflow
import requests
from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient

from cifar_mlflow.errors import ConfigError
from cifar_mlflow.records import RESOLVED_PREFIX
from cifar_mlflow.redaction import redact, split_tracking_credentials
from cifar_mlflow.tracking.faults import failure_in_words, is_tracking_server

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

def filter_value(text: str) -> str:
    """`text` as a string literal in an MLflow search filter. MLflow's filter parser takes a literal in single
    or double quotes and unescapes nothing, so a text with one kind of quote goes inside the other kind,
    and a text with both cannot be written (`ConfigError`)."""
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise ConfigError(f"{text!r} holds both kinds of quote, which an MLflow search cannot match; "
                      "use a name with at most one kind")


def tracking_uri(explicit: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the embedded SQLite store in the working directory.

    Credentials in an http(s) URI move to `MLFLOW_TRACKING_USERNAME/PASSWORD`; the URI returned has none.
    """
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    clean = split_tracking_credentials(uri)
    if clean != uri and not explicit:
        os.environ["MLFLOW_TRACKING_URI"] = clean  # MLflow reads it too (and prints it)
    return clean


def _same_value(logged: str, ours: str) -> bool:
    """Whether a param already logged (by `mlflow run`, or before a resume) says what we would log."""
    if logged == ours:
        return True
    if len(logged) > 1 and logged[0] == logged[-1] == "'":  # `mlflow run` logs -P values shell-quoted
        try:
            logged = shlex.split(logged)[0]
        except ValueError:
            pass
        if logged == ours:
            return True
    try:
        a, b = float(logged), float(ours)
    except ValueError:
        return logged.strip().lower() == ours.strip().lower()
    return math.isclose(a, b, rel_tol=1e-9) or (math.isnan(a) and math.isnan(b))


def check_tracking_server(uri: str, connect_timeout: float = 10.0, answer_timeout: float = 120.0,
                          notice_after: float = 10.0) -> None:
    """Ask an http(s) tracking server one cheap question, before any data is read.

    A server that cannot be connected to fails in `connect_timeout` seconds. One that took the
    connection is there, perhaps busy (a team's server with many runs starting at once): it gets
    `answer_timeout` seconds, and the console says so after `notice_after`.

    Raises:
        ConfigError: the server cannot be reached, refuses the credentials, or answers with an error.
    """
    if not is_tracking_server(uri):
        return  # the embedded store (or a database) is opened where it is used
    auth = None
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    headers = {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"} \
        if os.environ.get("MLFLOW_TRACKING_TOKEN") else {}
    verify = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or \
        os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() != "true"
    where = f"the MLflow tracking server at {uri}"
    notice = threading.Timer(notice_after, lambda: print(
        f"{where} has not answered for {notice_after:g} s (busy?); waiting up to {answer_timeout:g} s...",
        file=sys.stderr, flush=True))
    notice.daemon = True
    notice.start()
    try:
        response = requests.get(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
                                params={"max_results": 1}, auth=auth, headers=headers,
                                timeout=(connect_timeout, answer_timeout), verify=verify)
    except requests.ReadTimeout:
        raise ConfigError(f"{where} took the connection but gave no answer in {answer_timeout:g} s: it is "
                          "stopped or overloaded (see its log); restart it, or point --tracking-uri / "
                          "$MLFLOW_TRACKING_URI at another") from None
    except requests.RequestException as exc:
        reason = f"no connection in {connect_timeout:g} s" if isinstance(exc, requests.ConnectTimeout) else \
            failure_in_words(exc) or type(exc).__name__
        raise ConfigError(f"cannot reach {where} ({reason}); start it, or point --tracking-uri / "
                          "$MLFLOW_TRACKING_URI at a running one") from None
    finally:
        notice.cancel()
    if response.status_code == 401:
        raise ConfigError(f"{where} refused the credentials (401): set MLFLOW_TRACKING_USERNAME and "
                          "MLFLOW_TRACKING_PASSWORD (docs/deployment.md)")
    if response.status_code == 403:
        raise ConfigError(f"{where} denied access (403): ask its admin for permission")
    if response.status_code >= 400:
        raise ConfigError(f"{where} answered HTTP {response.status_code} to a search; is it an MLflow server "
                          "(docs/tracking.md)?")


# What a SQL store says when two clients insert the same row at once (the server's reply carries the
# database's own words: SQLite's "UNIQUE constraint failed", PostgreSQL's "duplicate key value").
_LOST_RACE = ("RESOURCE_ALREADY_EXISTS", "already exists", "UNIQUE constraint failed", "duplicate key value",
              "IntegrityError")


def lost_a_race(exc: BaseException) -> bool:
    """Whether an MLflow write was refused because another client wrote the same row at the same moment."""
    if not isinstance(exc, mlflow.exceptions.MlflowException):
        return False
    text = f"{exc.error_code} {exc}"
    return any(words in text for words in _LOST_RACE)


def tolerating_races(write: Callable[[], Any], attempts: int = 5) -> Any:
    """`write()`, and again when it lost a race to another client (`lost_a_race`): the second time the
    store finds the other client's row and writes only what is still missing (MLflow's writes of data set
    inputs and aliases look before they insert). Any other error is raised at once."""
    for attempt in range(attempts):
        try:
            return write()
        except mlflow.exceptions.MlflowException as exc:
            if attempt == attempts - 1 or not lost_a_race(exc):
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def experiment_id_for(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created if missing; safe when many processes create it at once.

    `mlflow.set_experiment` is not: when its create loses the race to another process it returns the
    experiment without making it active, and the next `start_run` lands in "Default". So: get,
    create, and on "already exists" get again; every run is started with the explicit id.
    """
    for attempt in range(5):
        found = client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise ConfigError(f"experiment {name!r} is deleted; restore it (mlflow experiments restore "
                                  f"--experiment-id {found.experiment_id}) or choose another name")
            return found.experiment_id
        try:
            return client.create_experiment(name)
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS" and "already exists" not in str(exc):
                raise
            time.sleep(0.1 * attempt)  # another process created it: read it back
    raise RuntimeError(f"experiment {name!r} was created by another process but cannot be read back")


def log_params_once(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log params a run does not have yet; a different existing value gets a `resolved.` twin."""
    existing = client.get_run(run_id).data.params
    batch = []
    for key, value in params.items():
        text = redact(str(value))
        if key not in existing:
            batch.append(Param(key, text))
        elif not _same_value(existing[key], text) and RESOLVED_PREFIX + key not in existing:
            batch.append(Param(RESOLVED_PREFIX + key, text))
    for start in range(0, len(batch), 100):
        client.log_batch(run_id, params=batch[start:start + 100])


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, Any]) -> None:
    """Tags in one `log_batch`: MLflow's SQL store retries the insert when another worker's tags on the same
    run race it (single `set_tag` calls fail with a UNIQUE-constraint error there)."""
    if tags:
        client.log_batch(run_id, tags=[RunTag(key, redact(str(value))) for key, value in tags.items()])


# MLflow's own names for runs nobody named: adjective-animal-number ("dazzling-skunk-39").
_GENERATED_NAME = re.compile(r"^[a-z]+-[a-z]+-\d{1,3}$")


def name_attached_run(client: MlflowClient, run, name: str) -> None:
    """Give a run that `mlflow run` created (and MLflow named at random) the name that says what it is;
    a name the user chose (`mlflow run --run-name`) stays."""
    if name and run.info.run_name and _GENERATED_NAME.match(run.info.run_name):
        client.update_run(run.info.run_id, name=name)
