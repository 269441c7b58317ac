"""The conventional pipeline the benchmark measures against: a torchvision `DataLoader` over PIL
images with per-image transforms in worker processes (random crop, flip, `ToTensor`, `Normalize`),
as torchvision's `CIFAR10` data set and most notebooks do it."""

from __future__ import annotations

import os

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cifar_mlflow.data.splits import Split


def default_num_workers() -> int:
    """One worker per CPU core, at most 8 (the usual recommendation; more only adds contention)."""
    return max(1, min(8, os.cpu_count() or 1))


class PilImages(Dataset):
    """uint8 images held in memory, handed out one PIL image at a time like `torchvision.datasets.CIFAR10`."""

    def __init__(self, split: Split, transform: transforms.Compose) -> None:
        self.images = split.images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C), as CIFAR-10's arrays
        self.labels = split.labels.numpy()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        array = self.images[index]
        image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
        return self.transform(image), int(self.labels[index])


def conventional_loader(split: Split, batch_size: int, mean: tuple[float, ...], std: tuple[float, ...], *,
                        num_workers: int, pin_memory: bool, hflip_ok: bool = True, seed: int = 0) -> DataLoader:
    """Shuffled training batches: reflect-pad-4 random crop, random flip, ToTensor, Normalize."""
    size = split.images.shape[-1]
    steps = [transforms.RandomCrop(size, padding=4, padding_mode="reflect")]
    if hflip_ok:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return DataLoader(PilImages(split, transforms.Compose(steps)), batch_size=batch_size, shuffle=True,
                      num_workers=num_workers, pin_memory=pin_memory, drop_last=True,
                      persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed))
