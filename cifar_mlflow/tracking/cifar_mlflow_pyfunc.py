"""The pyfunc face of a logged model: images in, class names and probabilities out.

MLflow copies this file into the model (`code/cifar_mlflow_pyfunc.py`) and imports it by that name
when the model is loaded (`mlflow.pyfunc.load_model`, `mlflow models serve`), so it needs torch,
numpy, pandas and MLflow only, not the package that trained the model. The network itself is the
model's `pytorch` flavour: uint8 images in, logits out, normalisation built in.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

BATCH = 256  # images per forward pass: a large request does not hold every activation at once


def probability_column(class_name: str) -> str:
    return f"p_{class_name}"


class ImageClassifier:
    """`predict(images)`: `(N, H, W, C)` uint8 images (`(N, H, W)` for a one-channel model), as
    `np.asarray(PIL.Image.open(path))` reads them -> a DataFrame with `label` (the class name),
    `probability` (of that class) and one `p_<class>` column per class."""

    def __init__(self, network: torch.nn.Module, classes: list[str]) -> None:
        self.network = network
        self.classes = list(classes)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        images = np.asarray(model_input)
        if images.dtype != np.uint8:
            raise MlflowException(f"images must be uint8 pixel values 0-255 (as PIL reads them), not {images.dtype}; "
                                  "convert with np.asarray(image, dtype=np.uint8)", INVALID_PARAMETER_VALUE)
        flat = images.reshape(len(images), -1)
        blank = np.flatnonzero(flat.max(axis=1) <= 1) if len(images) else []
        if len(blank):
            raise MlflowException(f"image(s) {', '.join(map(str, blank[:10]))} have no pixel above 1: they look "
                                  "scaled to [0, 1]; send pixel values 0-255 as PIL reads them",
                                  INVALID_PARAMETER_VALUE)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(images), BATCH):
                batch = torch.from_numpy(np.array(images[start:start + BATCH]))  # a writable copy
                chunks.append(torch.softmax(self.network(batch).float(), dim=1).numpy())
        probabilities = np.concatenate(chunks) if chunks else np.zeros((0, len(self.classes)), np.float32)
        best = probabilities.argmax(axis=1)
        columns = {"label": np.asarray(self.classes, dtype=object)[best],
                   "probability": probabilities[np.arange(len(best)), best]}
        columns.update({probability_column(name): probabilities[:, i] for i, name in enumerate(self.classes)})
        return pd.DataFrame(columns)


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> ImageClassifier:
    """MLflow's entry point: `data_path` is the model's `data/` folder."""
    import mlflow.pytorch
    from mlflow.models import Model

    root = os.path.dirname(os.path.abspath(data_path))
    metadata = Model.load(os.path.join(root, "MLmodel")).metadata or {}
    network = mlflow.pytorch.load_model(root, map_location="cpu")
    return ImageClassifier(network, metadata["classes"])
