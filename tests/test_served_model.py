"""The logged model as users call it, against a real `mlflow server`: a folder of PNGs read with PIL
goes to `mlflow.pyfunc.load_model` and to `mlflow models serve`, and class names come back."""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from cifar_mlflow import train
from cifar_mlflow.tracking.local_server import free_port
from tests.conftest import CLASSES, mlflow_bin, run_env, running_server, write_mnist

EXPERIMENT = "served-model-test"


def png_folder(imagefolder: Path) -> tuple[np.ndarray, list[str]]:
    """The test split's PNGs as PIL reads them, (N, H, W, 3) uint8, and each one's class folder."""
    paths = sorted((imagefolder / "test").glob("*/*.png"))
    return np.stack([np.asarray(Image.open(p)) for p in paths]), [p.parent.name for p in paths]


@pytest.fixture(scope="module")
def served_runs(mlflow_server, imagefolder, tmp_path_factory) -> dict[str, str]:
    """Two fp32 runs with their models: arch -> run id."""
    workdir = tmp_path_factory.mktemp("served")
    runs = {}
    for arch, epochs in (("cnn_small", "3"), ("lenet", "1")):
        code = train.main(["--dataset", "imagefolder", "--data-dir", str(imagefolder), "--arch", arch, "--epochs",
                           epochs, "--batch-size", "16", "--precision", "fp32", "--no-progress", "--experiment-name",
                           EXPERIMENT, "--tracking-uri", mlflow_server, "--checkpoint-dir", str(workdir),
                           "--no-system-metrics"])
        assert code == 0
        mlflow.set_tracking_uri(mlflow_server)
        experiment = MlflowClient().get_experiment_by_name(EXPERIMENT)
        (run,) = MlflowClient().search_runs([experiment.experiment_id], filter_string=f"params.arch = '{arch}'")
        runs[arch] = run.info.run_id
    return runs


