"""The study's Optuna storage: a database shared by workers, which outlives a Ctrl-C, a dead worker and a
database restart."""

from __future__ import annotations

import functools
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from cifar_mlflow.errors import ConfigError
from cifar_mlflow.interrupts import deferring
from cifar_mlflow.redaction import redact
from cifar_mlflow.tracking import fail_stale_run

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats: stable in practice

RUN_ATTR = "mlflow_run_id"  # the trial's user attribute naming its MLflow run

# How long a storage call waits for a database that went away (a restart, a fail-over) before it fails.
OUTAGE_SECONDS = 120.0


def _chain(exc: BaseException | None):
    """`exc` and the errors it was raised from (or while handling), innermost last."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _lost_connection(exc: BaseException) -> bool:
    import sqlalchemy.exc

    return isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError))


def is_database_outage(exc: BaseException) -> bool:
    """Whether an error (or one it was raised from) says the database connection was lost or refused,
    as against a bad query or a conflict: SQLAlchemy's OperationalError and InterfaceError, or a
    connection it invalidated."""
    return any(_lost_connection(e) or getattr(e, "connection_invalidated", False) for e in _chain(exc))


def _root_cause(exc: BaseException) -> str:
    """The database's own words for an outage (the driver's "connection refused" as SQLAlchemy reports
    it), not Optuna's generic "an exception is raised during the commit"."""
    chain = list(_chain(exc))
    found = next((e for e in chain if _lost_connection(e)), chain[-1])
    text = str(found).strip()
    return redact(text.splitlines()[0][:200] if text else type(found).__name__)


_outer = threading.local()  # a storage call under way on this thread (Optuna's calls call each other)
_said_lock = threading.Lock()
_said = {"outage": False}


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def riding_out_outages(call: Callable[..., Any], what: str, seconds: float) -> Callable[..., Any]:
    """`call`, tried again while the database is unreachable, for up to `seconds`: the console says so
    once when the outage starts and once when the database answers again. Only the outermost storage
    call of a thread retries (the calls it makes fail through to it)."""

    @functools.wraps(call)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if getattr(_outer, "active", False):
            return call(*args, **kwargs)
        _outer.active = True
        try:
            deadline, pause = time.monotonic() + seconds, 0.5
            while True:
                try:
                    result = call(*args, **kwargs)
                except Exception as exc:
                    if not is_database_outage(exc):
                        raise
                    if time.monotonic() + pause > deadline:  # given up: a later outage is said anew
                        with _said_lock:
                            _said["outage"] = False
                        raise
                    with _said_lock:
                        first, _said["outage"] = not _said["outage"], True
                    if first:
                        _say(f"the Optuna storage is unreachable ({what}: {_root_cause(exc)}); "
                             f"retrying for up to {seconds:.0f} s...")
                    time.sleep(pause)
                    pause = min(pause * 2, 8.0)
                    continue
                with _said_lock:
                    back, _said["outage"] = _said["outage"], False
                if back:
                    _say("the Optuna storage answered again")
                return result
        finally:
            _outer.active = False

    return wrapper


class InterruptSafeStorage(optuna.storages.RDBStorage):
    """Optuna's database storage, every call of which finishes before a Ctrl-C is raised, and waits out a
    database that went away (`riding_out_outages`, up to `outage_seconds`).

    Optuna reads and writes the storage in the middle of a trial (`report`, `should_prune`) and
    between trials; a Ctrl-C at that moment arrives when the call returns (see `interrupts`), so
    the write that marks the trial failed finds the database unlocked. A retried write is one
    transaction again: the rare write whose commit reached the database but whose answer did not
    is then refused by Optuna's own checks (a finished trial is not finished twice).
    """

    def __init__(self, url: str, *, outage_seconds: float = OUTAGE_SECONDS, **kwargs: Any) -> None:
        if not url.startswith("sqlite"):  # pooled connections a restart closed are replaced before use
            kwargs["engine_kwargs"] = {"pool_pre_ping": True, **kwargs.get("engine_kwargs", {})}
        self.outage_seconds = 0.0  # opening: an unreachable database is said at once (`build_storage`)
        super().__init__(url, **kwargs)
        self.outage_seconds = outage_seconds

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name.startswith("__") or not isinstance(attr, types.MethodType):
            return attr
        # Optuna's cache also calls private methods (`_get_trials`); a Ctrl-C waits for one attempt only.
        return riding_out_outages(deferring(attr), name, super().__getattribute__("outage_seconds"))


def build_storage(url: str, *, uri: str, heartbeat_interval: int, retry_failed: int) -> InterruptSafeStorage:
    """A database storage with heartbeats: a trial whose worker died is failed, its MLflow run (on tracking
    `uri`) too, and it is retried when `retry_failed` allows."""
    # Optuna 4.9 renamed the callback (the old name warns on every use); 4.x before has the old one only.
    retry_class = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or \
        optuna.storages.RetryFailedTrialCallback
    retry = retry_class(max_retry=retry_failed) if retry_failed else None

    def on_stale_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        run_id = trial.user_attrs.get(RUN_ATTR)
        if run_id:
            fail_stale_run(uri, run_id)
        print(f"trial {trial.number} failed: its worker stopped sending heartbeats", file=sys.stderr)
        if retry is not None:
            retry(study, trial)

    # Workers started together on an empty database race to create Optuna's tables (PostgreSQL then
    # rejects the loser's CREATE TABLE): try again, and the tables are there.
    for attempt in range(4):
        try:
            return InterruptSafeStorage(url, heartbeat_interval=heartbeat_interval, grace_period=3 * heartbeat_interval,
                                        heartbeat_stale_trial_callback=on_stale_trial)
        except ImportError as exc:  # no driver for this URL: trying again will not help
            raise ConfigError(redact(f"cannot open Optuna storage {url}: {exc}")) from None
        except Exception as exc:  # noqa: BLE001 - bad URL, unreachable server, the table race
            if attempt == 3:
                raise ConfigError(redact(f"cannot open Optuna storage {url}: "
                                         f"{str(exc).splitlines()[0][:200]}")) from None
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")
