"""Secrets never leave the process: passwords in URLs are masked wherever text goes out.

A team shares one tracking server: every param, tag, artifact, checkpoint and console line can be
read by others, so `redact` runs over each of them. A tracking URI with credentials
(`http://user:pass@host:5000`) is split once, at start: MLflow gets the bare URI and the credentials
through `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`, as its documentation prefers, so
that none of its own messages ("View run ... at: URI") can print them either.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
# scheme://user:password@  (the password runs to the last @ before the path: a raw @ in it is masked too)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s'\"]*):(?P<password>[^\s'\"/]*)@")


def redact(value: Any) -> Any:
    """`value` with the password of every URL in it replaced by `***`; dicts and lists are walked."""
    if isinstance(value, str):
        return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@" if m["password"] else m[0], value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


def split_tracking_credentials(uri: str) -> str:
    """The tracking URI without `user:password@`; the credentials go to MLflow's environment variables.

    Only http(s) URIs carry credentials this way (a database URI keeps its password: SQLAlchemy needs
    it there, and `redact` masks it wherever it would be shown).
    """
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    if user:
        os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(user)
    if password:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(password)
    return urlunsplit(parts._replace(netloc=host))


class _RedactingStream:
    """A text stream that masks URL passwords in everything written through it."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding, ...
        return getattr(self._stream, name)


def protect_console() -> None:
    """Mask URL passwords in all console output of this process: ours, MLflow's, Optuna's, tracebacks.

    Wraps `sys.stdout` / `sys.stderr` (once) and points the logging handlers that write to them
    (MLflow configures its own when imported) at the wrappers.
    """
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, _RedactingStream):
            continue
        wrapped = _RedactingStream(stream)
        setattr(sys, name, wrapped)
        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            for handler in getattr(logger, "handlers", ()):
                if isinstance(handler, logging.StreamHandler) and handler.stream is stream:
                    handler.setStream(wrapped)
