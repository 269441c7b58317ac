"""A process serving on loopback for as long as a `with` block: the MLflow server the benchmark
measures tracking against (and the tests' servers)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


class ServerStartError(RuntimeError):
    """The server exited or did not answer its health check in time; the message ends with its log."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log  # the end of the server's output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(command: list[str], uri: str, log_path: Path, env: dict[str, str] | None = None,
                   timeout: float = 120.0) -> Iterator[str]:
    """Start `command`, wait until `uri`/health answers 200, yield `uri`, then stop the process.

    Raises:
        ServerStartError: with the end of the server's log.
    """
    log = open(log_path, "w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=log_path.parent, env=env)
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                output = log_path.read_text()[-2000:]
                raise ServerStartError(f"{' '.join(command[:2])} did not start: {output}", output)
            time.sleep(0.5)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


# MLflow's job runner (huey consumers for its GenAI jobs: scorers, prompt optimisation, trace rollups)
# starts seven more processes with the server, each importing MLflow: 54 CPU-seconds in the server's
# first minute on a 2-core CPU against 11 without, and their memory for as long as it runs. A server
# that tracks training runs never uses it.
WITHOUT_JOB_RUNNER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

# MLflow's `log_batch` holds one database connection while it asks its pool for a second (the metrics are
# written in a session of their own). Each server worker runs up to 40 requests at once (anyio's thread
# limit); with SQLAlchemy's default pool of 15, 15 concurrent batches each hold one and all wait for
# another: the server stalls, every request failing after the pool's 30 s timeout (seen with 32 training
# processes on one server). A pool of more than 40 per worker always has a connection for a second session.
CONNECTIONS_PER_WORKER = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "5", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "36"}


def mlflow_server_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (by default this process's environment) for an `mlflow server` without the job runner and with
    a database pool larger than its request threads (`CONNECTIONS_PER_WORKER`; a pool set in `env` wins)."""
    return {**CONNECTIONS_PER_WORKER, **(os.environ if env is None else env), **WITHOUT_JOB_RUNNER}


def mlflow_server_command(root: Path, port: int) -> list[str]:
    """`mlflow server` on loopback with a SQLite store and proxied artifacts under `root`."""
    mlflow = str(Path(sys.executable).parent / "mlflow")
    return [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts")]


@contextlib.contextmanager
def local_mlflow_server(root: Path) -> Iterator[str]:
    """A real `mlflow server` on a free loopback port, its files under `root`; yields its URI."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with running_server(mlflow_server_command(root, port), f"http://127.0.0.1:{port}", root / "server.log",
                        env=mlflow_server_env()) as uri:
        yield uri
