"""The model as it is logged: normalisation built in, so it takes images scaled to [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


class TestTimeAugmented(nn.Module):
    """Logits averaged over augmented views of each image (one forward pass over all views).

    Args:
        model: the classifier.
        mode: "flip" (the image and its mirror) or "flip_translate" (airbench's: half the weight on
            the image and its mirror, a quarter each on 1-pixel shifts up-left and down-right, each
            also averaged with its mirror).
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, model: nn.Module, mode: str) -> None:
        super().__init__()
        if mode not in ("flip", "flip_translate"):
            raise ValueError(f"unknown test-time augmentation {mode!r}")
        self.model = model
        self.mode = mode

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        views = [images]
        if self.mode == "flip_translate":
            h, w = images.shape[-2:]
            padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
            views += [padded[..., :h, :w], padded[..., 2:, 2:]]
        views += [v.flip(-1) for v in views]
        logits = self.model(torch.cat(views)).view(len(views), images.shape[0], -1)  # (V, N, classes)
        if self.mode == "flip":
            return logits.mean(0)
        weights = torch.tensor([0.25, 0.125, 0.125] * 2, dtype=logits.dtype, device=logits.device)
        return (logits * weights[:, None, None]).sum(0)


def with_tta(model: nn.Module, mode: str) -> nn.Module:
    """`model`, wrapped in `TestTimeAugmented` unless `mode` is "none"."""
    return model if mode == "none" else TestTimeAugmented(model, mode)
