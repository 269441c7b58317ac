"""A 2-epoch run against a real `mlflow server`, read back through MlflowClient."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.conftest import run_env

EPOCH_KEYS = ["train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "train_images_per_second"]
ARTIFACTS = ["config.yaml", "plots/confusion_matrix.png", "plots/learning_curves.png", "plots/misclassified.png",
             "plots/per_class_accuracy.png", "reports/classification_report.json",
             "reports/classification_report.txt", "reports/confusion_matrix.csv"]


def all_artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += all_artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


@pytest.fixture(scope="module")
def server_run(mlflow_server, imagefolder, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("server-run")
    proc = subprocess.run(
        [sys.executable, "-m", "cifar_mlflow.train", "--dataset", "imagefolder", "--data-dir", str(imagefolder),
         "--arch", "cnn_small", "--epochs", "2", "--batch-size", "16", "--no-progress", "--experiment-name",
         "server-test", "--register-model", "server-test-model"],
        cwd=workdir, capture_output=True, text=True, timeout=600,
        # system metrics every half second (MLflow's default is 10 s: longer than this whole run)
        env=run_env(MLFLOW_TRACKING_URI=mlflow_server, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="0.5",
                    MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    mlflow.set_tracking_uri(mlflow_server)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("server-test")
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def test_run_is_finished_with_readable_name_params_and_tags(server_run) -> None:
    _, run = server_run
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "cnn_small-adamw-lr0.0142-e2-s0"
    params = run.data.params
    assert params["arch"] == "cnn_small" and params["epochs"] == "2" and params["optimizer"] == "adamw"
    assert int(params["num_parameters"]) > 0 and params["train_size"] == "65" and params["val_size"] == "7"
    assert len(params["data_mean"].split(",")) == 3
    tags = run.data.tags
    assert {"arch", "dataset", "device", "torch_version", "torchvision_version", "data_digest"} <= set(tags)
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["imagefolder-train", "imagefolder-val",
                                                                   "imagefolder-test"]


def test_one_metric_point_per_epoch_and_final_metrics(server_run) -> None:
    client, run = server_run
    for key in EPOCH_KEYS:
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2], key
    final = run.data.metrics
    for key in ["test_loss", "test_acc", "test_precision_macro", "test_recall_macro", "test_f1_macro",
                "best_val_acc", "best_epoch", "test_acc_cat", "test_acc_dog", "test_acc_ship"]:
        assert key in final, key
    assert 0.0 <= final["test_acc"] <= 1.0


def test_the_registered_model_has_its_alias_and_its_test_metrics_name_the_test_split(server_run) -> None:
    """MLflow 3's model page: the logged model's test metrics, each with the data set it was measured on; the
    registry's `models:/NAME@candidate` loads the run's model. Through a real server."""
    client, run = server_run
    version = client.get_model_version_by_alias("server-test-model", "candidate")
    assert version.run_id == run.info.run_id
    (model,) = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert model.source_run_id == run.info.run_id
    linked = {m.key: m for m in model.metrics}
    assert {"test_acc", "test_loss", "test_f1_macro"} <= set(linked)
    test_input = next(d.dataset for d in run.inputs.dataset_inputs if d.dataset.name == "imagefolder-test")
    for metric in (m for key, m in linked.items() if key.startswith("test_")):
        assert (metric.dataset_name, metric.dataset_digest) == ("imagefolder-test", test_input.digest), metric.key
        assert metric.value == run.data.metrics[metric.key]
    assert linked["best_epoch"].dataset_name is None  # not a measurement on a data set


def test_every_artifact_is_there_and_images_decode(server_run, tmp_path) -> None:
    client, run = server_run
    logged = all_artifacts(client, run.info.run_id)
    assert sorted(p for p in logged if not p.startswith("images/")) == sorted(ARTIFACTS)  # images/: per epoch
    for path in ARTIFACTS:
        if path.endswith(".png"):
            local = client.download_artifacts(run.info.run_id, path, str(tmp_path))
            with Image.open(local) as image:
                image.load()
                assert image.width > 300 and image.height > 100  # a real plot, not an empty image
    cm = client.download_artifacts(run.info.run_id, "reports/confusion_matrix.csv", str(tmp_path))
    rows = open(cm).read().strip().splitlines()
    assert rows[0] == "true\\predicted,cat,dog,ship"
    assert sum(int(v) for row in rows[1:] for v in row.split(",")[1:]) == 27  # every test image once


def test_logged_model_loads_and_predicts(server_run) -> None:
    _, run = server_run
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    import torch

    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    assert model(torch.from_numpy(images)).shape == (5, 3)  # uint8 images as PIL reads them -> logits
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert set(pyfunc.predict(images)["label"]) <= {"cat", "dog", "ship"}


def test_model_is_registered(server_run) -> None:
    client, run = server_run
    (version,) = client.search_model_versions("name='server-test-model'")
    assert version.run_id == run.info.run_id


def test_queued_epoch_metrics_are_all_stored_when_the_run_ends(mlflow_server) -> None:
    from cifar_mlflow.tracking import MlflowLogger

    logger = MlflowLogger(mlflow_server, "async-test", "async")
    logger.start(params={"a": 1}, tags={}, datasets=[])
    for epoch in range(1, 41):
        logger.log_epoch(epoch, {"epoch": epoch, "train_loss": 1.0 / epoch, "val_acc": epoch / 40})
    logger.end("FINISHED")
    client = MlflowClient(mlflow_server)
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    history = client.get_metric_history(logger.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(1, 41))
    assert {m.step: m.value for m in history}[8] == pytest.approx(1 / 8)


def test_a_batch_the_background_logger_lost_is_sent_again_and_stored_once(mlflow_server) -> None:
    """Epoch 3's batch never reached the server; epoch 4's was stored but its answer was lost (a broken
    connection, a timeout): both are sent again at the end, and each epoch is in the run once."""
    from mlflow.entities import Metric

    from cifar_mlflow.tracking import MlflowLogger

    class LostOperation:  # what MLflow's async queue returns when storing failed
        def wait(self) -> None:
            raise mlflow.exceptions.MlflowException("API request to ... failed: Connection broken: IncompleteRead")

    logger = MlflowLogger(mlflow_server, "async-test", "retry")
    logger.start(params={}, tags={}, datasets=[])
    logger._pending.append(([Metric("val_acc", 0.5, int(time.time() * 1000) - 5000, 3)], LostOperation()))
    logger.log_epoch(4, {"epoch": 4, "val_acc": 0.6})
    logger._pending[-1][1].wait()  # stored by the server...
    logger._pending[-1] = (logger._pending[-1][0], LostOperation())  # ...but the client never heard so
    time.sleep(0.01)  # a resend built afresh would carry a later timestamp
    logger.end("FINISHED")
    history = MlflowClient(mlflow_server).get_metric_history(logger.run_id, "val_acc")
    assert sorted((m.step, m.value) for m in history) == [(3, 0.5), (4, 0.6)]


class CuttingProxy:
    """An HTTP proxy in front of the real server that carries out every request but cuts the answer to the
    first `cuts[path]` requests to a path off after its headers and a byte, as a server under load did
    ("Connection broken: IncompleteRead"). `seen` counts the requests to each of those paths."""

    def __init__(self, upstream: str, cuts: dict[str, int]) -> None:
        import http.client
        import http.server
        from urllib.parse import urlparse

        target = urlparse(upstream)
        proxy = self
        self.seen = dict.fromkeys(cuts, 0)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                content = answer.read()
                path = next((p for p in cuts if self.path.endswith(p)), None)
                cut = path is not None and proxy.seen[path] < cuts[path]
                if path is not None:
                    proxy.seen[path] += 1
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content[:1] if cut else content)
                if cut:
                    self.close_connection = True

            do_GET = do_POST = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_an_answer_cut_off_is_sent_again_when_that_is_safe(mlflow_server) -> None:
    """The server stored an epoch's metrics but its answer broke off: the client sends the same batch again
    (stored once), where MLflow alone raised "Connection broken: IncompleteRead" and the run lost the epoch."""
    from mlflow.entities import Metric

    from cifar_mlflow.tracking.faults import install_request_hooks

    install_request_hooks()
    proxy = CuttingProxy(mlflow_server, cuts={"/runs/log-batch": 2, "/runs/create": 1})
    client = MlflowClient(proxy.uri)
    experiment_id = client.create_experiment(f"cut-off-{uuid.uuid4().hex[:8]}")
    run_id = MlflowClient(mlflow_server).create_run(experiment_id).info.run_id
    client.log_batch(run_id, metrics=[Metric("val_acc", 0.75, int(time.time() * 1000), 1)])
    assert proxy.seen["/runs/log-batch"] == 3  # cut off twice, then answered
    history = MlflowClient(mlflow_server).get_metric_history(run_id, "val_acc")
    assert [(m.step, m.value) for m in history] == [(1, 0.75)]
    with pytest.raises(mlflow.exceptions.MlflowException, match="IncompleteRead|Connection broken"):
        client.create_run(experiment_id)  # twice would make two runs: not sent again
    assert proxy.seen["/runs/create"] == 1
    proxy.server.shutdown()


def test_a_run_lands_in_its_experiment_when_another_process_wins_the_create(mlflow_server, monkeypatch) -> None:
    """The lost race, made certain: the experiment is created by "another process" between our look-up
    and our create. (`mlflow.set_experiment` then left the next run in "Default".)"""
    from cifar_mlflow.tracking import MlflowLogger

    other = MlflowClient(mlflow_server)
    real_get = MlflowClient.get_experiment_by_name
    calls = []

    def get_losing_the_race(self, name):
        calls.append(name)
        if len(calls) == 1:  # not there yet when we look; there when we try to create it
            other.create_experiment(name)
            return None
        return real_get(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", get_losing_the_race)
    logger = MlflowLogger(mlflow_server, experiment_name="raced", run_name="raced-run")
    logger.start(params={"lr": 0.1}, tags={}, datasets=[])
    logger.end("FINISHED")
    monkeypatch.undo()

    assert calls == ["raced", "raced"]  # looked up, lost the create, looked up again
    run = other.get_run(logger.run_id)
    assert run.info.experiment_id == other.get_experiment_by_name("raced").experiment_id
    assert run.info.run_name == "raced-run"


def test_the_run_logger_opens_its_run_on_first_use_and_records_params_once(mlflow_server) -> None:
    from cifar_mlflow.tracking import MlflowLogger

    client = MlflowClient(mlflow_server)
    opened = []
    logger = MlflowLogger(mlflow_server, "lazy", "lazy-run", params={"trial_number": 3}, on_start=opened.append)
    assert logger.run_id is None and client.get_experiment_by_name("lazy") is None  # nothing exists yet
    logger.log_epoch(1, {"val_acc": 0.5})  # the first use opens it
    assert opened == [logger.run_id] and client.get_run(logger.run_id).info.status == "RUNNING"
    logger.start(params={"lr": 0.1}, tags={"arch": "cnn"}, datasets=[])
    with pytest.raises(RuntimeError, match="recorded once"):
        logger.start(params={"lr": 0.2}, tags={}, datasets=[])
    logger.end("FINISHED")
    run = client.get_run(logger.run_id)
    assert run.data.params == {"lr": "0.1", "trial_number": "3"} and run.data.tags["arch"] == "cnn"
    assert [(m.step, m.value) for m in client.get_metric_history(logger.run_id, "val_acc")] == [(1, 0.5)]
    assert run.info.status == "FINISHED"


def test_each_split_is_an_input_with_its_own_digest_profile_and_schema(server_run) -> None:
    import json

    _, run = server_run
    inputs = {d.dataset.name: d.dataset for d in run.inputs.dataset_inputs}
    assert len({d.digest for d in inputs.values()}) == 3  # train, validation and test tell apart
    train = json.loads(inputs["imagefolder-train"].profile)
    assert train["images"] == 65 and sum(train["per_class"].values()) == 65
    assert set(train["per_class"]) == {"cat", "dog", "ship"}
    specs = {s["name"]: s["tensor-spec"] for s in json.loads(inputs["imagefolder-test"].schema)["mlflow_colspec"]}
    assert specs == {"image": {"dtype": "uint8", "shape": [-1, 3, 32, 32]}, "label": {"dtype": "int64", "shape": [-1]}}


def test_a_subset_of_the_data_has_another_digest(imagefolder) -> None:
    from cifar_mlflow.config import TrainConfig
    from cifar_mlflow.core.prepare import prepare
    from cifar_mlflow.train.run_contents import run_datasets

    base = TrainConfig(arch="lenet", dataset="imagefolder", data_dir=str(imagefolder), progress=False)
    full = {d["name"]: d["digest"] for d in run_datasets(prepare(base))}
    subset = {d["name"]: d["digest"] for d in run_datasets(prepare(dataclasses.replace(base, max_train_samples=30)))}
    assert full["imagefolder-train"] != subset["imagefolder-train"]
    assert full["imagefolder-test"] == subset["imagefolder-test"]  # the same test split: the same digest


def test_system_metrics_are_logged_and_tags_are_true_of_the_machine(server_run) -> None:
    _, run = server_run
    system = {k for k in run.data.metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system, system
    assert run.data.params["system_metrics"] == "True"
    assert "cuda_version" not in run.data.tags and "gpu_name" not in run.data.tags  # a CPU-only run


def test_system_metrics_can_be_turned_off(mlflow_server, imagefolder, tmp_path) -> None:
    from cifar_mlflow.train import main

    code = main(["--dataset", "imagefolder", "--data-dir", str(imagefolder), "--arch", "lenet", "--epochs", "1",
                 "--batch-size", "16", "--no-progress", "--log-model", "false", "--no-system-metrics",
                 "--experiment-name", "no-system-metrics", "--tracking-uri", mlflow_server,
                 "--checkpoint-dir", str(tmp_path)])
    assert code == 0
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("no-system-metrics").experiment_id])
    assert not [k for k in run.data.metrics if k.startswith("system/")]


@pytest.mark.parametrize("system_metrics", [True, False])
def test_gpu_utilisation_and_memory_are_logged_where_nvml_answers(mlflow_server, imagefolder, tmp_path,
                                                                  monkeypatch, system_metrics) -> None:
    """The GPU is the one thing faked here (this machine has none): NVML answers as for one GPU whose load
    changes. The product's part is seen: the run samples the GPU all through training (a history, not one
    value), through the nvidia-ml-py the package installs, and `--no-system-metrics` turns it off although
    NVML answers."""
    import itertools
    from types import SimpleNamespace

    import pynvml

    from cifar_mlflow.train import main

    load = itertools.cycle([20, 90])
    fake = {"nvmlInit": lambda: None, "nvmlDeviceGetCount": lambda: 1, "nvmlDeviceGetHandleByIndex": lambda i: i,
            "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(used=2e9, total=8e9),
            "nvmlDeviceGetUtilizationRates": lambda h: SimpleNamespace(gpu=next(load)),
            "nvmlDeviceGetPowerUsage": lambda h: 150_000, "nvmlDeviceGetEnforcedPowerLimit": lambda h: 300_000}
    for name, function in fake.items():
        monkeypatch.setattr(pynvml, name, function)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    experiment = f"gpu-system-metrics-{system_metrics}"
    code = main(["--dataset", "imagefolder", "--data-dir", str(imagefolder), "--arch", "lenet", "--epochs", "2",
                 "--batch-size", "16", "--no-progress", "--experiment-name", experiment,
                 "--tracking-uri", mlflow_server, "--checkpoint-dir", str(tmp_path),
                 *([] if system_metrics else ["--no-system-metrics"])])
    assert code == 0
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    gpu = sorted(k for k in run.data.metrics if k.startswith("system/gpu_0_"))
    if not system_metrics:
        assert gpu == []
        return
    assert {"system/gpu_0_utilization_percentage", "system/gpu_0_memory_usage_percentage",
            "system/gpu_0_power_usage_watts"} <= set(gpu)
    history = [m.value for m in client.get_metric_history(run.info.run_id, "system/gpu_0_utilization_percentage")]
    assert len(history) >= 2 and set(history) <= {20, 90, 55}  # sampled during training; 55: MLflow's mean of two
    assert run.data.metrics["system/gpu_0_memory_usage_percentage"] == 25  # 2 GB of 8, as NVML said


def test_the_confusion_matrix_of_every_epoch_is_an_image_with_its_step(server_run, tmp_path) -> None:
    from PIL import Image

    client, run = server_run
    images = [p for p in all_artifacts(client, run.info.run_id, "images") if p.endswith(".png")]
    steps = sorted(int(p.split("+step+")[1].split("+")[0]) for p in images
                   if p.startswith("images/confusion_matrix+step+"))
    assert steps == [1, 2]  # one per epoch: the UI's image slider
    first = client.download_artifacts(run.info.run_id, next(p for p in images if "+step+1+" in p), str(tmp_path))
    assert Image.open(first).size[1] == 3 * 22  # a row per class


def losing_the_insert(db: Path, write, other_insert: str, values: tuple, monkeypatch, method: str) -> int:
    """Run `write()` so that it loses an insert race in the server for certain: the database is locked, so
    the server looks for the row (readers go on) and then waits to insert it (SQLite's 5 s busy timeout);
    meanwhile "another client" inserts the same row (`other_insert` with `values`) and commits; the
    server's insert then fails on the table's unique key, as when a study's workers start together.
    Returns how many times `MlflowClient.<method>` was called."""
    calls = []
    real = getattr(MlflowClient, method)
    monkeypatch.setattr(MlflowClient, method, lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1])
    failures = []

    def run() -> None:
        try:
            write()
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(1.5)  # the server has looked for the row and now waits to insert it
    other.execute(other_insert, values)
    other.execute("COMMIT")
    thread.join(60)
    other.close()
    monkeypatch.setattr(MlflowClient, method, real)
    assert not failures, failures
    return len(calls)


def test_runs_logging_the_same_data_set_at_once_all_get_it(mlflow_server_and_root, monkeypatch) -> None:
    """Without the retry: `RestException: BAD_REQUEST: (sqlite3.IntegrityError) UNIQUE constraint failed:
    datasets.experiment_id, datasets.name, datasets.digest`, and the study's worker crashed."""
    from cifar_mlflow.tracking.run_inputs import log_datasets

    uri, root = mlflow_server_and_root
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("dataset-race")
    run_id = client.create_run(experiment_id).info.run_id
    split = {"name": "train", "digest": "d1g35t", "source": "/data/cifar10-jpg/train", "image_shape": (3, 32, 32),
             "profile": {"num_rows": 45000}, "context": "training"}
    calls = losing_the_insert(root / "mlflow.db", lambda: log_datasets(client, run_id, [split]),
                              "INSERT INTO datasets VALUES (?, ?, 'train', 'd1g35t', 'local', '{}', NULL, NULL)",
                              (uuid.uuid4().hex, int(experiment_id)), monkeypatch, "log_inputs")
    assert calls == 2  # lost the race once, then linked the other client's row
    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("train", "d1g35t")]
    rows = sqlite3.connect(root / "mlflow.db").execute(
        "SELECT count(*) FROM datasets WHERE experiment_id = ? AND name = 'train'", (int(experiment_id),)).fetchone()
    assert rows == (1,)


