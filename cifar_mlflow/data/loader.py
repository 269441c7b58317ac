"""A loader that keeps the decoded uint8 data set on the training device and yields batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cifar_mlflow.data.augment import BatchTransform
from cifar_mlflow.data.splits import Split

# Keep the data on a CUDA device when it takes at most this share of the free memory.
_DEVICE_MEMORY_SHARE = 0.25


def _fits_on(device: torch.device, nbytes: int) -> bool:
    if device.type != "cuda":
        return True  # CPU: it is in memory already; MPS shares it; a data set of CIFAR's size fits an XPU
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= _DEVICE_MEMORY_SHARE * free


class DeviceLoader:
    """Yields `(images, labels)` like a DataLoader: images normalised float `(B, C, H, W)` on `device`.

    Args:
        split: the uint8 images and labels.
        batch_size: images per batch.
        transform: augmentation and normalisation of each batch.
        device: where batches are produced (the data is copied there once when it fits).
        shuffle: reshuffle every epoch (training).
        seed: seeds the generator of shuffling and augmentation (and the first epoch's flips when
            the transform alternates them).
        channels_last: yield channels-last tensors (faster convolutions on CUDA).
        rank, world_size: under torchrun, this process takes every `world_size`-th item of each
            epoch's order, starting at `rank` (training: the same number on every rank).
    """

    def __init__(self, split: Split, batch_size: int, transform: BatchTransform, device: torch.device, *,
                 shuffle: bool, seed: int = 0, channels_last: bool = False, rank: int = 0,
                 world_size: int = 1) -> None:
        nbytes = split.images.numel() * split.images.element_size()
        self.on_device = _fits_on(device, nbytes)
        storage = device if self.on_device else torch.device("cpu")
        self.images = split.images.to(storage)
        if not self.on_device:
            self.images = self.images.pin_memory()
        self.labels = split.labels.to(device)
        self.batch_size = batch_size
        self.transform = transform
        self.device = device
        self.shuffle = shuffle
        self.channels_last = channels_last
        self.generator = torch.Generator(device=device).manual_seed(seed)
        # Alternating flips: each image's flip in the first epoch, drawn once from the seed; an odd
        # epoch flips the others. `epoch` counts the passes begun (set it when resuming).
        self.epoch = 0
        self.first_flips = (torch.rand(len(self.labels), generator=self.generator, device=device) < 0.5
                            if shuffle and transform.alternating_flips else None)
        self.rank, self.world_size = rank, world_size
        # Training drops the last partial batch (stable batch-norm statistics, static shapes),
        # unless the split is smaller than one batch.
        self.drop_last = shuffle and self._local_count() >= batch_size

    def _local_count(self) -> int:
        n = len(self.labels)
        if self.shuffle:  # every rank the same number of items, so every rank takes the same steps
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n = self._local_count()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.shuffle:  # the same seed on every rank: the same order, split between them
            order = torch.randperm(n, generator=self.generator, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        order = order[self.rank::self.world_size][:self._local_count()]
        flips = None if self.first_flips is None else self.first_flips ^ bool(self.epoch % 2)
        self.epoch += 1
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            # index_select: about 10x faster than indexing with a tensor for whole rows
            images = self.images.index_select(0, idx if self.on_device else idx.cpu()).to(self.device,
                                                                                         non_blocking=True)
            x = self.transform(images, self.generator, None if flips is None else flips.index_select(0, idx))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels.index_select(0, idx)
