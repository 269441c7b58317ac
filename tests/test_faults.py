"""Faults that must end well, with real processes and real servers: a full artifact store, a stalled
server, many runs at once into one new experiment."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cifar_mlflow.checkpoint import load_checkpoint
from tests.conftest import free_port, mlflow_server_command, run_env, running_server, small_disk

pytestmark = pytest.mark.faults


def test_a_full_artifact_store_fails_within_a_minute_and_keeps_everything_locally(imagefolder, tmp_path) -> None:
    with small_disk(tmp_path / "store", 64 * 1024) as store:  # the first plot fits, the rest do not
        command = mlflow_server_command(tmp_path, free_port())
        command[command.index("--artifacts-destination") + 1] = str(store)
        uri = f"http://127.0.0.1:{command[command.index('--port') + 1]}"
        with running_server(command, uri, tmp_path / "server.log"):
            started = time.time()
            proc = subprocess.run([sys.executable, "-m", "cifar_mlflow.train", "--dataset", "imagefolder",
                                   "--data-dir", str(imagefolder), "--arch", "lenet", "--epochs", "2",
                                   "--batch-size", "16", "--no-progress", "--tracking-uri", uri],
                                  cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=600)
            seconds = time.time() - started
            client = MlflowClient(uri)
            (run,) = client.search_runs([client.get_experiment_by_name("imagefolder").experiment_id])
            # The store has room again: the printed command uploads what was kept.
            subprocess.run(["mount", "-o", "remount,size=64m", str(store)], check=True)
            upload = proc.stderr.split("upload them with: ")[1].split()
            done = subprocess.run([str(Path(sys.executable).parent / upload[0]), *upload[1:]], cwd=tmp_path,
                                  env=run_env(MLFLOW_TRACKING_URI=uri), capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-2000:]
            uploaded = {a.path for a in client.list_artifacts(run.info.run_id)}
            model_files = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert seconds < 120, f"took {seconds:.0f} s"  # MLflow's own retries alone took 8.5 minutes
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: the artifact store failed")]
    assert len(errors) == 1, proc.stderr[-3000:]
    kept = tmp_path / "checkpoints" / run.info.run_id / "not-uploaded"
    assert f"mlflow artifacts log-artifacts --run-id {run.info.run_id} --local-dir checkpoints/" in errors[0]
    assert run.info.status == "FAILED" and "test_acc" in run.data.metrics  # the metrics are on the server
    assert (kept / "model" / "MLmodel").is_file()
    assert (kept / "reports" / "confusion_matrix.csv").is_file() and (kept / "config.yaml").is_file()
    assert load_checkpoint(kept / "checkpoint" / "last.pt")["epoch"] == 2
    assert {"model", "plots", "reports", "config.yaml", "checkpoint"} <= uploaded
    assert "model/MLmodel" in model_files


def test_a_stalled_server_is_said_on_the_console_and_nothing_is_lost(imagefolder, tmp_path) -> None:
    import os
    import signal

    command = ["setsid", *mlflow_server_command(tmp_path, free_port())]  # its own process group, to pause whole
    uri = f"http://127.0.0.1:{command[command.index('--port') + 1]}"
    with running_server(command, uri, tmp_path / "server.log") as uri:
        server_pid = int(subprocess.run(["pgrep", "-f", "--", f"--port {uri.rsplit(':', 1)[1]}"], capture_output=True,
                                        text=True).stdout.split()[0])
        group = os.getpgid(server_pid)
        proc = subprocess.Popen([sys.executable, "-m", "cifar_mlflow.train", "--dataset", "imagefolder",
                                 "--data-dir", str(imagefolder), "--arch", "lenet", "--epochs", "3", "--batch-size",
                                 "16", "--no-progress", "--log-model", "false", "--tracking-uri", uri],
                                cwd=tmp_path, env=run_env(), stderr=subprocess.PIPE, text=True)
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if " started at " in line:
                break
        os.killpg(group, signal.SIGSTOP)  # the server stalls: every request waits
        try:
            for line in proc.stderr:
                lines.append(line)
                if line.startswith("the tracking server has not answered"):
                    break
        finally:
            time.sleep(3)
            os.killpg(group, signal.SIGCONT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=300) == 0, "".join(lines) + rest
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("imagefolder").experiment_id])
        history = client.get_metric_history(run.info.run_id, "val_acc")
    said = "".join(lines) + rest
    assert "the tracking server has not answered for 5 s" in said
    assert "the tracking server answered again after" in rest
    assert run.info.status == "FINISHED" and sorted(m.step for m in history) == [1, 2, 3]
