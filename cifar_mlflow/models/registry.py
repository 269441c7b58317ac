"""Models keyed by name: built-ins, `tv:NAME` torchvision classifiers, `timm:NAME` timm models and
`module:function` builders."""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cifar_mlflow.errors import ConfigError, require_extra

ModelBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}
_RECOMMENDED: dict[str, dict[str, Any]] = {}


def register_model(name: str, *, recommended: dict[str, Any] | None = None) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator adding a builder `fn(*, num_classes, in_channels, **kwargs)` under `name`.

    Args:
        recommended: the training settings this model is known to do well with on 32x32 data
            (`TrainConfig` field names: optimizer, lr, epochs, ...), used for options the user leaves
            unset (a name that is no option is refused when a run resolves its config). Without them,
            the generic settings apply.
    """
    def add(fn: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        if recommended is not None:
            _RECOMMENDED[name] = dict(recommended)
        return fn

    return add


def recommended_settings(name: str) -> dict[str, Any] | None:
    """The settings registered with built-in model `name`, or None (tv: models, user builders)."""
    settings = _RECOMMENDED.get(name)
    return dict(settings) if settings is not None else None


def list_models(pattern: str = "*") -> list[str]:
    """Registered built-in names matching a shell-style pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_description(name: str) -> str:
    """The first line of a built-in builder's docstring."""
    doc = inspect.getdoc(_REGISTRY[name]) or ""
    return doc.splitlines()[0] if doc else ""


class _RepeatChannels(nn.Module):
    """Feeds 1-channel images to a model that expects 3 (torchvision classifiers)."""

    def __init__(self, model: nn.Module, channels: int = 3) -> None:
        super().__init__()
        self.model = model
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, 3, H, W)
        return self.model(x.expand(-1, self.channels, -1, -1))


def _torchvision_model(name: str, num_classes: int, in_channels: int, **kwargs) -> nn.Module:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ConfigError(f"unknown torchvision model tv:{name}; torchvision classifiers include "
                          f"{', '.join(available[:12])}, ... (torchvision.models.list_models())")
    if in_channels not in (1, 3):
        raise ConfigError(f"tv:{name} takes 1- or 3-channel images, got {in_channels} channels")
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"tv:{name} does not accept model_args {kwargs}: {exc}") from None
    return _RepeatChannels(model) if in_channels == 1 else model


def _timm_model(name: str, num_classes: int, in_channels: int, **kwargs) -> nn.Module:
    require_extra("timm", "timm", f"--arch timm:{name}")
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name[:4]}*")[:8] if name else []
        raise ConfigError(f"unknown timm model timm:{name}" + (f"; similar: {', '.join(close)}" if close else "")
                          + " (timm.list_models())")
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"timm:{name} does not accept model_args {kwargs}: {exc}") from None


def _user_model(spec: str, num_classes: int, in_channels: int, **kwargs) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    # Like `python -m`, a builder in the working directory is found without installing it.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for arch {spec!r}: {exc}") from None
    builder = getattr(module, attr, None)
    if not callable(builder):
        raise ConfigError(f"{module_name} has no callable {attr!r} (arch {spec!r})")
    try:
        model = builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"{spec} must accept num_classes=, in_channels= and the model_args: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def check_model_name(name: str) -> None:
    """Raise `ConfigError` for a plain name that is not registered (cheap: builds nothing)."""
    if ":" not in name and name not in _REGISTRY:
        raise ConfigError(f"unknown architecture {name!r}; valid names: {', '.join(list_models())}, "
                          "tv:NAME (torchvision), timm:NAME (timm) or package.module:function")


def get_model(name: str, *, num_classes: int = 10, in_channels: int = 3, **model_args) -> nn.Module:
    """Build a model by name.

    Args:
        name: a registered name (`list_models()`), `tv:NAME` for a torchvision classifier
            (random weights, classifier sized to `num_classes`), or `package.module:function`.
        num_classes: size of the output layer.
        in_channels: image channels (1 or 3).
        **model_args: passed to the builder.
    """
    if name.startswith("tv:"):
        return _torchvision_model(name[3:], num_classes, in_channels, **model_args)
    if name.startswith("timm:"):
        return _timm_model(name[5:], num_classes, in_channels, **model_args)
    if ":" in name:
        return _user_model(name, num_classes, in_channels, **model_args)
    check_model_name(name)
    try:
        return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, **model_args)
    except TypeError as exc:
        raise ConfigError(f"bad model_args {model_args} for {name}: {exc}") from None
