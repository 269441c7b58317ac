"""A multi-layer perceptron on flattened pixels."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from cifar_mlflow.models.registry import register_model

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


@register_model("mlp", recommended=dict(
    optimizer="adamw", lr=1e-3, weight_decay=1e-4, scheduler="onecycle", epochs=30, batch_size=128,
    augment="none", label_smoothing=0.0))
def mlp(*, num_classes: int = 10, in_channels: int = 3, hidden_sizes: Sequence[int] = (1024, 512, 256),
        activation: str = "relu", batch_norm: bool = True, dropout: float = 0.2) -> nn.Module:
    """Multi-layer perceptron on flattened pixels (hidden sizes, relu/gelu, batch norm, dropout)."""
    if activation not in _ACTIVATIONS:
        raise TypeError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden_sizes:
        # Lazy: the input width (C*H*W) is known at the first forward pass, so any image size works.
        layers.append(nn.LazyLinear(width))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(_ACTIVATIONS[activation]())
        if dropout:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.LazyLinear(num_classes))
    return nn.Sequential(*layers)
