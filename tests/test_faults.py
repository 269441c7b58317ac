"""Faults that must end well, with real processes and real servers: a full artifact store, a stalled
server, many runs at once into one new experiment."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cifar_mlflow.core.checkpoint import load_checkpoint
from cifar_mlflow.tracking.local_server import free_port, mlflow_server_command, mlflow_server_env
from tests.conftest import run_env, running_server, small_disk

pytestmark = pytest.mark.faults


def test_a_full_artifact_store_fails_within_a_minute_and_keeps_everything_locally(imagefolder, tmp_path) -> None:
    with small_disk(tmp_path / "store", 64 * 1024) as store:  # the first plot fits, the rest do not
        command = mlflow_server_command(tmp_path, free_port())
        command[command.index("--artifacts-destination") + 1] = str(store)
        uri = f"http://127.0.0.1:{command[command.index('--port') + 1]}"
        with running_server(command, uri, tmp_path / "server.log", env=mlflow_server_env()):
            proc = subprocess.run([sys.executable, "-m", "cifar_mlflow.train", "--dataset", "imagefolder",
                                   "--data-dir", str(imagefolder), "--arch", "lenet", "--epochs", "2",
                                   "--batch-size", "16", "--no-progress", "--tracking-uri", uri],
                                  cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=600)
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
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: the artifact store failed")]
    assert len(errors) == 1, proc.stderr[-3000:]
    # Given up after 3 retries (within a minute), not MLflow's default 7 with a doubling backoff (8.5
    # minutes for a model): the server saw the refused upload 4 times at most.
    failed = errors[0].split("(uploading ", 1)[1].split(":", 1)[0]
    attempts = [line for line in (tmp_path / "server.log").read_text().splitlines()
                if f"/{failed} " in line and '"PUT ' in line]
    assert 2 <= len(attempts) <= 4, attempts
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
    with running_server(command, uri, tmp_path / "server.log", env=mlflow_server_env()) as uri:
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


def _server_for(backend: str, request, root: Path) -> tuple[list[str], str]:
    """An `mlflow server` command with its store on SQLite under `root` or on the suite's PostgreSQL; its URI."""
    command = mlflow_server_command(root, free_port())
    if backend == "postgresql":
        postgres_url = request.getfixturevalue("postgres_url")
        command[command.index("--backend-store-uri") + 1] = postgres_url.rsplit("/", 1)[0] + "/mlflow"
    return command, f"http://127.0.0.1:{command[command.index('--port') + 1]}"


def _trainer(seed: int, epochs: int, max_eval: int, experiment: str, uri: str) -> list[str]:
    """A short training run on 64 synthetic images, logging to `uri` without its model."""
    return [sys.executable, "-m", "cifar_mlflow.train", "--dataset", "synthetic", "--max-train-samples", "64",
            "--max-eval-samples", str(max_eval), "--arch", "cnn_small", "--epochs", str(epochs), "--no-progress",
            "--log-model", "false", "--seed", str(seed), "--experiment-name", experiment, "--tracking-uri", uri]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sixteen_runs_started_together_all_land_in_their_new_experiment(backend, request, tmp_path) -> None:
    """16 training processes at once into one experiment that does not exist yet: none lost, none in Default,
    and none killed for memory (each process at its peak, as the kernel measured it)."""
    command, uri = _server_for(backend, request, tmp_path)
    experiment = f"crowd-{backend}"
    with running_server(command, uri, tmp_path / "server.log", env=mlflow_server_env()):
        procs = [subprocess.Popen(["/usr/bin/time", "-f", "peak_rss_kib %M", *_trainer(i, 1, 64, experiment, uri)],
                                  cwd=tmp_path, env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for i in range(16)]
        outputs = [p.communicate(timeout=900)[1] for p in procs]
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id], max_results=100)
        default = client.search_runs(["0"], max_results=100)
    for proc, err in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    peaks = [int(err.rsplit("peak_rss_kib ", 1)[1].split()[0]) for err in outputs]
    print(f"{backend}: 16 runs, peak resident memory per process {min(peaks) // 1024}-{max(peaks) // 1024} MiB")
    assert len(runs) == 16 and {r.data.params["seed"] for r in runs} == {str(i) for i in range(16)}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert default == []
    assert max(peaks) < 2 * 1024 * 1024  # KiB: a 64-image run needs no more than the libraries it loads


