"""What a run records about itself: params, tags and data inputs when it opens, the report
artifacts (plots, confusion matrix, classification report, config) and the model when it ends.

Pure of MLflow: everything goes through the `RunLogger` it is given.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torchvision

from cifar_mlflow import distributed, metrics, plots
from cifar_mlflow.config import config_params, config_yaml
from cifar_mlflow.core.run_logger import RunLogger
from cifar_mlflow.data.splits import DataSplits, split_profile
from cifar_mlflow.models.inference import ImageClassifier, with_tta

if TYPE_CHECKING:
    from cifar_mlflow.core.fit import TrainResult
    from cifar_mlflow.core.prepare import Prepared


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, if it is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_params(prepared: Prepared) -> dict[str, Any]:
    """The flattened config plus what the data and model turned out to be."""
    params = config_params(prepared.config)
    # What `auto` resolved to on this machine (the request stays in the config and the checkpoint).
    params.update(device=str(prepared.device), precision=prepared.precision)
    data = prepared.data
    params.update(num_parameters=prepared.num_parameters, train_size=len(data.train), val_size=len(data.val),
                  test_size=len(data.test), num_classes=data.num_classes,
                  image_shape="x".join(map(str, data.image_shape)),
                  data_mean=",".join(f"{v:.4f}" for v in data.mean), data_std=",".join(f"{v:.4f}" for v in data.std),
                  world_size=distributed.world_size())
    return params


def run_tags(prepared: Prepared) -> dict[str, str]:
    device = prepared.device
    tags = {"arch": prepared.config.arch, "dataset": prepared.config.dataset, "device": str(device),
            "precision": prepared.precision, "channels_last": str(prepared.channels_last).lower(),
            "torch_version": torch.__version__, "torchvision_version": torchvision.__version__,
            "data_digest": prepared.data.digest,
            "python_version": sys.version.split()[0]}
    if device.type == "cuda":  # tags true of the machine: no CUDA version on a CPU-only run
        tags["gpu_name"] = torch.cuda.get_device_name(device)
        tags["cuda_version"] = str(torch.version.cuda)
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
    report = prepared.init_report
    if report is not None:  # where the weights started from, and what of them was kept (the param: init_from)
        tags.update({"init_from": report.source, "init_from_loaded": f"{len(report.loaded)} of {report.total}",
                     "init_from_replaced": ", ".join(report.replaced) or "none"})
    return tags


def run_datasets(prepared: Prepared) -> list[dict[str, Any]]:
    """The run's three inputs: each split with its own digest and profile (images, images per class),
    and the shape its images have, so two runs on different data never look alike."""
    return split_inputs(prepared.config.dataset, prepared.data)


def split_inputs(name: str, data: DataSplits) -> list[dict[str, Any]]:
    """`run_datasets` for any split data set (the study's parent run logs its trials' data this way)."""
    splits = (("train", "training", data.train), ("val", "validation", data.val), ("test", "testing", data.test))
    return [{"name": f"{name}-{split}", "digest": part.digest, "source": data.source, "context": context,
             "profile": split_profile(part, data.classes), "image_shape": tuple(data.image_shape)}
            for split, context, part in splits if len(part)]


def log_report(prepared: Prepared, result: TrainResult, logger: RunLogger) -> None:
    """Plots, confusion matrix CSV, classification report and the resolved config as artifacts."""
    data = prepared.data
    cm = metrics.confusion_matrix(result.test.labels, result.test.predictions, data.num_classes)
    logger.log_figure(plots.learning_curves_figure(result.history, result.best_epoch,
                                                   prepared.config.label_smoothing),
                      "plots/learning_curves.png")
    logger.log_figure(plots.confusion_matrix_figure(cm, data.classes), "plots/confusion_matrix.png")
    logger.log_figure(plots.per_class_accuracy_figure(cm, data.classes), "plots/per_class_accuracy.png")
    logger.log_figure(plots.misclassified_figure(data.test.images, result.test.logits, result.test.labels,
                                                 data.classes), "plots/misclassified.png")
    header = "true\\predicted," + ",".join(data.classes)
    rows = [f"{name}," + ",".join(str(int(v)) for v in row) for name, row in zip(data.classes, cm)]
    logger.log_text("\n".join([header, *rows]) + "\n", "reports/confusion_matrix.csv")
    report_dict, report_text = metrics.report(result.test.labels, result.test.predictions, data.classes)
    logger.log_text(json.dumps(report_dict, indent=2), "reports/classification_report.json")
    logger.log_text(report_text, "reports/classification_report.txt")
    logger.log_text(config_yaml(prepared.config), "config.yaml")


def model_metadata(prepared: Prepared) -> dict[str, Any]:
    """What the logged model says about itself (its metadata): classes, input and preprocessing."""
    data, config = prepared.data, prepared.config
    channels, height, width = data.image_shape
    layout = f"(N, {height}, {width}, {channels})" if channels > 1 else f"(N, {height}, {width})"
    return {"classes": list(data.classes),
            "input": f"uint8 images {layout}, as np.asarray(PIL.Image.open(path)) reads them",
            "image_size": [height, width], "channels": channels, "mean": [round(v, 6) for v in data.mean],
            "std": [round(v, 6) for v in data.std], "arch": config.arch, "dataset": config.dataset, "tta": config.tta,
            "output": "pytorch flavour: logits; pyfunc: label, probability and p_<class> per class"}


def log_trained_model(prepared: Prepared, result: TrainResult, logger: RunLogger) -> None:
    """The best weights as users call them: images as read from files in, on the CPU, in float32."""
    data = prepared.data
    model = copy.deepcopy(result.model or prepared.model)
    model = model.to("cpu", memory_format=torch.contiguous_format).float().eval()
    exported = ImageClassifier(with_tta(model, prepared.config.tta), data.mean, data.std).eval()
    example = data.test.images[:4].permute(0, 2, 3, 1)  # (4, H, W, C) uint8: a batch > 1 keeps N dynamic
    example = (example[..., 0] if example.shape[-1] == 1 else example).contiguous().numpy()
    logger.log_model(exported, example, prepared.config.register_model, model_metadata(prepared))
