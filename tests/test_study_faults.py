"""A study survives its faults, with real worker processes, a real PostgreSQL and a real `mlflow server`:
workers that start together, one killed, the database restarted under the others, the tracking server
killed and restarted mid-study (make test-faults)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from cifar_mlflow.tracking.local_server import free_port, mlflow_server_command, mlflow_server_env
from tests.conftest import run_env, running_server

pytestmark = pytest.mark.faults

TRIALS = 3  # asked of each worker
EPOCHS = 12


def worker_args(storage: str, uri: str, imagefolder: Path, trials: int = TRIALS) -> list[str]:
    return [sys.executable, "-m", "cifar_mlflow.tune", "--trials", str(trials), "--study-name", "faults",
            "--storage", storage, "--tracking-uri", uri, "--experiment-name", "study-faults",
            "--dataset", "imagefolder", "--data-dir", str(imagefolder), "--arch", "lenet", "--batch-size", "16",
            "--epochs", str(EPOCHS), "--no-progress", "--pruner", "none", "--heartbeat-interval", "2",
            "--retry-failed", "1", "--no-log-models"]


class Worker:
    """A tuning worker process, its console in a file (eight pipes nobody reads would fill and block)."""

    def __init__(self, args: list[str], cwd: Path, name: str) -> None:
        self.log = cwd / f"{name}.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(args, cwd=cwd, env=run_env(), stdout=out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, words: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while words not in self.text():
            assert self.proc.poll() is None, f"the worker ended before {words!r}:\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {words!r} in {timeout:.0f} s:\n{self.text()[-3000:]}"
            time.sleep(0.2)

    def finish(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)


def check_study(storage: str, uri: str, completed_at_least: int) -> tuple[list, list]:
    """What every fault scenario must end with; returns (trials, runs)."""
    study = optuna.load_study(study_name="faults", storage=storage)
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    assert "RUNNING" not in states and "WAITING" not in states, states
    assert states.count("COMPLETE") >= completed_at_least, states
    client = MlflowClient(uri)
    for t in trials:  # a failed trial says why: the error it died of, or (its worker killed) on its run
        if t.state.name == "FAIL":
            reason = t.user_attrs.get("fail_reason") or \
                client.get_run(t.user_attrs["mlflow_run_id"]).data.tags.get("optuna.fail_reason")
            assert reason, t.number
    configurations = [tuple(sorted(t.params.items())) for t in trials
                      if "retry_of" not in t.user_attrs and "failed_trial" not in t.system_attrs]
    assert len(set(configurations)) == len(configurations), "two trials drew the same configuration"
    experiment = client.get_experiment_by_name("study-faults")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    assert len([r for r in runs if r.data.tags.get("cifar_mlflow.kind") == "study"]) == 1
    return trials, runs


@pytest.mark.timeout(1500)  # 10 worker processes on 2 cores: 4-6 minutes here
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_eight_workers_outlive_a_killed_worker_and_a_database_restart(backend, postgres, imagefolder,
                                                                       tmp_path) -> None:
    """8 workers start together on one study (PostgreSQL) and one tracking server (its store on SQLite,
    or on the same PostgreSQL); one is SIGKILLed mid-trial; PostgreSQL restarts under the others; a
    replacement starts; after the heartbeats' grace one more worker fails the dead worker's trial and
    runs it again."""
    storage = postgres.create_database(f"study_{backend}")
    command = mlflow_server_command(tmp_path, free_port())
    if backend == "postgresql":
        command[command.index("--backend-store-uri") + 1] = postgres.create_database(f"mlflow_{backend}")
    uri = f"http://127.0.0.1:{command[command.index('--port') + 1]}"
    with running_server(command, uri, tmp_path / "server.log", env=mlflow_server_env()):
        args = worker_args(storage, uri, imagefolder)
        workers = [Worker(args, tmp_path, f"worker-{i}") for i in range(8)]
        workers[0].wait_for("epoch 2/", timeout=600)
        workers[0].proc.kill()  # mid-trial: its trial and run stay RUNNING until their heartbeats go stale
        workers[0].finish(60)
        time.sleep(5)
        postgres.stop()  # under the study and, on the postgresql backend, under the tracking server
        time.sleep(3)
        postgres.start()
        workers.append(Worker(args, tmp_path, "replacement"))
        for worker in workers[1:]:
            assert worker.finish(1200) == 0, worker.text()[-3000:]
        time.sleep(7)  # past the grace period of three missed heartbeats (2 s)
        last = Worker(worker_args(storage, uri, imagefolder, trials=1), tmp_path, "last")
        assert last.finish(600) == 0, last.text()[-3000:]
        trials, runs = check_study(storage, uri, completed_at_least=8 * TRIALS + 1)
    consoles = "".join(w.text() for w in workers[1:]) + last.text()
    assert "UNIQUE constraint" not in consoles and "Traceback" not in consoles
    run_of = {r.info.run_id: r for r in runs}

    by_heartbeat = [t for t in trials if t.state.name == "FAIL"
                    and "heartbeats" in run_of[t.user_attrs["mlflow_run_id"]].data.tags.get("optuna.fail_reason", "")]
    # A live worker whose heartbeats came late past the grace (6 s: the database restarting under 10 processes
    # on 2 cores) has its trial failed by another worker too; its console names the trial, and it goes on.
    taken_over = {int(n) for n in re.findall(r"trial (\d+) was failed by another worker", consoles)}
    killed = [t for t in by_heartbeat if t.number not in taken_over]
    assert len(killed) == 1  # the killed worker's trial, failed by the heartbeat check, its run FAILED ...
    assert taken_over <= {t.number for t in by_heartbeat}
    assert run_of[killed[0].user_attrs["mlflow_run_id"]].info.status == "FAILED"
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed[0].number]
    assert len(retried) == 1 and retried[0].params == killed[0].params  # ... and run again
    print(f"{backend}: {len(trials)} trials: "
          f"{ {s: [t.state.name for t in trials].count(s) for s in ('COMPLETE', 'PRUNED', 'FAIL')} }, "
          f"{len(taken_over)} taken over from a late worker")


def test_the_tracking_server_killed_mid_study_loses_nothing(postgres, imagefolder, tmp_path) -> None:
    """The tracking server is SIGKILLed mid-study and comes back 5 s later on the same store and port:
    the trials go on, every epoch's metrics arrive, and each worker's console says so once."""
    storage = postgres.create_database("study_server_restart")
    command = ["setsid", *mlflow_server_command(tmp_path, free_port())]
    port = command[command.index("--port") + 1]
    uri = f"http://127.0.0.1:{port}"
    server = running_server(command, uri, tmp_path / "server.log", env=mlflow_server_env())
    server.__enter__()
    try:
        workers = [Worker(worker_args(storage, uri, imagefolder), tmp_path, f"worker-{i}") for i in range(2)]
        for worker in workers:  # both mid-study: a worker still starting up when the server goes has nothing to wait on
            worker.wait_for("epoch 3/", timeout=600)
        pid = subprocess.run(["pgrep", "-f", "--", f"--port {port}"], capture_output=True, text=True).stdout.split()[0]
        os.killpg(os.getpgid(int(pid)), signal.SIGKILL)  # the server and its workers, mid-trial
        server.__exit__(None, None, None)
        time.sleep(5)
        server = running_server(command, uri, tmp_path / "server-restarted.log", env=mlflow_server_env())
        server.__enter__()
        for worker in workers:
            assert worker.finish(900) == 0, worker.text()[-3000:]
        trials, runs = check_study(storage, uri, completed_at_least=2 * TRIALS)
        client = MlflowClient(uri)
        for run in runs:
            if run.data.tags.get("cifar_mlflow.kind") == "study":
                continue
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc"))
            assert steps == list(range(1, EPOCHS + 1)), (run.info.run_name, steps)
            # every epoch's confusion matrix, those of the outage sent late
            images = {int(a.path.split("+step+")[1].split("+")[0])
                      for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")}
            assert images == set(range(1, EPOCHS + 1)), (run.info.run_name, sorted(images))
            assert run.info.status == "FINISHED"
    finally:
        server.__exit__(None, None, None)
    assert [t.state.name for t in trials] == ["COMPLETE"] * (2 * TRIALS)
    for worker in workers:  # one outage, said once and its end once (another thread's request still in
        said = worker.text()  # MLflow's back-off once the server was back had been said as a second one)
        notices = [line for line in said.splitlines() if "the tracking server" in line]
        assert said.count("the tracking server has not answered") == 1, notices
        assert said.count("the tracking server answered again") == 1, notices
