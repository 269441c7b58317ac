"""Ctrl-C (and SIGTERM) that never lands in the middle of a database write.

A KeyboardInterrupt raised inside a SQLAlchemy session can leave a SQLite connection holding its
lock: the next write, the one that marks the trial or the run as failed, then waits and fails
with "database is locked", and the study or run is left RUNNING. Inside `deferred()` the signal
is remembered instead, and delivered, to whatever handler was in place, when the block ends.
"""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

SIGNALS = (signal.SIGINT, signal.SIGTERM)
F = TypeVar("F", bound=Callable[..., Any])


class _Deferral:
    depth = 0  # nesting of `deferred` blocks in the main thread
    caught: list[int] = []


_state = _Deferral()


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them as if they came just then.

    Only the main thread receives signals, so in any other thread this does nothing. Nested blocks
    deliver when the outermost one ends; a signal that was ignored stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = _state.depth == 0
    if outermost:
        _state.caught = []
        previous = {s: signal.getsignal(s) for s in SIGNALS}
        held = [s for s, handler in previous.items() if handler not in (signal.SIG_IGN, None)]
        for s in held:  # None: a handler installed outside Python, left alone
            signal.signal(s, lambda signum, frame: _state.caught.append(signum))
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        if outermost:
            for s in held:
                signal.signal(s, previous[s])
            for s in dict.fromkeys(_state.caught):  # each signal once, in the order it came
                signal.raise_signal(s)


def deferring(method: F) -> F:
    """`method`, with signals held while it runs (see `deferred`)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with deferred():
            return method(*args, **kwargs)

    return wrapper  # type: ignore[return-value]

