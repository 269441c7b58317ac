"""Model registry: `list_models()`, `get_model(name, num_classes=, in_channels=, **model_args)`."""

from cifar_mlflow.models import airbench, cnn, mlp, mobilenet, resnet  # noqa: F401  (registers the built-ins)
from cifar_mlflow.models.registry import get_model, list_models, model_description, recommended_settings, register_model

__all__ = ["get_model", "list_models", "model_description", "recommended_settings", "register_model"]