def test_the_server_killed_and_restarted_mid_run_loses_nothing(tmp_path) -> None:
    import os
    import signal

    command = ["setsid", *mlflow_server_command(tmp_path, free_port())]
    uri = f"http://127.0.0.1:{command[command.index('--port') + 1]}"

    def kill_server() -> None:
        pid = subprocess.run(["pgrep", "-f", "--", f"--port {uri.rsplit(':', 1)[1]}"], capture_output=True,
                             text=True).stdout.split()[0]
        os.killpg(os.getpgid(int(pid)), signal.SIGKILL)

    server = running_server(command, uri, tmp_path / "server.log", env=mlflow_server_env())
    server.__enter__()
    proc = subprocess.Popen([sys.executable, "-m", "cifar_mlflow.train", "--dataset", "synthetic",
                             "--max-train-samples", "3000", "--max-eval-samples", "500", "--arch", "cnn_small",
                             "--epochs", "5", "--no-progress", "--tracking-uri", uri],
                            cwd=tmp_path, env=run_env(), stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("epoch 1/5"):
                break
        kill_server()  # SIGKILL: the server and its workers are gone mid-run
        server.__exit__(None, None, None)
        time.sleep(5)
        # the same store, the same port
        server = running_server(command, uri, tmp_path / "server-restarted.log", env=mlflow_server_env())
        server.__enter__()
        rest = proc.stderr.read()
        assert proc.wait(timeout=600) == 0, "".join(lines) + rest
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id])
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc"))
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    finally:
        proc.kill()
        server.__exit__(None, None, None)
    assert run.info.status == "FINISHED" and steps == [1, 2, 3, 4, 5]
    assert "test_acc" in run.data.metrics and {"plots", "reports", "config.yaml"} <= artifacts
    assert run.outputs.model_outputs  # the logged model, linked to the run


LOAD_RUNS, LOAD_EPOCHS = 32, 5


@pytest.mark.timeout(1800)  # 32 processes on 2 cores: about 10 minutes on the SQLite-backed server
@pytest.mark.parametrize("backend,server_workers", [("sqlite", 1), ("postgresql", 2)])
def test_thirty_two_runs_log_every_epoch_to_one_server(backend, server_workers, request, tmp_path) -> None:
    """32 training processes at once, 5 short epochs, each epoch's metrics and confusion matrix sent to one
    server (its store on SQLite with 1 worker, or on PostgreSQL with 2, as docker-compose.yml runs it);
    a probe times one small write every 0.25 s meanwhile. No run fails and no epoch's metric is lost;
    the latencies are printed (docs/reliability.md), not asserted."""
    import statistics
    import threading

    from mlflow.entities import Metric

    from cifar_mlflow.tracking.faults import install_request_hooks

    command, uri = _server_for(backend, request, tmp_path)
    command[command.index("--workers") + 1] = str(server_workers)
    experiment = f"load-{backend}"
    latencies: list[float] = []
    failures: list[Exception] = []
    done = threading.Event()
    with running_server(command, uri, tmp_path / "server.log", env=mlflow_server_env()):
        client = MlflowClient(uri)
        probe = client.create_run(client.create_experiment(f"probe-{backend}")).info.run_id

        install_request_hooks()  # as every client of the product: a request the busy server refused goes again

        def time_writes() -> None:
            step = 0
            while not done.wait(0.25):
                start = time.perf_counter()
                try:
                    client.log_batch(probe, metrics=[Metric("probe", 1.0, int(time.time() * 1000), step)])
                except Exception as exc:  # noqa: BLE001 - counted, and the probe goes on
                    failures.append(exc)
                latencies.append(time.perf_counter() - start)
                step += 1

        prober = threading.Thread(target=time_writes, daemon=True)
        started = time.perf_counter()
        procs = [subprocess.Popen(_trainer(i, LOAD_EPOCHS, 32, experiment, uri),
                                  cwd=tmp_path, env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for i in range(LOAD_RUNS)]
        prober.start()
        outputs = [p.communicate(timeout=1800)[1] for p in procs]
        wall = time.perf_counter() - started
        done.set()
        prober.join(30)
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id], max_results=100)
        histories = {r.info.run_id: {key: sorted(m.step for m in client.get_metric_history(r.info.run_id, key))
                                     for key in ("train_loss", "val_acc", "epoch_seconds")} for r in runs}
    for proc, err in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    assert len(runs) == LOAD_RUNS and all(r.info.status == "FINISHED" for r in runs)
    every_epoch = list(range(1, LOAD_EPOCHS + 1))
    assert all(steps == every_epoch for history in histories.values() for steps in history.values()), histories
    assert all("test_acc" in r.data.metrics for r in runs)
    ms = sorted(1000 * s for s in latencies)
    print(f"{backend} ({server_workers} server worker(s)): {LOAD_RUNS} runs x {LOAD_EPOCHS} epochs in {wall:.0f} s; "
          f"probe writes: {len(ms)}, median {statistics.median(ms):.0f} ms, p95 {ms[int(0.95 * len(ms))]:.0f} ms, "
          f"max {ms[-1]:.0f} ms, failed {len(failures)}")
    assert not failures, failures[:3]
