"""The throwaway `mlflow server` the benchmark logs to: what it starts, and that nothing of it outlives it."""

from __future__ import annotations

import psutil

from cifar_mlflow.tracking.local_server import local_mlflow_server


def test_serves_without_the_job_runner_and_leaves_no_process_behind(tmp_path) -> None:
    with local_mlflow_server(tmp_path / "server") as uri:
        port = f"--port {uri.rsplit(':', 1)[1]}"
        (server,) = [p for p in psutil.Process().children() if port in " ".join(p.cmdline())]
        tree = [server, *server.children(recursive=True)]
        commands = [" ".join(p.cmdline()) for p in tree]
        assert any("uvicorn" in c for c in commands), commands  # the worker that answers
        # MLflow's GenAI job runner (huey consumers, each importing MLflow) is not started
        assert not [c for c in commands if "huey" in c or "jobs._job_runner" in c], commands
    gone, alive = psutil.wait_procs(tree, timeout=30)
    assert alive == [], [" ".join(p.cmdline()) for p in alive]