def test_two_workers_setting_the_champion_alias_at_once_both_succeed(mlflow_server_and_root, monkeypatch) -> None:
    from cifar_mlflow.tracking import set_model_alias

    uri, root = mlflow_server_and_root
    client = MlflowClient(uri)
    client.create_registered_model("raced-model")
    run_id = client.create_run(client.create_experiment("alias-race")).info.run_id
    for _ in range(2):
        client.create_model_version("raced-model", f"runs:/{run_id}/model", run_id=run_id)
    calls = losing_the_insert(root / "mlflow.db", lambda: set_model_alias(uri, "raced-model", 2, "champion"),
                              "INSERT INTO registered_model_aliases VALUES ('champion', 1, 'raced-model', 'default')",
                              (), monkeypatch, "set_registered_model_alias")
    assert calls == 2
    assert client.get_model_version_by_alias("raced-model", "champion").version == "2"  # ours, set after theirs


def test_a_write_refused_for_another_reason_is_not_retried(mlflow_server) -> None:
    from cifar_mlflow.tracking.store import tolerating_races

    calls = []

    def write() -> None:
        calls.append(1)
        MlflowClient(mlflow_server).get_run("0" * 32)  # no such run

    with pytest.raises(mlflow.exceptions.MlflowException):
        tolerating_races(write)
    assert len(calls) == 1
