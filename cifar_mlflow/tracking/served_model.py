"""The logged model as users call it: one MLflow model with two flavours.

- `pytorch`: the network with its preprocessing built in (`models.inference.ImageClassifier`):
  uint8 images, `(N, H, W, C)` as PIL reads them, in; logits out.
- `python_function`: `cifar_mlflow_pyfunc.ImageClassifier` over that network: the same images in, a
  class name, its probability and every class's probability out; what `mlflow.pyfunc.load_model`
  and `mlflow models serve` answer with.

The signature says this (uint8 tensor in, label and probability columns out) and the model's
metadata carries the class names, input size and normalisation. Passed to `mlflow.models.Model.log`
as its flavour module (MLflow's way of writing a custom flavour): `save_model` writes the PyTorch
flavour, then points the pyfunc flavour at the loader it copied into the model's `code/`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow.pytorch
import numpy as np
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema, TensorSpec

from cifar_mlflow.tracking import cifar_mlflow_pyfunc
from cifar_mlflow.tracking.store import tolerating_races

LOADER = Path(cifar_mlflow_pyfunc.__file__)


def signature(input_example: np.ndarray, classes: list[str]) -> ModelSignature:
    """uint8 images of the example's size, any number of them, in; label and probabilities out."""
    inputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, *input_example.shape[1:]))])
    outputs = Schema([ColSpec("string", "label"), ColSpec("float", "probability"),
                      *(ColSpec("float", cifar_mlflow_pyfunc.probability_column(c)) for c in classes)])
    return ModelSignature(inputs=inputs, outputs=outputs)


def save_model(path: str, mlflow_model: Model | None = None, *, network: Any, input_example: np.ndarray,
               signature: ModelSignature, pip_requirements: list[str], serialization_format: str | None = None) -> None:
    """Write the model to the local folder `path` (`Model.log` uploads it)."""
    mlflow_model = mlflow_model or Model()
    extra = {"serialization_format": serialization_format} if serialization_format else {}
    mlflow.pytorch.save_model(network, path, mlflow_model=mlflow_model, signature=signature,
                              input_example=input_example, pip_requirements=pip_requirements,
                              code_paths=[str(LOADER)], **extra)
    mlflow_model.flavors["python_function"]["loader_module"] = LOADER.stem
    mlflow_model.save(os.path.join(path, "MLmodel"))


def set_model_alias(uri: str, name: str, version: int, alias: str) -> None:
    """Point `alias` (e.g. champion) of registered model `name` at `version`."""
    client = MlflowClient(uri)
    tolerating_races(lambda: client.set_registered_model_alias(name, alias, str(version)))
