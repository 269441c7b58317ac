"""torchrun with 2 CPU processes (gloo): one MLflow run whose metrics cover both ranks' shards."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import torch
from mlflow.tracking import MlflowClient

from cifar_mlflow.data import load_image_data, split_data
from tests.conftest import run_env


def test_two_process_training_logs_one_run_with_all_reduced_metrics(imagefolder, tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "cifar_mlflow.train", "--dataset", "imagefolder",
         "--data-dir", str(imagefolder), "--arch", "cnn_small", "--epochs", "1", "--batch-size", "16", "--no-progress",
         "--device", "cpu", "--tracking-uri", uri, "--checkpoint-dir", str(tmp_path / "ckpt")],
        cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.count("epoch 1/1 ") == 1  # only rank 0 reports

    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1  # one run, not one per process
    (run,) = runs
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
    # 65 training images: each rank trains 2 batches of 16 from its half; the sum over ranks is logged.
    assert [m.value for m in client.get_metric_history(run.info.run_id, "epoch_images")] == [64.0]

    # The all-reduced val_acc equals the logged model's accuracy on the whole validation split.
    splits = split_data(load_image_data("imagefolder", str(imagefolder)), val_fraction=0.1, seed=0)
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    with torch.no_grad():
        predictions = model(splits.val.images.permute(0, 2, 3, 1)).argmax(1)
    accuracy = (predictions == splits.val.labels).float().mean().item()
    assert run.data.metrics["val_acc"] == accuracy == run.data.metrics["best_val_acc"]
    assert not list((tmp_path / "ckpt").rglob("*.pt"))  # written by rank 0 only, removed when finished


def test_fast_recipe_under_torchrun_freezes_the_whitening_bias_mid_run(imagefolder, tmp_path) -> None:
    """On one process the frozen whitening bias leaves backward (requires_grad off); under torchrun the set of
    parameters with gradients must stay fixed, or the second epoch dies in DistributedDataParallel. The recipe's
    later epochs on the hardest images run there too (from epoch 2 here), on fewer images."""
    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "cifar_mlflow.train", "--recipe", "fast",
         "--dataset", "imagefolder", "--data-dir", str(imagefolder), "--epochs", "2", "--batch-size", "8",
         "--hard-from-epoch", "2",
         "--model-args", '{"widths": [8, 8, 8], "whiten_bias_epochs": 1}', "--tta", "none", "--log-model", "false",
         "--no-progress", "--device", "cpu", "--tracking-uri", uri],
        cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    images = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "epoch_images"), key=lambda m: m.step)]
    train_size = int(run.data.params["train_size"])  # 2 processes, each its half, in whole batches of 8
    assert images == [2 * (train_size // 2 // 8 * 8), 2 * (round(0.68 * train_size) // 2 // 8 * 8)]
