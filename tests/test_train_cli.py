"""`python -m cifar_mlflow.train`: exit codes, run statuses, Ctrl-C and --resume."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from cifar_mlflow.train import main
from tests.conftest import as_foreground, run_env


def quick_args(imagefolder: Path, *extra: str) -> list[str]:
    return ["--dataset", "imagefolder", "--data-dir", str(imagefolder), "--arch", "cnn_small", "--epochs", "2",
            "--batch-size", "16", "--no-progress", "--device", "cpu", *extra]


def runs(uri: str) -> list:
    mlflow.set_tracking_uri(uri)
    return MlflowClient().search_runs(
        [e.experiment_id for e in MlflowClient().search_experiments()], max_results=100)


BAD_INPUTS = [
    (["--arch", "alexnet9000"], "unknown architecture 'alexnet9000'; valid names: airbench, cnn, cnn_small"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'"),
    (["--scheduler", "triangle"], "unknown scheduler 'triangle'"),
    (["--lr", "-0.1"], "lr must be a positive number"),
    (["--batch-size", "0"], "batch_size must be a positive number"),
    (["--epochs", "0"], "epochs must be a positive number"),
    (["--val-fraction", "1.5"], "val_fraction must be at least 0 and below 1"),
    (["--low-res-epochs", "1"], "low_res_epochs needs --low-res-size"),
    (["--low-res-size", "24"], "low_res_size 24 does nothing without --low-res-epochs"),
    (["--low-res-epochs", "2", "--low-res-size", "16"], "low_res_epochs must be at least 0 and below --epochs (2)"),
    (["--low-res-epochs", "1", "--low-res-size", "32"], "--low-res-size 32 is not below the images' 32x32"),
    (["--arch", "mlp", "--low-res-epochs", "1", "--low-res-size", "24"], "mlp cannot take 3x24x24 images"),
    (["--hard-fraction", "0"], "hard_fraction must be above 0 and at most 1"),
    (["--hard-fraction", "0.5", "--hard-from-epoch", "1"], "hard_from_epoch must be at least 2 (one epoch over "
                                                           "every image first), got 1"),
    (["--model-args", "{dropout: 0.2"], "model_args is not valid JSON"),
    (["--model-args", '{"no_such_arg": 1}'], "bad model_args"),
    (["--data-dir", "/nonexistent/images"], "imagefolder needs /nonexistent/images/train"),
    (["--resume", "0123456789abcdef"], "cannot read checkpoint"),
    (["--device", "cuda:99"], "cuda:99"),  # no CUDA here; on a GPU machine: no 100th GPU
    (["--tracking-uri", "http://127.0.0.1:9"], "cannot reach the MLflow tracking server at http://127.0.0.1:9"),
]


@pytest.mark.parametrize("extra, message", BAD_INPUTS, ids=[m.split()[0] + "-" + a[0] for a, m in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line_and_creates_nothing(extra, message, imagefolder, tmp_path, monkeypatch,
                                                             capsys) -> None:
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "checkpoints" / "0123456789abcdef" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint")  # for the unreadable-checkpoint case
    db = tmp_path / "runs.db"
    code = main(quick_args(imagefolder, "--tracking-uri", f"sqlite:///{db}", *extra))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err
    assert not db.exists()  # no store, no experiment, no run


def test_data_with_one_class_is_refused_before_any_run(tmp_path, monkeypatch, capsys) -> None:
    from tests.conftest import write_imagefolder

    monkeypatch.chdir(tmp_path)
    folder = write_imagefolder(tmp_path / "one-class", classes=["cat"])
    code = main(quick_args(folder, "--tracking-uri", f"sqlite:///{tmp_path / 'runs.db'}"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == ("error: the data set has 1 class (cat); a classifier needs at least two: add a "
                                 "folder per class under train/ and test/")
    assert not (tmp_path / "runs.db").exists()


def test_exit_status_2_from_the_real_process(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "cifar_mlflow.train", "--arch", "nope"], cwd=tmp_path,
                          env=run_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unknown architecture 'nope'")
    assert not (tmp_path / "mlflow.db").exists()


def test_non_finite_loss_marks_the_run_failed(imagefolder, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    code = main(quick_args(imagefolder, "--tracking-uri", uri, "--arch", "mlp", "--model-args",
                           '{"batch_norm": false}', "--lr", "1e12", "--optimizer", "sgd", "--scheduler", "none"))
    assert code == 1
    assert "training loss became" in capsys.readouterr().err
    (run,) = runs(uri)
    assert run.info.status == "FAILED"


@pytest.mark.faults  # a real Ctrl-C mid-run, then a resume: with the other signal tests in make test-faults
def test_ctrl_c_marks_killed_and_resume_finishes_the_same_run(imagefolder, tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    args = quick_args(imagefolder, "--tracking-uri", uri, "--epochs", "60", "--arch", "cnn")
    proc = subprocess.Popen([sys.executable, "-m", "cifar_mlflow.train", *args], cwd=tmp_path, env=run_env(),
                            stderr=subprocess.PIPE, text=True, preexec_fn=as_foreground)
    lines = []
    for line in proc.stderr:  # wait until two epochs are done and checkpointed
        lines.append(line)
        if line.startswith("epoch 2/60"):
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, "".join(lines) + rest
    assert "marked KILLED" in rest
    (run,) = runs(uri)
    assert run.info.status == "KILLED"
    run_id = run.info.run_id
    artifacts = [a.path for a in MlflowClient().list_artifacts(run_id, "checkpoint")]
    assert artifacts == ["checkpoint/last.pt"]

    done = sorted(m.step for m in MlflowClient().get_metric_history(run_id, "val_acc"))
    assert done == list(range(1, len(done) + 1)) and len(done) >= 2  # Ctrl-C sent every finished epoch

    # A SIGKILL between the checkpoint and the metrics' upload loses the last epoch's metrics: the
    # resume sends them from the checkpoint's history.
    with sqlite3.connect(tmp_path / "runs.db") as db:
        db.execute("DELETE FROM metrics WHERE run_uuid = ? AND step = ?", (run_id, done[-1]))

    # Resume from the uploaded checkpoint (the local one removed) with two more epochs.
    for f in (tmp_path / "checkpoints").rglob("*.pt"):
        f.unlink()
    end = len(done) + 2
    code = subprocess.run([sys.executable, "-m", "cifar_mlflow.train", "--resume", run_id, "--epochs", str(end),
                           "--tracking-uri", uri, "--no-progress"], cwd=tmp_path, env=run_env(),
                          capture_output=True, text=True, timeout=300)
    assert code.returncode == 0, code.stderr[-3000:]
    assert f"epochs {done[-1]} were in the checkpoint but not in the run; logged them now" in code.stderr
    (run,) = runs(uri)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    for key in ("val_acc", "train_loss", "lr"):
        steps = sorted(m.step for m in MlflowClient().get_metric_history(run_id, key))
        assert steps == list(range(1, end + 1)), key  # each epoch once
    assert "test_acc" in run.data.metrics


def test_embedded_default_store_in_the_working_directory(imagefolder, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    assert main(quick_args(imagefolder, "--epochs", "1", "--log-model", "false")) == 0
    (run,) = runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FINISHED" and run.data.params["epochs"] == "1"
    assert (tmp_path / "mlruns").is_dir()  # artifacts beside it, where `mlflow ui` finds them


@pytest.mark.faults
def test_sigterm_marks_the_run_killed(imagefolder, tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "cifar_mlflow.train",
                             *quick_args(imagefolder, "--tracking-uri", uri, "--epochs", "200", "--arch", "lenet")],
                            cwd=tmp_path, env=run_env(), stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.startswith("epoch 1/200"):
            break
    proc.send_signal(signal.SIGTERM)  # docker stop, kill, a scheduler's preemption
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest[-3000:]
    (run,) = runs(uri)
    assert run.info.status == "KILLED"
    assert [a.path for a in MlflowClient().list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/last.pt"]


@pytest.mark.faults
def test_sigkilled_run_is_marked_stale_and_resumed_from_the_printed_command(imagefolder, tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    env = run_env(CIFAR_MLFLOW_HEARTBEAT_SECONDS="1")
    proc = subprocess.Popen([sys.executable, "-m", "cifar_mlflow.train",
                             *quick_args(imagefolder, "--tracking-uri", uri, "--epochs", "200", "--arch", "lenet")],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("epoch 2/200"):  # the first epoch's checkpoint is on disk
            break
    started = next(line for line in lines if line.startswith("run ") and " started at " in line)
    command = started.split("continue it with: ")[1].split()
    assert command[:3] == ["python", "-m", "cifar_mlflow.train"] and command[3] == "--resume"
    run_id = command[4]

    refused = subprocess.run([sys.executable, *command[1:], "--tracking-uri", uri], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "still being trained by another process" in refused.stderr

    proc.kill()  # SIGKILL: no handler runs, the run is left RUNNING
    proc.wait(timeout=60)
    assert MlflowClient(uri).get_run(run_id).info.status == "RUNNING"
    import time

    time.sleep(4)  # three missed heartbeats
    other = subprocess.run([sys.executable, "-m", "cifar_mlflow.train",
                            *quick_args(imagefolder, "--tracking-uri", uri, "--epochs", "1", "--arch", "lenet",
                                        "--log-model", "false")], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert other.returncode == 0, other.stderr[-3000:]
    assert f"run {run_id} had stopped sending heartbeats" in other.stderr  # the next run there noticed
    stale = MlflowClient(uri).get_run(run_id)
    assert stale.info.status == "KILLED" and "no heartbeat since" in stale.data.tags["cifar_mlflow.stale"]

    resumed = subprocess.run([sys.executable, *command[1:], "--tracking-uri", uri], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, "val_acc"))
    assert set(steps) == set(range(1, 201)), resumed.stderr[-3000:]  # every epoch: before the kill and after the resume


def test_the_closing_hint_is_a_command_that_works_for_the_store() -> None:
    from cifar_mlflow.train.cli import ui_command

    assert ui_command("sqlite:///mlflow.db") == "mlflow ui --backend-store-uri sqlite:///mlflow.db"
    assert ui_command("http://tracking:5000") == "open http://tracking:5000 in a browser"  # `mlflow ui` cannot open it


def test_the_command_resolves_its_config_once(imagefolder, tmp_path, monkeypatch) -> None:
    """The options are resolved once (recipe, then the architecture's recommendations), where the command
    checks them before loading MLflow; `prepare` takes that config as it is, the tracking URI set in it."""
    import cifar_mlflow.config as config_module
    from cifar_mlflow.train.cli import _prepare, build_parser

    resolutions = []
    real = config_module.validate_config
    monkeypatch.setattr(config_module, "validate_config", lambda c: (resolutions.append(c), real(c))[1])
    args = build_parser().parse_args(quick_args(imagefolder, "--tracking-uri", f"sqlite:///{tmp_path}/m.db"))
    prepared, uri, state = _prepare(args, tmp_path)
    assert len(resolutions) == 1
    assert prepared.config.tracking_uri == uri and prepared.config.batch_size == 16
    assert prepared.config.lr == resolutions[0].lr  # the recommendations were filled in, that once


def test_print_config_shows_the_resolved_options_and_creates_nothing(tmp_path) -> None:
    """What a run would train with: the recipe's and the architecture's settings filled in, the options given
    winning, a password in the tracking URI masked; no data read, no store or run created."""
    import yaml

    proc = subprocess.run([sys.executable, "-m", "cifar_mlflow.train", "--recipe", "fast", "--lr", "0.5",
                           "--tracking-uri", "http://alice:s3cret@127.0.0.1:9/", "--print-config"],
                          capture_output=True, text=True, cwd=tmp_path, env=run_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert (shown["arch"], shown["optimizer"], shown["epochs"], shown["batch_size"]) == ("airbench", "muon", 8, 1024)
    assert shown["lr"] == 0.5 and shown["muon_lr"] == 0.24 and shown["tta"] == "flip_translate"
    assert "s3cret" not in proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []
    bad = subprocess.run([sys.executable, "-m", "cifar_mlflow.train", "--lr", "-1", "--print-config"],
                         capture_output=True, text=True, cwd=tmp_path, env=run_env(), timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip() == "error: lr must be a positive number, got -1.0"
