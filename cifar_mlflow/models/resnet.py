"""Residual nets for CIFAR: ResNet-18 (CIFAR stem) and ResNet-9 (the DAWNBench fast recipe)."""

from __future__ import annotations

import torch
from torch import nn

from cifar_mlflow.models.registry import register_model


@register_model("resnet18", recommended=dict(
    optimizer="sgd", lr=0.1, weight_decay=5e-4, scheduler="onecycle", epochs=40, batch_size=128,
    augment="standard", label_smoothing=0.0))
def resnet18(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-18 with the CIFAR stem (3x3 stride-1 first conv, no max-pool): 11M parameters."""
    from torchvision.models import resnet18 as torchvision_resnet18  # imported when built, not when listed

    model = torchvision_resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _conv_block(cin: int, cout: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                               nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_block(channels, channels), _conv_block(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _Scale(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


@register_model("resnet9", recommended=dict(
    optimizer="sgd", lr=0.2, weight_decay=5e-4, scheduler="onecycle", epochs=24, batch_size=512,
    augment="standard", label_smoothing=0.2))
def resnet9(*, num_classes: int = 10, in_channels: int = 3, width: int = 64, scale: float = 0.125) -> nn.Module:
    """ResNet-9 (Page's DAWNBench net): fast, strong runs in few epochs; width sets the first layer's channels."""
    w = width
    return nn.Sequential(
        _conv_block(in_channels, w),
        _conv_block(w, 2 * w, pool=True), _Residual(2 * w),
        _conv_block(2 * w, 4 * w, pool=True),
        _conv_block(4 * w, 8 * w, pool=True), _Residual(8 * w),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8 * w, num_classes, bias=False), _Scale(scale),
    )
