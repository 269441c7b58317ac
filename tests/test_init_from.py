"""Starting from trained weights (`--init-from`) and timm models (`--arch timm:NAME`): a CIFAR-10 run's model
fine-tuned on CIFAR-100 (both in torchvision's real file formats, generated here) with its head replaced, a
registered model by alias, weights files of torchvision's and timm's, and what the run records about it."""

from __future__ import annotations

import pickle
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch
import torchvision
from mlflow.tracking import MlflowClient

from cifar_mlflow import TrainConfig, prepare
from cifar_mlflow.errors import ConfigError
from cifar_mlflow.models import get_model
from cifar_mlflow.tracking.run_inputs import read_init_weights
from cifar_mlflow.train import main
from tests.conftest import run_env, write_cifar10
from tests.test_data import point_md5s_at_generated_files

TINY = ["--arch", "cnn_small", "--epochs", "1", "--batch-size", "32", "--no-progress", "--device", "cpu"]


def write_cifar100(root, n_train: int = 400, n_test: int = 100):
    """cifar-100-python/ as the real download lays it out: 100 fine classes, each in every split."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({"data": data, "fine_labels": (np.arange(n) % 100).tolist()}))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"class{i}" for i in range(100)]}))
    return folder


@pytest.fixture
def cifar_10_and_100(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "c10")
    point_md5s_at_generated_files(monkeypatch, torchvision.datasets.CIFAR10, tmp_path / "c10" / "cifar-10-batches-py")
    folder = write_cifar100(tmp_path / "c100")
    point_md5s_at_generated_files(monkeypatch, torchvision.datasets.CIFAR100, folder)
    return tmp_path / "c10", tmp_path / "c100"


def test_a_cifar10_run_fine_tuned_on_cifar100_keeps_its_body_and_gets_a_new_head(cifar_10_and_100, tmp_path,
                                                                                 monkeypatch):
    c10, c100 = cifar_10_and_100
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main([*TINY, "--dataset", "cifar10", "--data-dir", str(c10), "--tracking-uri", uri,
                 "--register-model", "cifar10-cnn"]) == 0
    client = MlflowClient(uri)
    (source,) = client.search_runs([client.get_experiment_by_name("cifar10").experiment_id])
    trained = read_init_weights(f"runs:/{source.info.run_id}", uri)

    # What the fine-tuning run starts from: every tensor of the CIFAR-10 model but the 10-class head.
    prepared = prepare(TrainConfig(**dict(zip(["arch", "epochs", "batch_size"], ["cnn_small", 1, 32])),
                                   dataset="cifar100", data_dir=str(c100), device="cpu", progress=False,
                                   init_from=f"runs:/{source.info.run_id}"), init_weights=trained)
    report = prepared.init_report
    head = [name for name, p in prepared.model.state_dict().items() if p.shape[:1] == (100,)]
    assert sorted(report.replaced) == sorted(head) and len(head) == 2  # the new head: weight and bias
    assert len(report.loaded) == report.total - 2 and not report.missing
    start = prepared.model.state_dict()
    body = [name for name in start if name not in head and start[name].is_floating_point()]
    assert body and all(torch.equal(start[n], trained[f"model.model.{n}"].to(start[n].dtype))
                        for n in body if f"model.model.{n}" in trained)  # the logged model: with its TTA wrapper

    # The command: trains, and records where it started from as a param and as tags.
    for given in (f"runs:/{source.info.run_id}", "models:/cifar10-cnn@candidate", "models:/cifar10-cnn/1"):
        assert main([*TINY, "--dataset", "cifar100", "--data-dir", str(c100), "--tracking-uri", uri,
                     "--init-from", given, "--run-name", f"from {given}"]) == 0
        (run,) = client.search_runs([client.get_experiment_by_name("cifar100").experiment_id],
                                    filter_string=f"attributes.run_name = 'from {given}'")
        assert run.info.status == "FINISHED" and run.data.params["init_from"] == given
        assert run.data.tags["init_from"] == given
        assert run.data.tags["init_from_loaded"] == f"{report.total - 2} of {report.total}"
        assert sorted(run.data.tags["init_from_replaced"].split(", ")) == sorted(head)


def test_a_torchvision_weights_file_starts_a_model_with_another_class_count(imagefolder, tmp_path):
    imagenet = torchvision.models.resnet18(num_classes=1000)
    torch.save({"state_dict": imagenet.state_dict()}, tmp_path / "resnet18.pth")  # as a training script saves it
    prepared = prepare(TrainConfig(arch="tv:resnet18", dataset="imagefolder", data_dir=str(imagefolder),
                                   device="cpu", progress=False, init_from=str(tmp_path / "resnet18.pth")))
    assert sorted(prepared.init_report.replaced) == ["fc.bias", "fc.weight"]
    assert torch.equal(prepared.model.state_dict()["layer1.0.conv1.weight"].cpu(), imagenet.layer1[0].conv1.weight)
    assert prepared.model.fc.out_features == 3


def test_timm_models_train_and_start_from_timm_weights(imagefolder, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    model = get_model("timm:resnet10t", num_classes=3, in_channels=1)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 3)
    donor = get_model("timm:resnet10t", num_classes=1000)
    save_file(donor.state_dict(), str(tmp_path / "resnet10t.safetensors"))  # as the Hugging Face hub ships them
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["--arch", "timm:resnet10t", "--epochs", "1", "--batch-size", "16", "--no-progress",
                 "--device", "cpu", "--dataset", "imagefolder", "--data-dir", str(imagefolder), "--tracking-uri", uri,
                 "--init-from", str(tmp_path / "resnet10t.safetensors"), "--no-log-model"]) == 0
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FINISHED" and run.data.params["arch"] == "timm:resnet10t"
    assert run.data.tags["init_from_replaced"] == "fc.weight, fc.bias"  # the 1000-class head, replaced


@pytest.mark.parametrize(("arch", "init_from", "message"), [
    ("cnn_small", "no/such/weights.pt", "--init-from no/such/weights.pt: no such file"),
    ("timm:resnet_nope", None, "unknown timm model timm:resnet_nope"),
    ("lenet", "WEIGHTS", "only 0 of the model's 10 tensors are in it by name and shape"),
])
def test_bad_weights_or_names_are_one_line_and_create_nothing(arch, init_from, message, imagefolder, tmp_path):
    if init_from == "WEIGHTS":  # a ResNet's weights for LeNet
        torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pt")
        init_from = str(tmp_path / "resnet18.pt")
    work = tmp_path / "work"
    work.mkdir()
    argv = [sys.executable, "-m", "cifar_mlflow.train", "--arch", arch, "--dataset", "imagefolder",
            "--data-dir", str(imagefolder), "--device", "cpu", *(["--init-from", init_from] if init_from else [])]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=work, env=run_env(), timeout=300)
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert list(work.iterdir()) == []


def test_without_timm_installed_the_error_names_the_extra(tmp_path):
    probe = ("import sys; sys.modules['timm'] = None\nfrom cifar_mlflow.models import get_model\n"
             "from cifar_mlflow.errors import ConfigError\ntry:\n    get_model('timm:resnet18')\n"
             "except ConfigError as exc:\n    print(exc)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=run_env(), timeout=120)
    assert proc.stdout.strip() == ("--arch timm:resnet18 needs the timm package, an optional extra: "
                                   "pip install 'cifar_mlflow[timm]'")


def test_a_model_source_that_is_not_there_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="--init-from runs:/0123456789abcdef: cannot load a PyTorch model"):
        read_init_weights("runs:/0123456789abcdef", f"sqlite:///{tmp_path / 'mlflow.db'}")
