"""The model as it is logged (preprocessing built in, so it takes images as read from files) and
test-time augmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ImageClassifier(nn.Module):
    """Images as read from files -> logits.

    Takes `(N, H, W, C)` uint8 tensors (`(N, H, W)` for a one-channel model), the layout
    `np.asarray(PIL.Image.open(path))` gives, and scales and normalises them as in training.
    """

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim == 3:  # one channel, as PIL reads a grayscale image
            images = images.unsqueeze(-1)
        scaled = images.permute(0, 3, 1, 2).float() / 255.0
        return self.model((scaled - self.mean) / self.std)


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
