"""The model as it is logged: normalisation built in, so it takes images scaled to [0, 1]."""

from __future__ import annotations

import torch
from torch import nn


class NormalizedClassifier(nn.Module):
    """`(N, C, H, W)` float images in [0, 1] -> `(N, num_classes)` logits."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)