def test_pyfunc_names_the_class_of_each_png_as_the_run_measured(served_runs, imagefolder) -> None:
    run_id = served_runs["cnn_small"]
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    images, truth = png_folder(imagefolder)
    predictions = model.predict(images)
    assert list(predictions.columns) == ["label", "probability", *(f"p_{c}" for c in CLASSES)]
    assert set(predictions["label"]) <= set(CLASSES)
    probabilities = predictions[[f"p_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (predictions["label"] == np.asarray(CLASSES)[probabilities.argmax(axis=1)]).all()
    np.testing.assert_allclose(predictions["probability"], probabilities.max(axis=1))
    # The same images through the training pipeline gave the run's test accuracy: so do they here.
    accuracy = float(np.mean(predictions["label"].to_numpy() == np.asarray(truth)))
    assert accuracy == pytest.approx(MlflowClient().get_run(run_id).data.metrics["test_acc"])


def test_the_model_describes_itself(served_runs) -> None:
    info = mlflow.models.get_model_info(f"runs:/{served_runs['cnn_small']}/model")
    assert info.metadata["classes"] == CLASSES
    assert info.metadata["image_size"] == [32, 32] and info.metadata["channels"] == 3
    assert len(info.metadata["mean"]) == 3 and len(info.metadata["std"]) == 3
    (spec,) = info.signature.inputs.inputs
    assert spec.type == np.dtype("uint8") and spec.shape == (-1, 32, 32, 3)
    assert [c.name for c in info.signature.outputs.inputs][:2] == ["label", "probability"]
    assert {"pytorch", "python_function"} <= set(info.flavors)


def test_pytorch_flavour_takes_the_same_images(served_runs, imagefolder) -> None:
    run_id = served_runs["cnn_small"]
    network = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    images, _ = png_folder(imagefolder)
    logits = network(torch.from_numpy(images))
    labels = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(images)["label"]
    assert list(np.asarray(CLASSES)[logits.argmax(1).numpy()]) == list(labels)


def test_input_that_is_not_pixels_is_refused(served_runs, imagefolder) -> None:
    model = mlflow.pyfunc.load_model(f"runs:/{served_runs['cnn_small']}/model")
    images, _ = png_folder(imagefolder)
    with pytest.raises(mlflow.exceptions.MlflowException, match="dtype of input float32 does not match expected"):
        model.predict(images.astype(np.float32) / 255)  # the schema: uint8 only
    with pytest.raises(mlflow.exceptions.MlflowException, match="look scaled to \\[0, 1\\]"):
        model.predict((images > 127).astype(np.uint8))  # [0, 1] images cast to uint8
    with pytest.raises(mlflow.exceptions.MlflowException, match="Shape of input"):
        model.predict(images[:, :16])


def test_mlflow_models_serve_answers_class_names_for_pngs(served_runs, imagefolder, tmp_path) -> None:
    run_id = served_runs["cnn_small"]
    images, _ = png_folder(imagefolder)
    expected = list(mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(images)["label"])
    port = free_port()
    command = [mlflow_bin(), "models", "serve", "-m", f"runs:/{run_id}/model", "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port)]
    env = run_env(MLFLOW_TRACKING_URI=mlflow.get_tracking_uri())
    with running_server(command, f"http://127.0.0.1:{port}", tmp_path / "serve.log", env) as uri:

        def invoke(inputs) -> tuple[int, dict]:
            request = urllib.request.Request(f"{uri}/invocations", data=json.dumps({"inputs": inputs}).encode(),
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    return response.status, json.load(response)
            except urllib.error.HTTPError as exc:
                return exc.code, json.load(exc)

        status, body = invoke(images.tolist())
        assert status == 200
        assert [row["label"] for row in body["predictions"]] == expected
        assert set(body["predictions"][0]) == {"label", "probability", *(f"p_{c}" for c in CLASSES)}
        status, body = invoke((images / 255.0).tolist())  # [0, 1] floats: refused, not answered with garbage
        assert status == 400 and "look scaled to [0, 1]" in body["message"]
        status, body = invoke((images.astype(np.int64) + 100).tolist())  # beyond 255
        assert status == 400 and "out of bounds for uint8" in body["message"]


def test_logged_models_carry_the_test_metrics_and_rank(served_runs, mlflow_server) -> None:
    mlflow.set_tracking_uri(mlflow_server)
    experiment = MlflowClient().get_experiment_by_name(EXPERIMENT)
    models = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list",
                                         order_by=[{"field_name": "metrics.test_acc", "ascending": False}])
    assert {m.source_run_id for m in models} == set(served_runs.values())
    ranked = [{m.key: m.value for m in model.metrics}["test_acc"] for model in models]
    assert ranked == sorted(ranked, reverse=True)
    for model in models:
        assert ranked[models.index(model)] == MlflowClient().get_run(model.source_run_id).data.metrics["test_acc"]


def test_one_channel_model_takes_grayscale_images_as_pil_reads_them(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_mnist(tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert train.main(["--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--arch", "lenet", "--epochs",
                       "1", "--no-progress", "--tracking-uri", uri, "--no-system-metrics"]) == 0
    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    (spec,) = model.metadata.signature.inputs.inputs
    assert spec.shape == (-1, 28, 28)
    digits = np.random.default_rng(0).integers(0, 256, (2, 28, 28)).astype(np.uint8)
    Image.fromarray(digits[0]).save(tmp_path / "digit.png")
    as_read = np.asarray(Image.open(tmp_path / "digit.png"))[None]
    assert as_read.shape == (1, 28, 28)
    classes = model.metadata.metadata["classes"]
    assert len(classes) == 10 and model.predict(as_read)["label"][0] in classes


def test_the_ui_shows_each_logged_model_with_its_test_metrics(served_runs, mlflow_server, tmp_path) -> None:
    """In a real Chromium: the experiment's Models page lists both runs' models by their runs, and a
    model's page shows its test accuracy. `CIFAR_MLFLOW_SCREENSHOTS=docs/images` keeps the picture."""
    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, wait_for_texts

    if not shutil.which(CHROMIUM):
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    mlflow.set_tracking_uri(mlflow_server)  # another test may have pointed the client elsewhere
    client = MlflowClient(mlflow_server)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (best, *_) = mlflow.search_logged_models(experiment_ids=[experiment_id], output_format="list",
                                             order_by=[{"field_name": "metrics.test_acc", "ascending": False}])
    run_names = [client.get_run(run_id).info.run_name for run_id in served_runs.values()]
    shots = Path(os.environ.get("CIFAR_MLFLOW_SCREENSHOTS") or tmp_path)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto(f"{mlflow_server}/#/experiments/{experiment_id}/models/{best.model_id}")
            page.wait_for_selector("text=test_acc", timeout=90_000)
            page.get_by_text("Model training", exact=True).click()  # the UI opens in its GenAI mode
            if page.locator("button[aria-label='Close']").count():
                page.locator("button[aria-label='Close']").first.click()  # the assistant panel
            page.get_by_text("Models", exact=True).first.click()
            page.wait_for_selector("text=Source run", timeout=60_000)
            wait_for_texts(page, run_names)  # the table shows a run's id until it has fetched the run's name
            listing = page.inner_text("body")
            page.goto(f"{mlflow_server}/#/experiments/{experiment_id}/models/{best.model_id}")
            page.wait_for_selector("text=test_acc", timeout=90_000)
            detail = page.inner_text("body")
            page.screenshot(path=str(shots / "mlflow-logged-model.png"))
        finally:
            browser.close()
    for name in run_names:
        assert name in listing
    assert listing.count("Ready") >= 2
    test_acc = {m.key: m.value for m in best.metrics}["test_acc"]
    # metric, the data set it was measured on (the run's test split), source run, value
    shown = re.search(r"\ntest_acc\s+(\S+) \(#(\w+)\)\s+\S+\s+(\S+)\n", detail)
    assert shown, detail[:2000]
    test_split = next(d.dataset for d in client.get_run(best.source_run_id).inputs.dataset_inputs
                      if d.dataset.name.endswith("-test"))
    assert shown.group(1, 2) == (test_split.name, test_split.digest)
    assert float(shown.group(3)) == pytest.approx(test_acc)
    assert (shots / "mlflow-logged-model.png").stat().st_size > 20_000
