"""Images per second of a pipeline, with or without a model training on its batches.

Both pipelines the benchmark compares go through the same functions: the same model, optimizer,
batch size, device, precision and memory format, so the only difference is the data path.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import torch
from torch import nn

from cifar_mlflow.core.passes import autocast_for
from cifar_mlflow.hardware import synchronize


def forever(make_epoch) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches from `make_epoch()` (a loader), epoch after epoch."""
    while True:
        yield from make_epoch()


def _to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


def data_images_per_second(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], device: torch.device, *,
                           steps: int, warmup: int) -> float:
    """Augmented images per second a pipeline delivers on `device`, no model attached."""
    for images, labels in itertools.islice(batches, warmup):
        _to_device(images, labels, device, False)
    synchronize(device)
    seen, start = 0, time.perf_counter()
    for images, labels in itertools.islice(batches, steps):
        images, _ = _to_device(images, labels, device, False)
        seen += len(images)
    synchronize(device)
    return seen / (time.perf_counter() - start)


def training_images_per_second(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
                               device: torch.device, *, precision: str, channels_last: bool, steps: int,
                               warmup: int, lr: float = 0.01) -> float:
    """Images per second of SGD training steps of `model` on `batches` (after `warmup` untimed steps),
    in `precision` on channels-last batches or not, as the training command runs it."""
    model = model.to(device).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        images, labels = _to_device(images, labels, device, channels_last)
        with autocast_for(device, precision):
            loss = loss_fn(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for images, labels in itertools.islice(batches, warmup):
        step(images, labels)
    synchronize(device)
    seen, start = 0, time.perf_counter()
    for images, labels in itertools.islice(batches, steps):
        step(images, labels)
        seen += len(labels)
    synchronize(device)
    return seen / (time.perf_counter() - start)
